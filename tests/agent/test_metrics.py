"""`pool agent --metrics-port N --log-format json` on a local stack whose only agent it is: tasks by
final state, failures by kill reason, durations and the last report, in Prometheus format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.fixtures.azurite import require_azurite
from worker.local.client import wait_for
from worker.local.processes import free_port, wait_for_port
from worker.site.producer import Submission
from worker.util.process_group import stop_process_group

pytestmark = pytest.mark.slow


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_agent_metrics_port_and_json_logs(tmp_path):
    require_azurite()
    from worker.local.stack import LocalStack

    with LocalStack(tmp_path / "pool", workers=0, on_output=lambda _l: None) as stack:
        agent = stack.agent_config("default", 0, stack.profile.pools["default"])
        port = free_port()
        log = open(agent.log_path, "wb")  # noqa: SIM115 - closed below
        process = subprocess.Popen([sys.executable, "-m", "worker", "agent", "--config", str(agent.config_path),
                                    "--metrics-port", str(port), "--log-format", "json"],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            wait_for_port("127.0.0.1", port, 30, process)
            submit = stack.site.producer.submit
            ok = submit(Submission(pool="default", command=["true"], max_attempts=1))
            bad = submit(Submission(pool="default", command=["sh", "-c", "exit 3"], max_attempts=1))
            slow = submit(Submission(pool="default", command=["sleep", "30"], time_limit_s=1, max_attempts=1))
            assert [wait_for(stack.site, t.id, timeout=60).state for t in (ok, bad, slow)] == \
                ["finished", "failed", "timed_out"]
            time.sleep(0.5)
            metrics = scrape(port)
            assert metrics['pool_agent_tasks_total{state="finished"}'] == 1
            assert metrics['pool_agent_tasks_total{state="failed"}'] == 1
            assert metrics['pool_agent_tasks_total{state="timed_out"}'] == 1
            assert metrics['pool_agent_task_failures_total{kill_reason="exit_code"}'] == 1
            assert metrics['pool_agent_task_failures_total{kill_reason="time"}'] == 1
            assert metrics["pool_agent_task_duration_seconds_count"] == 3
            assert metrics["pool_agent_task_duration_seconds_sum"] >= 1.0  # the timed-out one ran 1 s
            assert time.time() - metrics["pool_agent_last_report_timestamp_seconds"] < 10
            assert metrics['pool_agent_info{pool="default",worker_id="default-w1"}'] == 1
        finally:
            stop_process_group(process, timeout=20)
            log.close()
    lines = [line for line in agent.log_path.read_text().splitlines() if line.startswith("{")]
    entries = [json.loads(line) for line in lines]
    assert any("metrics: http://127.0.0.1" in e["message"] for e in entries)
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)

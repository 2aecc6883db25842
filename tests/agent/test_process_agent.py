"""``pool agent --config FILE`` as a real process: SIGTERM drain, config errors, reconnects."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.agent.harness import Pool, least_rights_queues
from worker.agent import run_agent
from worker.emulator.launcher import EmulatorProcess, generate_key
from worker.protocol import TaskState

S = TaskState


@pytest.mark.slow
def test_sigterm_finishes_current_task_takes_no_new_one_exits_0(emulator, queue_factory, storage, competition,
                                                                 tmp_path):
    tasks, responses = least_rights_queues(queue_factory)
    pool = Pool(emulator, storage, competition, tasks, responses, tmp_path)
    try:
        config = pool.write_config(tmp_path / "agent.yaml")
        agent = pool.spawn_agent(config, tmp_path / "agent.log")
        try:
            first = pool.python("import time; time.sleep(2); print('finished properly')")
            second = pool.python("print('must not run here')")
            pool.send(first)
            pool.collector.wait_for(first.task_id, lambda s: s.state is S.RUNNING, timeout=30)
            pool.send(second)
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(30) == 0, (tmp_path / "agent.log").read_text()
        finally:
            if agent.poll() is None:
                agent.kill()
        final = pool.collector.wait_terminal(first.task_id, timeout=5)
        assert final.state is S.FINISHED and pool.log(first) == b"finished properly\n"
        assert pool.collector.of(second.task_id) == []
        assert [m.message_id for m in pool.task_messages(wait=2)] == [second.message_id]
    finally:
        pool.close()


def test_bad_config_is_a_clear_error(tmp_path):
    bad = tmp_path / "agent.yaml"
    bad.write_text("servicebus:\n  task_queue: q\n  response_queue: r\nheartbeat_interval_s: -1\n")
    proc = subprocess.run([sys.executable, "-m", "worker", "agent", "--config", str(bad)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "heartbeat_interval_s" in proc.stderr and "task_queue_connection_string" in proc.stderr


def test_check_validates_config_and_driver(tmp_path):
    good = tmp_path / "agent.yaml"
    good.write_text(
        "worker_id: w1\nwork_dir: " + str(tmp_path / "work") + "\n"
        "servicebus:\n  task_queue: q\n  response_queue: r\n"
        "  task_queue_connection_string: Endpoint=sb://127.0.0.1:1;SharedAccessKeyName=a;SharedAccessKey=b;"
        "UseDevelopmentEmulator=true\n"
        "  response_queue_connection_string: Endpoint=sb://127.0.0.1:1;SharedAccessKeyName=a;SharedAccessKey=b;"
        "UseDevelopmentEmulator=true\n"
    )
    proc = subprocess.run([sys.executable, "-m", "worker", "agent", "--config", str(good), "--check"],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "driver process available" in proc.stdout and "w1" in proc.stdout


@pytest.mark.slow
def test_reconnects_after_the_broker_restarts(emulator_factory, storage, competition, tmp_path):
    def policy(rights):
        return [{"name": "worker", "key": generate_key(), "rights": rights}]

    emu = emulator_factory(queues=[{"name": "tasks", "policies": policy(["Listen"])},
                                   {"name": "responses", "policies": policy(["Send"])}])
    pool = Pool(emu, storage, competition, "tasks", "responses", tmp_path)
    stop = threading.Event()
    agent = threading.Thread(target=run_agent, args=(pool.config(), stop), daemon=True)
    agent.start()
    try:
        warmup = pool.python("print(1)")
        pool.send(warmup)
        assert pool.collector.wait_terminal(warmup.task_id).state is S.FINISHED
        pool.close()

        ports = (emu.port, emu.http_port)
        emu.kill()  # the broker dies under the idle agent
        time.sleep(1)
        restarted = EmulatorProcess(emu.config_path, emu.data_dir, port=ports[0], http_port=ports[1]).start()
        try:
            pool = Pool(restarted, storage, competition, "tasks", "responses", tmp_path)
            task = pool.python("print('after restart')")
            pool.send(task)
            assert pool.collector.wait_terminal(task.task_id, timeout=60).state is S.FINISHED
        finally:
            pool.close()
            stop.set()
            agent.join(30)
            restarted.stop()
    finally:
        stop.set()


def test_python_m_worker_agent_entry_exists():
    out = subprocess.run([sys.executable, "-m", "worker", "agent", "--help"], check=False, capture_output=True,
                         text=True,
                         timeout=60, env={**os.environ, "COLUMNS": "120"})
    assert out.returncode == 0 and "--config" in out.stdout

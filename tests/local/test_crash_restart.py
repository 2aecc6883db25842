"""A crashed `pool local up` (SIGKILL: no teardown) leaves its emulator, Azurite and agents running in
their own sessions. The next `pool local up` on the same data dir stops them before starting (no
second broker on the store, no agents with the same ids), and tasks submitted afterwards finish;
`pool local down` cleans up after a crash too. Real processes throughout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import yaml

from tests.fixtures.azurite import require_azurite
from worker.local.client import get_task, open_site, wait_for
from worker.local.survivors import find_survivors
from worker.site.producer import Submission

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def pool(*args: str, data_dir: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker", *args, "--data-dir", str(data_dir)], check=False,
                          cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})  # `pool status` lines unwrapped


def local_up(data_dir: Path, workers: int = 2) -> tuple[subprocess.Popen, list[str]]:
    up = subprocess.Popen([sys.executable, "-m", "worker", "local", "up", "--workers", str(workers),
                           "--driver", "process", "--data-dir", str(data_dir)],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
    lines: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = up.stdout.readline()  # type: ignore[union-attr]
        if not line and up.poll() is not None:
            break
        lines.append(line)
        if line.startswith("ready"):
            return up, lines
    up.kill()
    raise AssertionError("local up did not get ready:\n" + "".join(lines))


def components(data_dir: Path) -> Counter:
    """Every process of a stack on this data dir, by role (found by command line, not the profile)."""
    return Counter(s.role for s in find_survivors(data_dir, None))


def sigkill(up: subprocess.Popen) -> None:
    os.kill(up.pid, signal.SIGKILL)  # only `pool local up` itself, as a crash would
    up.wait(10)


def stop(up: subprocess.Popen) -> str:
    if up.poll() is None:
        up.send_signal(signal.SIGTERM)
    rest, _ = up.communicate(timeout=90)
    return rest


def test_local_up_after_a_sigkill_stops_the_survivors_and_runs_new_tasks(tmp_path):
    require_azurite()
    data = tmp_path / "pool"
    first, _ = local_up(data)
    try:
        with open_site(data) as site:
            slow = site.producer.submit(Submission(pool="default", command=["sh", "-c", "sleep 2; echo slow"],
                                                   time_limit_s=60))
            deadline = time.monotonic() + 30
            while get_task(site, slow.id).state not in ("running", "finished") and time.monotonic() < deadline:
                time.sleep(0.1)
        sigkill(first)
        assert components(data) == {"emulator": 1, "azurite": 1, "agent": 2}  # the crash left them running

        second, lines = local_up(data)
        try:
            said = "".join(lines)
            assert "left by an earlier stack" in said and "stopping" in said, said
            found = find_survivors(data, None)
            assert Counter(s.role for s in found) == {"emulator": 1, "azurite": 1, "agent": 2}, found
            assert all(s.process.ppid() == second.pid for s in found)  # all of them the new stack's own
            assert yaml.safe_load((data / "profile.yaml").read_text())["pid"] == second.pid

            with open_site(data) as site:
                tasks = [site.producer.submit(Submission(pool="default", command=["echo", str(i)], time_limit_s=60))
                         for i in range(20)]
                ends = [wait_for(site, t.id, timeout=90) for t in tasks]
                assert [t.state for t in ends] == ["finished"] * 20
                assert wait_for(site, slow.id, timeout=90).state == "finished"  # submitted before the crash

            short_of_agents_is_shown_and_cleared(data)
        finally:
            rest = stop(second)
        assert second.returncode == 0, rest
    finally:
        if first.poll() is None:
            first.kill()
    assert components(data) == Counter(), "a clean stop leaves nothing running"


def short_of_agents_is_shown_and_cleared(data: Path) -> None:
    """An agent that dies and cannot come back (a broken config) makes `pool status` say the pool is
    short; once it can start again, the stack's back-off brings it back."""
    assert "short of agents" not in pool("status", data_dir=data).stdout  # positive control
    config = data / "agents" / "default-w2" / "config.yaml"
    good = config.read_text()
    config.write_text("not: [valid")
    victim = next(s for s in find_survivors(data, None) if s.name == "agent default-w2")
    os.killpg(victim.process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = pool("status", data_dir=data).stdout
        if "short of agents" in status and "default-w2 restarting" in status:  # (not mid-restart)
            break
        time.sleep(0.5)
    assert "short of agents" in status and "default-w2 restarting" in status, status
    config.write_text(good)
    deadline = time.monotonic() + 60
    while "short of agents" in (status := pool("status", data_dir=data).stdout) and time.monotonic() < deadline:
        time.sleep(1)
    assert "short of agents" not in status, status


def test_local_down_after_a_sigkill_stops_everything(tmp_path):
    require_azurite()
    data = tmp_path / "pool"
    up, _ = local_up(data, workers=1)
    try:
        agent_pid = next(s.process.pid for s in find_survivors(data, None) if s.role == "agent")
        sigkill(up)
        assert components(data) == {"emulator": 1, "azurite": 1, "agent": 1}
        down = pool("local", "down", data_dir=data)
        assert down.returncode == 0, down.stdout + down.stderr
        assert "is gone" in down.stdout and "stopped" in down.stdout
        assert components(data) == Counter()
        assert not psutil.pid_exists(agent_pid) or psutil.Process(agent_pid).status() == psutil.STATUS_ZOMBIE
        assert yaml.safe_load((data / "profile.yaml").read_text())["state"] == "stopped"
        again = pool("local", "down", data_dir=data)
        assert again.returncode == 1 and "not running" in again.stderr
    finally:
        if up.poll() is None:
            up.kill()

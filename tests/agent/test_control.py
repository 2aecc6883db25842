"""The agent's local control surface against a real agent, emulator and Azurite: the state file follows
idle -> busy -> idle; `pool agent drain` lets the running task finish and leaves the next one queued,
also across an agent restart, until `pool agent resume`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from worker.agent.state import AgentState, read_state

pytestmark = pytest.mark.slow


def pool_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker", "agent", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def wait_state(control: Path, predicate: Callable[[AgentState], bool], timeout: float = 30) -> AgentState:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = read_state(control)
        if seen is not None and predicate(seen):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"state file never matched within {timeout}s; last: {seen}")


def test_state_follows_idle_busy_idle_and_status_reads_it(pool, tmp_path: Path):
    control = tmp_path / "control"
    pool.start_agent(control_dir=str(control), pool="demo-pool")
    idle = wait_state(control, lambda s: s.state == "idle")
    assert idle.task_id is None and idle.pool == "demo-pool" and idle.driver == "process" and idle.version
    gate = tmp_path / "gate"  # the task runs until the test has looked (no race with a loaded machine)
    task = pool.python(f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.1)\n"
                       "time.sleep(1.5); print('ok')")
    pool.send(task)
    busy = wait_state(control, lambda s: s.state == "busy")
    assert busy.task_id == task.task_id and busy.task_attempt == 1 and busy.task_since
    out = pool_agent("status", "--control-dir", str(control), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["state"] == "busy" and report["task_id"] == task.task_id and report["running"] is True
    human = pool_agent("status", "--control-dir", str(control))
    assert "busy" in human.stdout and task.task_id in human.stdout
    gate.touch()
    assert pool.collector.wait_terminal(task.task_id).state.value == "finished"
    done = wait_state(control, lambda s: s.state == "idle" and s.tasks_done == 1)
    assert done.tasks_failed == 0 and done.task_id is None
    assert done.last_report_at is not None  # heartbeats (0.5 s) during the task, presence reports when idle

    failing = pool.python("raise SystemExit(3)")
    pool.send(failing)
    assert pool.collector.wait_terminal(failing.task_id).state.value == "failed"
    assert wait_state(control, lambda s: s.tasks_failed == 1).tasks_done == 1


def test_drain_finishes_the_task_keeps_the_next_queued_across_a_restart_until_resume(pool, tmp_path: Path):
    control = tmp_path / "control"
    pool.start_agent(control_dir=str(control))
    wait_state(control, lambda s: s.state == "idle")
    gate = tmp_path / "gate"
    first = pool.python(f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.1)\n"
                        "print('first done')")
    pool.send(first)
    wait_state(control, lambda s: s.state == "busy")

    out = pool_agent("drain", "--control-dir", str(control))
    assert out.returncode == 0 and "drain requested" in out.stdout, out.stdout + out.stderr
    wait_state(control, lambda s: s.state == "draining" and s.task_id == first.task_id, timeout=5)
    second = pool.python("print('second done')")
    pool.send(second)
    gate.touch()

    assert pool.collector.wait_terminal(first.task_id, timeout=30).state.value == "finished"
    assert b"first done" in pool.log(first)
    wait_state(control, lambda s: s.state == "drained" and s.tasks_done == 1)
    time.sleep(4)  # four receive waits: a non-draining agent would have taken it long ago
    assert pool.collector.of(second.task_id) == []

    # The flag survives a restart of the agent.
    thread, stop = pool._agents[-1]
    stop.set()
    thread.join(30)
    assert read_state(control).state == "stopped"
    stopped = pool_agent("status", "--control-dir", str(control))
    assert stopped.returncode == 1 and "stopped" in stopped.stdout
    pool.start_agent(control_dir=str(control))
    wait_state(control, lambda s: s.state == "drained" and s.tasks_done == 0)  # a new run counts afresh
    time.sleep(3)
    assert pool.collector.of(second.task_id) == []
    again = pool_agent("drain", "--control-dir", str(control), "--wait", "5")
    assert again.returncode == 0 and "already draining" in again.stdout, again.stdout + again.stderr

    out = pool_agent("resume", "--control-dir", str(control))
    assert out.returncode == 0 and "resumed" in out.stdout
    assert pool.collector.wait_terminal(second.task_id, timeout=30).state.value == "finished"
    assert wait_state(control, lambda s: s.state == "idle" and s.tasks_done == 1).drain_requested is False
    assert "was not draining" in pool_agent("resume", "--control-dir", str(control)).stdout


def test_drain_wait_returns_once_the_running_task_ends(pool, tmp_path: Path):
    control = tmp_path / "control"
    pool.start_agent(control_dir=str(control))
    wait_state(control, lambda s: s.state == "idle")
    task = pool.python("import time; time.sleep(3)")
    pool.send(task)
    wait_state(control, lambda s: s.state == "busy")
    t0 = time.monotonic()
    out = pool_agent("drain", "--control-dir", str(control), "--wait", "60")
    assert out.returncode == 0, out.stdout + out.stderr
    assert time.monotonic() - t0 < 30 and "drained" in out.stdout
    assert pool.collector.wait_terminal(task.task_id).state.value == "finished"


def test_status_without_an_agent_says_so(tmp_path: Path):
    out = pool_agent("status", "--control-dir", str(tmp_path))
    assert out.returncode == 1 and "no state file" in out.stdout
    missing = pool_agent("status", "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr


def test_a_dead_agent_is_told_apart_from_a_stopped_one(tmp_path: Path):
    from dataclasses import asdict

    from worker.agent.state import STATE_FILE

    (tmp_path / STATE_FILE).write_text(json.dumps(asdict(AgentState(state="busy", pid=2**22 + 12345, task_id="t-1"))))
    out = pool_agent("status", "--control-dir", str(tmp_path), "--json")
    report = json.loads(out.stdout)
    assert out.returncode == 1 and report["state"] == "dead" and report["last_state"] == "busy"
    assert "dead (last state busy" in pool_agent("status", "--control-dir", str(tmp_path)).stdout


def test_state_file_is_never_seen_half_written(tmp_path: Path, monkeypatch):
    import threading

    from worker.agent import state as state_module
    from worker.agent.state import StateFile

    monkeypatch.setattr(state_module, "BUSY_SHOWN_AFTER_S", 0.0)  # every task is written busy, then idle
    state = StateFile(tmp_path, worker_id="w", pool=None, driver="process")
    state.start()
    stop = threading.Event()

    def churn() -> None:
        n = 0
        while not stop.is_set():
            state.task_started(f"task-{n}" * 50, 1)  # long ids: bigger writes
            state.refresh()
            state.task_ended(finished=n % 2 == 0)
            n += 1

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        reads = 0
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            assert read_state(tmp_path) is not None  # parses every time
            reads += 1
    finally:
        stop.set()
        writer.join()
    assert reads > 100
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_a_task_shows_once_it_lasts_and_a_short_one_costs_one_write(tmp_path: Path, monkeypatch):
    from worker.agent import state as state_module
    from worker.agent.state import StateFile

    state = StateFile(tmp_path, worker_id="w", pool=None, driver="process")
    state.start()
    writes = []
    write = state._write
    monkeypatch.setattr(state, "_write", lambda: (writes.append(state.current.state), write()))
    state.task_started("short", 1)
    state.refresh()  # the receive loop's look right after a task of a few ms: not yet worth a write
    assert read_state(tmp_path).state == "starting" and writes == []
    state.task_ended(finished=True)
    done = read_state(tmp_path)
    assert writes == ["idle"] and done.state == "idle" and done.tasks_done == 1 and done.task_id is None

    monkeypatch.setattr(state_module, "BUSY_SHOWN_AFTER_S", 0.05)
    state.task_started("long", 2)
    state.refresh()
    assert read_state(tmp_path).state == "idle"
    time.sleep(0.1)
    state.refresh()  # it has lasted: now it shows, once
    state.refresh()
    busy = read_state(tmp_path)
    assert busy.state == "busy" and busy.task_id == "long" and busy.task_attempt == 2
    assert writes == ["idle", "busy"]
    state.task_ended(finished=False)
    assert read_state(tmp_path).tasks_failed == 1 and writes == ["idle", "busy", "idle"]


def test_status_of_a_state_file_cut_short_is_unknown(tmp_path):
    """The state file is not fsynced (rewritten once or twice per task): after a power loss it may be empty;
    `pool agent status` then says so instead of failing."""
    from worker.agent.commands import status_report
    from worker.agent.state import STATE_FILE

    (tmp_path / STATE_FILE).write_text("")
    report = status_report(tmp_path)
    assert report["state"] == "unknown" and report["running"] is False and "unreadable" in report["error"]

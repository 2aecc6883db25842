"""The task guard (worker/execution/guard.py): when its agent dies, it kills what is registered —
a session, processes carrying a token, a cleanup command — and nothing that was released. Real
processes; the agent's death is the end of the guard's pipe (what the kernel does on SIGKILL),
and in the last tests a real SIGKILL of a process using the drivers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from worker.execution import guard as guard_module

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX guard (Windows: Job Objects)")

GUARD = [sys.executable, "-S", guard_module.__file__]


def _gone(proc: subprocess.Popen | psutil.Process, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if isinstance(proc, subprocess.Popen):
            if proc.poll() is not None:
                return True
        elif not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.05)
    return False


def _send(pipe, **message) -> None:  # type: ignore[no-untyped-def]
    import json

    pipe.write(json.dumps(message) + "\n")
    pipe.flush()


def test_end_of_pipe_kills_registered_sessions_tokens_and_runs_cleanups(tmp_path):
    session = subprocess.Popen(["sleep", "300"], start_new_session=True)
    tagged = subprocess.Popen(["sleep", "301"], env={"PATH": os.defpath, "POOL_EXECUTION_TOKEN": "tok123"},
                              start_new_session=True)  # its own session: only the token finds it
    released = subprocess.Popen(["sleep", "302"], start_new_session=True)
    bystander = subprocess.Popen(["sleep", "303"], start_new_session=True)
    marker = tmp_path / "cleaned"
    guard = subprocess.Popen(GUARD, stdin=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _send(guard.stdin, op="watch", key="a", session=session.pid)
        _send(guard.stdin, op="watch", key="b", token="tok123")
        _send(guard.stdin, op="watch", key="c", cleanup=["sh", "-c", f"echo \"$0 $@\" > {marker}", "rm", "-f", "x"])
        _send(guard.stdin, op="watch", key="d", session=released.pid)
        _send(guard.stdin, op="release", key="d")
        guard.stdin.close()  # the agent is gone
        assert guard.wait(20) == 0
        assert _gone(session) and _gone(tagged)
        assert marker.read_text().strip() == "rm -f x"
        assert released.poll() is None and bystander.poll() is None  # released / never registered: untouched
    finally:
        for proc in (session, tagged, released, bystander):
            proc.kill()
            proc.wait()


AGENT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from worker.execution.base import ExecutionSpec, Limits
    from worker.execution.{module} import {driver}
    root = Path(sys.argv[1])
    for d in ("scratch", "output"):
        (root / d).mkdir(exist_ok=True)
    spec = ExecutionSpec(task_id="t1", argv={argv!r}, scratch_dir=root / "scratch", output_dir=root / "output",
                         env={{}})
    execution = {driver}({kwargs}).start(spec)
    print(execution.{pid_attr}, flush=True)
    time.sleep(300)
""")


def _spawn_agent(tmp_path: Path, **fmt: str) -> tuple[subprocess.Popen, int]:
    code = AGENT.format(**fmt)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    agent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    line = agent.stdout.readline()  # type: ignore[union-attr]
    assert line.strip(), "the stand-in agent did not start its task"
    return agent, int(line)


def test_process_driver_task_dies_with_its_sigkilled_agent(tmp_path):
    agent, pid = _spawn_agent(tmp_path, module="process", driver="ProcessDriver", kwargs="",
                              argv=["sh", "-c", "sleep 304 & (setsid sleep 304 &); sleep 304"], pid_attr="pid")
    try:
        program = psutil.Process(pid)
        deadline = time.monotonic() + 10
        while len([p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "304"]]) < 3:
            assert time.monotonic() < deadline, "the program's sleeps did not start"
            time.sleep(0.05)
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait(10)
        assert _gone(program)
        deadline = time.monotonic() + 10
        while [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "304"]]:
            assert time.monotonic() < deadline, "a descendant of the task outlived its agent"
            time.sleep(0.05)
    finally:
        if agent.poll() is None:
            agent.kill()


def test_docker_driver_container_is_removed_when_its_agent_is_sigkilled(tmp_path):
    """Untested against an engine (none here): a stand-in `docker` CLI records what it is asked; the
    guard must ask it to remove the container once the agent is SIGKILLed."""
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n[ \"$1\" = run ] && exec sleep 305\nexit 0\n")
    fake.chmod(0o755)
    os.environ["PATH"] = f"{fake.parent}{os.pathsep}{os.environ['PATH']}"  # inherited by the stand-in agent
    try:
        agent, _pid = _spawn_agent(tmp_path, module="docker", driver="DockerDriver", kwargs="image='img:1'",
                                   argv=["true"], pid_attr="proc.pid")
    finally:
        os.environ["PATH"] = os.environ["PATH"].split(os.pathsep, 1)[1]
    try:
        deadline = time.monotonic() + 10
        while not (calls.exists() and calls.read_text().startswith("run ")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        name = calls.read_text().split("--name", 1)[1].split()[0]
        assert "rm" not in calls.read_text().split()[0]
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait(10)
        deadline = time.monotonic() + 10
        while f"rm -f {name}" not in calls.read_text():
            assert time.monotonic() < deadline, calls.read_text()
            time.sleep(0.05)
    finally:
        if agent.poll() is None:
            agent.kill()
        for p in psutil.process_iter(["cmdline"]):
            if p.info["cmdline"] == ["sleep", "305"]:
                p.kill()


def test_jobobject_tasks_die_with_the_agents_job_handle():
    """Windows, untested there: the Job Object is created with KILL_ON_JOB_CLOSE and without any
    breakaway flag, and its handle is not inheritable (CreateJobObject with no security attributes),
    so the job - every process of the task - dies when the agent's handle closes with the agent."""
    from worker.execution import win32api as w

    flags = w.JobLimits(memory_bytes=None, max_processes=None, cpu_time_s=None).flags()
    assert flags & w.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    assert not flags & 0x00000800 and not flags & 0x00001000  # BREAKAWAY_OK, SILENT_BREAKAWAY_OK
    import inspect

    assert "CreateJobObject(None," in inspect.getsource(w.PyWin32Api.create_job)

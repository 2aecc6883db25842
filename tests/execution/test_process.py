"""The process driver, run through the supervisor like the agent runs it."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from worker.execution import get_driver
from worker.execution.base import ExecutionSpec, Limits
from worker.execution.process import ProcessDriver
from worker.execution.supervisor import Supervisor
from worker.protocol import KillReason

PY = sys.executable


def spec(tmp_path: Path, code: str, **kwargs) -> ExecutionSpec:
    return ExecutionSpec(
        task_id="t1",
        argv=[PY, "-c", code],
        scratch_dir=tmp_path / "scratch",
        output_dir=tmp_path / "output",
        **kwargs,
    )


def run(tmp_path: Path, code: str, wall: float = 30, **kwargs):
    chunks: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
    execution = ProcessDriver().start(spec(tmp_path, code, **kwargs))
    supervisor = Supervisor(execution, wall_time_s=wall, on_output=lambda s, c: chunks[s].extend(c))
    return supervisor.run(), chunks, execution


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for_file(path: Path, timeout: float = 10) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


def test_registry_and_limits_reported():
    driver = get_driver("process")
    driver.check_available()
    limits = driver.enforced_limits()
    assert "wall_time" in limits and limits["network"] == "not isolated"


def test_exit_code_streams_and_environment(tmp_path):
    os.environ["POOL_TEST_SECRET"] = "leak"
    try:
        code = (
            "import os,sys; print('out', os.getcwd()); print('err', file=sys.stderr);"
            "print('secret', os.environ.get('POOL_TEST_SECRET')); print('mine', os.environ['MINE']);"
            "open('../output/r.txt','w').write('x'); sys.exit(3)"
        )
        result, chunks, _ = run(tmp_path, code, env={"MINE": "yes"})
    finally:
        del os.environ["POOL_TEST_SECRET"]
    assert result.exit_code == 3 and result.kill_reason is None and not result.succeeded
    out = chunks["stdout"].decode()
    assert f"out {tmp_path / 'scratch'}" in out
    assert "secret None" in out and "mine yes" in out
    assert chunks["stderr"] == b"err\n"
    assert (tmp_path / "output" / "r.txt").read_text() == "x"


def test_success(tmp_path):
    result, chunks, _ = run(tmp_path, "print('hi')")
    assert result.succeeded and result.exit_code == 0 and chunks["stdout"] == b"hi\n"


def test_signal_death_is_reported(tmp_path):
    result, _, _ = run(tmp_path, "import os,signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert result.exit_code is None and result.signal == 11 and result.kill_reason is None


@pytest.mark.slow
def test_timeout_kills_whole_tree_including_escaped_children(tmp_path):
    """A child in the group, a child that setsid()s, and a double-forked daemon all die."""
    pids = tmp_path / "pids"
    code = f"""
import os, subprocess, sys, time
sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])
escaped = subprocess.Popen([sys.executable, '-c', 'import os,time; os.setsid(); time.sleep(300)'])
r, w = os.pipe()
if os.fork() == 0:               # double fork + setsid: a daemon reparented to init
    os.setsid()
    if os.fork() == 0:
        os.close(1); os.close(2)  # a daemon closes stdio, so the pipes say nothing about it
        os.write(w, str(os.getpid()).encode()); os.close(w)
        time.sleep(300)
    os._exit(0)
daemon = os.read(r, 32).decode()
open({str(pids)!r}, 'w').write(f"{{sleeper.pid}} {{escaped.pid}} {{daemon}}")
print('started', flush=True)
time.sleep(300)
"""
    started = time.monotonic()
    result, chunks, execution = run(tmp_path, code, wall=2)
    assert result.kill_reason is KillReason.TIME
    assert time.monotonic() - started < 10
    assert b"started" in chunks["stdout"]
    victims = [int(p) for p in wait_for_file(pids).split()]
    assert len(victims) == 3
    deadline = time.monotonic() + 5
    while any(alive(p) for p in victims) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in victims if alive(p)], "a process of the task survived the time limit"
    assert execution.remaining() == []


def test_leftovers_killed_after_normal_exit(tmp_path):
    """A program that exits leaving a setsid'd background process behind: the task ends cleanly."""
    pids = tmp_path / "pid"
    code = (
        "import subprocess,sys; p=subprocess.Popen([sys.executable,'-c',"
        "'import os,time; os.setsid(); time.sleep(300)'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL);"
        f"open({str(pids)!r},'w').write(str(p.pid))"
    )
    result, _, _ = run(tmp_path, code)
    assert result.exit_code == 0 and result.kill_reason is None
    pid = int(wait_for_file(pids))
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid)


def test_memory_rlimit(tmp_path):
    result, chunks, _ = run(tmp_path, "b = bytearray(400 * 1024 * 1024); print('allocated')",
                            limits=Limits(wall_time_s=30, memory_bytes=200 * 1024 * 1024))
    assert result.exit_code != 0 and b"allocated" not in chunks["stdout"]
    assert b"MemoryError" in chunks["stderr"]


def test_missing_program_raises_before_running(tmp_path):
    driver = ProcessDriver()
    with pytest.raises(FileNotFoundError):
        driver.start(ExecutionSpec(task_id="t", argv=["/nonexistent/prog"], scratch_dir=tmp_path / "s",
                                   output_dir=tmp_path / "o"))

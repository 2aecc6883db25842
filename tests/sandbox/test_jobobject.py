"""The Windows jobobject driver's logic through a fake Win32 layer (no Windows machine here: the
real calls in worker/execution/win32api.py are UNTESTED on Windows)."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from tests.sandbox.conftest import supervise
from worker.execution import win32api as w
from worker.execution.base import DriverUnavailable, ExecutionSpec, Limits, Mount
from worker.execution.jobobject import KILLED_EXIT_CODE, JobObjectDriver
from worker.protocol import KillReason


class FakeWin32:
    """Records every call; a "process" writes its scripted output, then exits when told (or killed)."""

    def __init__(self, output: bytes = b"hello\n", exit_code: int = 0, messages: list[int] | None = None,
                 runs_until_killed: bool = False) -> None:
        self.calls: list[tuple] = []
        self.output, self.exit_code = output, exit_code
        self.pending_messages = list(messages or [])
        self.runs_until_killed = runs_until_killed
        self.exited = threading.Event()
        self.code: int | None = None
        self.handles = 0
        self.closed: list[str] = []
        self.fds: tuple[int, int] | None = None

    def _h(self, kind: str) -> str:
        self.handles += 1
        return f"{kind}-{self.handles}"

    def create_job(self):
        self.calls.append(("create_job",))
        return self._h("job")

    def set_job_limits(self, job, limits):
        self.calls.append(("set_job_limits", job, limits))

    def set_ui_restrictions(self, job, flags):
        self.calls.append(("set_ui_restrictions", job, flags))

    def create_completion_port(self, job):
        self.calls.append(("create_completion_port", job))
        return self._h("port")

    def job_messages(self, port):
        msgs, self.pending_messages = self.pending_messages, []
        return msgs

    def logon(self, account, password):
        self.calls.append(("logon", account, password))
        return self._h("token")

    def restricted_token(self, token):
        self.calls.append(("restricted_token", token))
        return self._h("rtoken")

    def grant(self, path, account, write):
        self.calls.append(("grant", path, account, write))

    def set_disk_quota(self, path, account, limit_bytes):
        self.calls.append(("set_disk_quota", path, account, limit_bytes))

    def block_network(self, account):
        self.calls.append(("block_network", account))

    def create_suspended_process(self, argv, cwd, env, token, stdout_fd, stderr_fd):
        self.calls.append(("create_suspended_process", argv, cwd, token))
        self.env = env
        self.fds = (os.dup(stdout_fd), os.dup(stderr_fd))  # the "child" keeps its own ends
        return w.ProcessInfo(self._h("process"), self._h("thread"), 4242)

    def assign(self, job, process):
        self.calls.append(("assign", job, process))

    def resume(self, thread):
        self.calls.append(("resume", thread))
        out, _err = self.fds
        os.write(out, self.output)
        if not self.runs_until_killed:
            self._exit(self.exit_code)

    def _exit(self, code):
        if self.code is None:
            self.code = code
            for fd in self.fds:
                os.close(fd)
            self.exited.set()

    def wait(self, process, timeout_s):
        return self.code if self.exited.wait(timeout_s) else None

    def terminate_job(self, job, exit_code):
        self.calls.append(("terminate_job", job, exit_code))
        self._exit(exit_code)

    def close(self, handle):
        self.closed.append(handle)


def _spec(tmp_path: Path, **limits) -> ExecutionSpec:
    for d in ("program", "inputs", "scratch", "output"):
        (tmp_path / d).mkdir(exist_ok=True)
    base = {"wall_time_s": 10, "memory_bytes": 1024**3, "max_processes": 32, "cpu_time_s": 60.0,
            "scratch_bytes": 5 * 1024**3}
    base.update(limits)
    return ExecutionSpec(task_id="W1", argv=["python.exe", "main.py"], scratch_dir=tmp_path / "scratch",
                         output_dir=tmp_path / "output", env={"SEED": "3"},
                         mounts=[Mount(tmp_path / "program", "/task/program"),
                                 Mount(tmp_path / "inputs", "/task/inputs")],
                         limits=Limits(**base))


def _names(fake: FakeWin32) -> list[str]:
    return [c[0] for c in fake.calls]


def test_unavailable_off_windows_or_without_a_password(monkeypatch):
    monkeypatch.delenv("POOL_SANDBOX_PASSWORD", raising=False)
    if sys.platform != "win32":
        with pytest.raises(DriverUnavailable, match="Windows only"):
            JobObjectDriver().check_available()
    with pytest.raises(DriverUnavailable, match="POOL_SANDBOX_PASSWORD"):
        JobObjectDriver(api=FakeWin32()).check_available()
    JobObjectDriver(api=FakeWin32(), password="x").check_available()


def test_process_is_confined_before_it_runs(tmp_path):
    fake = FakeWin32(output=b"result 42\n")
    driver = JobObjectDriver(api=fake, password="pw")
    ran = supervise(driver.start(_spec(tmp_path)), wall_time_s=10)
    assert ran.result.exit_code == 0 and ran.result.kill_reason is None
    assert ran.stdout == b"result 42\n"
    names = _names(fake)
    # ACLs and network block before anything runs; suspended -> assigned to the job -> resumed.
    assert names.index("block_network") < names.index("create_suspended_process")
    assert names.index("set_job_limits") < names.index("create_suspended_process")
    assert names.index("create_suspended_process") < names.index("assign") < names.index("resume")
    grants = [c[1:] for c in fake.calls if c[0] == "grant"]
    assert grants == [(str(tmp_path / "program"), "pool-sandbox", False), (str(tmp_path / "inputs"), "pool-sandbox", False),
                      (str(tmp_path / "scratch"), "pool-sandbox", True), (str(tmp_path / "output"), "pool-sandbox", True)]
    limits = next(c[2] for c in fake.calls if c[0] == "set_job_limits")
    assert limits.flags() & w.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    assert limits.flags() & w.JOB_OBJECT_LIMIT_JOB_MEMORY and limits.memory_bytes == 1024**3
    assert limits.max_processes == 32 and limits.cpu_time_s == 60.0
    assert ("set_ui_restrictions", "job-1", w.JOB_OBJECT_UILIMIT_ALL) in fake.calls
    assert ("set_disk_quota", str(tmp_path / "scratch"), "pool-sandbox", 5 * 1024**3) in fake.calls
    token = next(c for c in fake.calls if c[0] == "create_suspended_process")[3]
    assert token.startswith("rtoken")  # the restricted token, not the logon token
    assert fake.env["SEED"] == "3" and "POOL_SANDBOX_PASSWORD" not in fake.env
    assert {"job-1", "port-2", "process-5", "thread-6"} <= set(fake.closed)
    # the job is terminated at the end anyway: stragglers die with it
    assert names[-1] == "terminate_job"


def test_wall_clock_kill_terminates_the_job(tmp_path):
    fake = FakeWin32(runs_until_killed=True)
    ran = supervise(JobObjectDriver(api=fake, password="pw").start(_spec(tmp_path)), wall_time_s=0.3)
    assert ran.result.kill_reason is KillReason.TIME
    assert ran.result.exit_code == KILLED_EXIT_CODE
    assert ("terminate_job", "job-1", KILLED_EXIT_CODE) in fake.calls


@pytest.mark.parametrize(("message", "reason"), [
    (w.JOB_OBJECT_MSG_JOB_MEMORY_LIMIT, KillReason.MEMORY),
    (w.JOB_OBJECT_MSG_ACTIVE_PROCESS_LIMIT, KillReason.PROCESSES),
    (w.JOB_OBJECT_MSG_END_OF_JOB_TIME, KillReason.TIME),
])
def test_job_limit_messages_become_kill_reasons(tmp_path, message, reason):
    fake = FakeWin32(runs_until_killed=True, messages=[w.JOB_OBJECT_MSG_ACTIVE_PROCESS_ZERO, message])
    ran = supervise(JobObjectDriver(api=fake, password="pw").start(_spec(tmp_path)), wall_time_s=10)
    assert ran.result.kill_reason is reason
    assert ran.result.duration_s < 5


def test_network_and_gpus_refused(tmp_path):
    from dataclasses import replace

    driver = JobObjectDriver(api=FakeWin32(), password="pw")
    with pytest.raises(ValueError, match="network"):
        driver.start(replace(_spec(tmp_path), network=True))
    with pytest.raises(ValueError, match="GPU"):
        driver.start(replace(_spec(tmp_path), gpus=1))


def test_enforced_limits_admit_it_is_untested():
    limits = JobObjectDriver(api=FakeWin32(), password="pw").enforced_limits()
    assert "UNTESTED" in limits["tested"]
    assert "Job Object" in limits["memory"]

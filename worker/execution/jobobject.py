"""The ``jobobject`` driver (Windows): the program runs as a low-privilege local account with a
restricted token, suspended until it is inside a Job Object that limits memory (whole job),
active processes and CPU time, forbids UI access (desktop, clipboard, global atoms...) and kills
every process in it when the job handle closes. Its directories are ACL'd to that account; an
outbound-block Windows Firewall rule for the account keeps it off the network; an NTFS quota for
the account caps the disk it can fill.

UNTESTED ON WINDOWS: there is no Windows machine here. The logic (what is set, in which order, how
kills and limit messages become reasons) is tested through a fake of :mod:`worker.execution.win32api`.
Limits of the design: the account is shared by consecutive tasks on one worker (one task at a time,
so no two tasks share it at once); opt-in network is all-or-nothing (no loopback exception).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

from worker.errors import TaskRejected
from worker.execution import win32api as w
from worker.execution.base import (
    DriverUnavailable,
    Execution,
    ExecutionDriver,
    ExecutionResult,
    ExecutionSpec,
)
from worker.protocol import KillReason

log = logging.getLogger(__name__)
MONITOR_INTERVAL_S = 0.1
KILLED_EXIT_CODE = 137  # what killed processes report, as after SIGKILL on Linux, so logs read the same

_MESSAGE_REASONS = {
    w.JOB_OBJECT_MSG_JOB_MEMORY_LIMIT: (KillReason.MEMORY, "job memory limit exceeded"),
    w.JOB_OBJECT_MSG_PROCESS_MEMORY_LIMIT: (KillReason.MEMORY, "process memory limit exceeded"),
    w.JOB_OBJECT_MSG_ACTIVE_PROCESS_LIMIT: (KillReason.PROCESSES, "active process limit reached"),
    w.JOB_OBJECT_MSG_END_OF_JOB_TIME: (KillReason.TIME, "job cpu time limit exceeded"),
}


class JobObjectDriver(ExecutionDriver):
    name = "jobobject"

    def __init__(self, *, account: str = "pool-sandbox", password: str | None = None,
                 block_network: bool = True, disk_quota: bool = True, api: w.Win32Api | None = None,
                 **_ignored: Any) -> None:
        self.account = account
        self.password = password if password is not None else os.environ.get("POOL_SANDBOX_PASSWORD")
        self.block_network = block_network
        self.disk_quota = disk_quota
        self._api = api
        self._network_blocked = False

    @property
    def api(self) -> w.Win32Api:
        if self._api is None:
            self._api = w.PyWin32Api()
        return self._api

    def check_available(self) -> None:
        if self._api is None:
            if sys.platform != "win32":
                raise DriverUnavailable("the jobobject driver runs on Windows only (use bwrap on Linux)")
            try:
                self._api = w.PyWin32Api()
            except ImportError as exc:
                raise DriverUnavailable(f"pywin32 is missing ({exc}): pip install pywin32") from None
        if not self.password:
            raise DriverUnavailable(f"no password for the sandbox account {self.account!r}: set "
                                    "POOL_SANDBOX_PASSWORD (the image creates the account)")

    def enforced_limits(self) -> dict[str, str]:
        return {
            "isolation": f"local account {self.account!r}, restricted token (admin group and privileges removed)",
            "memory": "Job Object JOB_OBJECT_LIMIT_JOB_MEMORY (whole job)",
            "processes": "Job Object JOB_OBJECT_LIMIT_ACTIVE_PROCESS",
            "cpu_time": "Job Object JOB_OBJECT_LIMIT_JOB_TIME (whole job)",
            "kill_tree": "Job Object KILL_ON_JOB_CLOSE + TerminateJobObject",
            "ui": "Job Object UI restrictions (all)",
            "filesystem": "NTFS ACLs: scratch/output modify, program/inputs read for the account",
            "disk": "NTFS per-user quota for the account" if self.disk_quota else "not enforced",
            "network": "Windows Firewall outbound block for the account" if self.block_network
                       else "NOT isolated",
            "file_size": "not enforced (no per-file limit on Windows; the disk quota bounds it)",
            "open_files": "not enforced",
            "wall_time": "agent supervisor (TerminateJobObject)",
            "output": "agent supervisor caps stdout/stderr",
            "tested": "UNTESTED on Windows (logic tested through a fake Win32 layer)",
        }

    def start(self, spec: ExecutionSpec) -> JobExecution:
        if spec.gpus:
            raise TaskRejected("GPU tasks are not supported by the jobobject driver")
        api = self.api
        if spec.network:
            raise TaskRejected("this worker cannot give tasks network on Windows without exposing the host: refused")
        if self.block_network and not self._network_blocked:
            api.block_network(self.account)
            self._network_blocked = True
        for mount in spec.mounts:
            api.grant(str(mount.source), self.account, write=not mount.read_only)
        for path in (spec.scratch_dir, spec.output_dir):
            api.grant(str(path), self.account, write=True)
        if self.disk_quota and spec.limits.scratch_bytes is not None:
            api.set_disk_quota(str(spec.scratch_dir), self.account, spec.limits.scratch_bytes)
        return JobExecution(self, spec)


class JobExecution(Execution):
    def __init__(self, driver: JobObjectDriver, spec: ExecutionSpec) -> None:
        self.api = api = driver.api
        self.spec = spec
        self._reason: KillReason | None = None
        self._detail: str | None = None
        self._result: ExecutionResult | None = None
        self._messages: list[int] = []
        self._handles: list[Any] = []
        lim = spec.limits
        self.job = api.create_job()
        self._handles.append(self.job)
        try:
            api.set_job_limits(self.job, w.JobLimits(lim.memory_bytes, lim.max_processes, lim.cpu_time_s))
            api.set_ui_restrictions(self.job, w.JOB_OBJECT_UILIMIT_ALL)
            self.port = api.create_completion_port(self.job)
            self._handles.append(self.port)
            token = api.restricted_token(api.logon(driver.account, driver.password or ""))
            self._handles.append(token)
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            env = {"TEMP": str(spec.scratch_dir), "TMP": str(spec.scratch_dir),
                   "USERPROFILE": str(spec.scratch_dir), "SystemRoot": os.environ.get("SystemRoot", r"C:\Windows"),
                   "PATH": os.environ.get("PATH", ""), **spec.env}
            try:
                # Suspended until it is inside the job: nothing it starts can escape the limits.
                info = api.create_suspended_process(list(spec.argv), str(spec.scratch_dir), env, token, out_w, err_w)
            finally:
                os.close(out_w)
                os.close(err_w)
            self._handles += [info.process, info.thread]
            self.process = info.process
            try:
                api.assign(self.job, info.process)
            except Exception:
                api.terminate_job(self.job, 1)
                raise
            self.started = time.monotonic()
            api.resume(info.thread)
        except BaseException:
            self._close_handles()
            raise
        self.stdout = os.fdopen(out_r, "rb", buffering=0)
        self.stderr = os.fdopen(err_r, "rb", buffering=0)
        self._exited = threading.Event()
        self._monitor = threading.Thread(target=self._watch, daemon=True, name=f"job-monitor-{spec.task_id}")
        self._monitor.start()

    def _poll_messages(self) -> tuple[KillReason, str] | None:
        self._messages += self.api.job_messages(self.port)
        for code in self._messages:
            if code in _MESSAGE_REASONS:
                return _MESSAGE_REASONS[code]
        return None

    def _watch(self) -> None:
        while not self._exited.wait(MONITOR_INTERVAL_S):
            found = self._poll_messages()
            if found is not None:
                self._kill(*found)
                return

    def wait(self, timeout: float | None = None) -> int | None:
        return self.api.wait(self.process, timeout)

    def kill(self, reason: KillReason) -> None:
        self._kill(reason, None)

    def _kill(self, reason: KillReason, detail: str | None) -> None:
        if self._reason is None:
            self._reason, self._detail = reason, detail
        self.api.terminate_job(self.job, KILLED_EXIT_CODE)

    def result(self) -> ExecutionResult:
        if self._result is not None:
            return self._result
        rc = self.api.wait(self.process, None)
        duration = time.monotonic() - self.started
        self._exited.set()
        self._monitor.join(timeout=5)
        reason, detail = self._reason, self._detail
        if reason is None:
            found = self._poll_messages()
            if found is not None and rc != 0:
                reason, detail = found
        self.api.terminate_job(self.job, KILLED_EXIT_CODE)  # whatever the program left running
        self._close_handles()
        self._result = ExecutionResult(exit_code=rc, kill_reason=reason, duration_s=duration, detail=detail)
        return self._result

    def _close_handles(self) -> None:
        for handle in reversed(self._handles):
            try:
                self.api.close(handle)
            except Exception:
                log.warning("closing handle %r failed", handle, exc_info=True)
        self._handles = []

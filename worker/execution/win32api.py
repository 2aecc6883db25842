"""The thin layer of Win32 calls the ``jobobject`` driver needs, behind one small interface so the
driver's logic is tested anywhere with a fake (tests/sandbox/test_jobobject.py).

:class:`PyWin32Api` is the real one (pywin32). UNTESTED: there is no Windows machine here; it is
written against the documented pywin32 / Win32 API and must be validated on a Windows worker image.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Any, Protocol

# Job object completion-port messages (winnt.h)
JOB_OBJECT_MSG_END_OF_JOB_TIME = 1
JOB_OBJECT_MSG_END_OF_PROCESS_TIME = 2
JOB_OBJECT_MSG_ACTIVE_PROCESS_LIMIT = 3
JOB_OBJECT_MSG_ACTIVE_PROCESS_ZERO = 4
JOB_OBJECT_MSG_PROCESS_MEMORY_LIMIT = 9
JOB_OBJECT_MSG_JOB_MEMORY_LIMIT = 10

# JOBOBJECT_BASIC_LIMIT_INFORMATION.LimitFlags
JOB_OBJECT_LIMIT_JOB_TIME = 0x00000004
JOB_OBJECT_LIMIT_ACTIVE_PROCESS = 0x00000008
JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION = 0x00000400
JOB_OBJECT_LIMIT_JOB_MEMORY = 0x00000200
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x00002000

# JOBOBJECT_BASIC_UI_RESTRICTIONS.UIRestrictionsClass: everything
JOB_OBJECT_UILIMIT_ALL = 0x000000FF


@dataclass
class JobLimits:
    memory_bytes: int | None
    max_processes: int | None
    cpu_time_s: float | None

    def flags(self) -> int:
        flags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE | JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION
        if self.memory_bytes is not None:
            flags |= JOB_OBJECT_LIMIT_JOB_MEMORY
        if self.max_processes is not None:
            flags |= JOB_OBJECT_LIMIT_ACTIVE_PROCESS
        if self.cpu_time_s is not None:
            flags |= JOB_OBJECT_LIMIT_JOB_TIME
        return flags


@dataclass
class ProcessInfo:
    process: Any
    thread: Any
    pid: int


class Win32Api(Protocol):
    def create_job(self) -> Any: ...
    def set_job_limits(self, job: Any, limits: JobLimits) -> None: ...
    def set_ui_restrictions(self, job: Any, flags: int) -> None: ...
    def create_completion_port(self, job: Any) -> Any: ...
    def job_messages(self, port: Any) -> list[int]:
        """Drain the port without blocking: the JOB_OBJECT_MSG_* codes received so far."""
    def logon(self, account: str, password: str) -> Any: ...
    def restricted_token(self, token: Any) -> Any: ...
    def grant(self, path: str, account: str, write: bool) -> None: ...
    def set_disk_quota(self, path: str, account: str, limit_bytes: int) -> None: ...
    def block_network(self, account: str) -> None: ...
    def create_suspended_process(self, argv: list[str], cwd: str, env: dict[str, str], token: Any,
                                 stdout_fd: int, stderr_fd: int) -> ProcessInfo: ...
    def assign(self, job: Any, process: Any) -> None: ...
    def resume(self, thread: Any) -> None: ...
    def wait(self, process: Any, timeout_s: float | None) -> int | None: ...
    def terminate_job(self, job: Any, exit_code: int) -> None: ...
    def close(self, handle: Any) -> None: ...


class PyWin32Api:  # pragma: no cover - Windows only, untested here
    """Win32 through pywin32 (``pip install pywin32``)."""

    def __init__(self) -> None:
        import msvcrt  # noqa: F401  (fails off Windows: DriverUnavailable upstream)

        import win32api
        import win32con
        import win32event
        import win32file
        import win32job
        import win32process
        import win32security

        self.api, self.con, self.event, self.file = win32api, win32con, win32event, win32file
        self.job, self.process, self.security = win32job, win32process, win32security

    def create_job(self) -> Any:
        return self.job.CreateJobObject(None, "")

    def set_job_limits(self, job: Any, limits: JobLimits) -> None:
        info = self.job.QueryInformationJobObject(job, self.job.JobObjectExtendedLimitInformation)
        basic = info["BasicLimitInformation"]
        basic["LimitFlags"] = limits.flags()
        if limits.max_processes is not None:
            basic["ActiveProcessLimit"] = limits.max_processes
        if limits.cpu_time_s is not None:
            basic["PerJobUserTimeLimit"] = int(limits.cpu_time_s * 10_000_000)  # 100 ns units
        if limits.memory_bytes is not None:
            info["JobMemoryLimit"] = limits.memory_bytes
        self.job.SetInformationJobObject(job, self.job.JobObjectExtendedLimitInformation, info)

    def set_ui_restrictions(self, job: Any, flags: int) -> None:
        self.job.SetInformationJobObject(job, self.job.JobObjectBasicUIRestrictions, {"UIRestrictionsClass": flags})

    def create_completion_port(self, job: Any) -> Any:
        port = self.file.CreateIoCompletionPort(self.file.INVALID_HANDLE_VALUE, None, 0, 1)
        self.job.SetInformationJobObject(job, self.job.JobObjectAssociateCompletionPortInformation,
                                         {"CompletionKey": 1, "CompletionPort": port})
        return port

    def job_messages(self, port: Any) -> list[int]:
        codes = []
        while True:
            rc, code, _key, _ov = self.file.GetQueuedCompletionStatus(port, 0)
            if rc != 0 and code == 0:  # WAIT_TIMEOUT: nothing queued
                break
            codes.append(code)
        return codes

    def logon(self, account: str, password: str) -> Any:
        return self.security.LogonUser(account, ".", password, self.con.LOGON32_LOGON_BATCH,
                                       self.con.LOGON32_PROVIDER_DEFAULT)

    def restricted_token(self, token: Any) -> Any:
        # Disable the administrators group and every privilege except SeChangeNotify.
        return self.security.CreateRestrictedToken(token, self.security.DISABLE_MAX_PRIVILEGE, None, None, None)

    def grant(self, path: str, account: str, write: bool) -> None:
        rights = "(OI)(CI)M" if write else "(OI)(CI)RX"
        subprocess.run(["icacls", path, "/grant", f"{account}:{rights}", "/T", "/Q"], check=True, capture_output=True)

    def set_disk_quota(self, path: str, account: str, limit_bytes: int) -> None:
        volume = path[:2]  # "C:"
        subprocess.run(["fsutil", "quota", "enforce", volume], check=True, capture_output=True)
        subprocess.run(["fsutil", "quota", "modify", volume, str(limit_bytes), str(limit_bytes), account],
                       check=True, capture_output=True)

    def block_network(self, account: str) -> None:
        sid = self.security.ConvertSidToStringSid(self.security.LookupAccountName(None, account)[0])
        script = (f"if (-not (Get-NetFirewallRule -DisplayName 'pool-sandbox-{account}' -ErrorAction SilentlyContinue)) "
                  f"{{ New-NetFirewallRule -DisplayName 'pool-sandbox-{account}' -Direction Outbound -Action Block "
                  f"-LocalUser 'D:(A;;CC;;;{sid})' | Out-Null }}")
        subprocess.run(["powershell", "-NoProfile", "-Command", script], check=True, capture_output=True)

    def create_suspended_process(self, argv: list[str], cwd: str, env: dict[str, str], token: Any,
                                 stdout_fd: int, stderr_fd: int) -> ProcessInfo:
        import msvcrt

        startup = self.process.STARTUPINFO()
        startup.dwFlags = self.process.STARTF_USESTDHANDLES
        startup.hStdInput = None
        startup.hStdOutput = msvcrt.get_osfhandle(stdout_fd)
        startup.hStdError = msvcrt.get_osfhandle(stderr_fd)
        flags = (self.process.CREATE_SUSPENDED | self.process.CREATE_NO_WINDOW
                 | self.process.CREATE_UNICODE_ENVIRONMENT)  # nested jobs (Windows 8+): no breakaway needed
        hp, ht, pid, _tid = self.process.CreateProcessAsUser(
            token, None, subprocess.list2cmdline(argv), None, None, True, flags, env, cwd, startup)
        return ProcessInfo(hp, ht, pid)

    def assign(self, job: Any, process: Any) -> None:
        self.job.AssignProcessToJobObject(job, process)

    def resume(self, thread: Any) -> None:
        self.process.ResumeThread(thread)

    def wait(self, process: Any, timeout_s: float | None) -> int | None:
        ms = self.event.INFINITE if timeout_s is None else int(timeout_s * 1000)
        if self.event.WaitForSingleObject(process, ms) == self.event.WAIT_TIMEOUT:
            return None
        return self.process.GetExitCodeProcess(process)

    def terminate_job(self, job: Any, exit_code: int) -> None:
        self.job.TerminateJobObject(job, exit_code)

    def close(self, handle: Any) -> None:
        self.api.CloseHandle(handle)

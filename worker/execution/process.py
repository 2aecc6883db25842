"""The ``process`` driver: runs the program as a plain child process, without isolation.

The program gets its own session (``setsid``: new session and process group) and a minimal
environment (never the agent's, which may hold credentials). Limits it can enforce are per-process
rlimits, set by util-linux ``prlimit`` exec'ing the program (so Python can spawn with vfork), or by a
``preexec_fn`` where ``prlimit`` is missing; the wall-clock limit, cancellation and output caps are
enforced by killing the whole tree.

Killing "the whole tree" of an unsandboxed program is best effort, so it is layered:

1. the process group and the session of the program (``killpg``, ``getsid``);
2. every descendant of the main process still attached to it (psutil), while it is not reaped;
3. every process carrying this execution's token in its environment — this catches a child that
   ``setsid()``\\ s and double-forks away from both the group and the tree. On Linux the sessions and
   environments are read in one pass over /proc with bare system calls (a few hundred µs per task).

A process that leaves the session AND rewrites its environment escapes this driver; the sandboxed
drivers (pid namespaces, cgroups, job objects) do not have that gap.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil

if sys.platform != "win32":
    import resource

from worker.execution.base import Execution, ExecutionDriver, ExecutionResult, ExecutionSpec, Limits
from worker.execution.guard import task_guard
from worker.protocol import KillReason

TOKEN_VAR = "POOL_EXECUTION_TOKEN"
_KILL_ROUNDS = 5  # a forking program can race one sweep; a few sweeps catch the stragglers
_PROC_SWEEP = sys.platform.startswith("linux") and os.path.isdir("/proc/self")  # else psutil's portable sweep


def base_environment(spec: ExecutionSpec) -> dict[str, str]:
    """What every program sees before the task's own variables are applied."""
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(spec.scratch_dir),
        "TMPDIR": str(spec.scratch_dir),
        "PYTHONUNBUFFERED": "1",  # logs should stream while the program runs, not at exit
        "POOL_TASK_ID": spec.task_id,
    }


def _rlimit_plan(limits: Limits) -> list[tuple[int, int]]:
    plan: list[tuple[int, int | None]] = [
        (resource.RLIMIT_AS, limits.memory_bytes),
        (resource.RLIMIT_CPU, int(limits.cpu_time_s) if limits.cpu_time_s else None),
        (resource.RLIMIT_FSIZE, limits.file_size_bytes),
        (resource.RLIMIT_NOFILE, limits.open_files),
        (resource.RLIMIT_NPROC, limits.max_processes),
    ]
    return [(which, value) for which, value in plan if value is not None]


def _ceiling(which: int, value: int) -> int:
    """The limit a child can actually get: never above the hard limit it inherits from us."""
    _soft, hard = resource.getrlimit(which)
    return value if hard == resource.RLIM_INFINITY else min(value, hard)


def _make_preexec(plan: list[tuple[int, int]]):
    if not plan:
        return None

    def apply() -> None:  # runs in the child between fork and exec: no imports, no locks, no I/O
        for which, value in plan:
            ceiling = _ceiling(which, value)
            resource.setrlimit(which, (ceiling, ceiling))

    return apply


# util-linux prlimit(1) sets the limits and execs the program. Spawning through it lets Python use
# vfork (a preexec_fn forces a full fork of the agent: ~4 ms instead of ~1.5 ms per task here).
_PRLIMIT = shutil.which("prlimit") if sys.platform.startswith("linux") else None
_PRLIMIT_OPTIONS = {} if sys.platform == "win32" else {
    resource.RLIMIT_AS: "--as", resource.RLIMIT_CPU: "--cpu", resource.RLIMIT_FSIZE: "--fsize",
    resource.RLIMIT_NOFILE: "--nofile", resource.RLIMIT_NPROC: "--nproc",
}


def _prlimit_argv(plan: list[tuple[int, int]], argv: list[str]) -> list[str]:
    options = [f"{_PRLIMIT_OPTIONS[which]}={_ceiling(which, value)}" for which, value in plan]
    return [_PRLIMIT, *options, "--", *argv]  # type: ignore[list-item]


def _check_executable(program: str, env: dict[str, str], cwd: Path) -> None:
    """The errors exec would give (a wrapper can only report them as its exit status)."""
    if os.sep in program:
        path = Path(cwd, program)
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
        if path.is_dir() or not os.access(path, os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)
    elif shutil.which(program, path=env.get("PATH", os.defpath)) is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


def _has_token(proc: psutil.Process, marker: bytes) -> bool:
    try:
        with open(f"/proc/{proc.pid}/environ", "rb") as fh:
            return marker in fh.read()
    except OSError:
        return False


def _environ(pid: int) -> bytes:
    """``/proc/PID/environ`` through bare file descriptors (a Python file object per process of
    the host was most of a sweep's cost); empty if unreadable or gone."""
    try:
        fd = os.open(f"/proc/{pid}/environ", os.O_RDONLY)
    except OSError:
        return b""
    try:
        data = os.read(fd, 65536)
        while data and len(data) % 65536 == 0:  # a large environment: read on to its end
            more = os.read(fd, 65536)
            if not more:
                break
            data += more
        return data
    except OSError:
        return b""
    finally:
        os.close(fd)


def _proc_sweep(sid: int, marker: bytes) -> list[int]:
    """Linux: the pids in session ``sid`` or whose environment holds ``marker``, in one pass over
    /proc with plain system calls. Kernel threads (session 0) carry no environment: skipped."""
    me, found = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        if pid == me:
            continue
        try:
            session = os.getsid(pid)
        except OSError:
            continue
        if session == sid or (session != 0 and marker in _environ(pid)):
            found.append(pid)
    return found


class ProcessExecution(Execution):
    def __init__(self, spec: ExecutionSpec) -> None:
        self.spec = spec
        self._token = uuid.uuid4().hex
        env = {**base_environment(spec), **spec.env, TOKEN_VAR: self._token}
        argv, preexec = list(spec.argv), None
        if sys.platform != "win32":
            plan = _rlimit_plan(spec.limits)
            if plan and _PRLIMIT and argv:
                _check_executable(argv[0], env, spec.scratch_dir)
                argv = _prlimit_argv(plan, argv)
            else:
                preexec = _make_preexec(plan)
        # If the agent dies (even SIGKILL), its guard process kills this program's session and
        # everything carrying its token (worker/execution/guard.py). Registered before the start:
        # no moment when the program runs unguarded.
        self._guard = task_guard() if sys.platform != "win32" else None
        if self._guard is not None:
            self._guard.watch(self._token, token=self._token)
        self._started = time.monotonic()
        try:
            self._popen = subprocess.Popen(
                argv,
                cwd=spec.scratch_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                # Safe with threads here: the hook only calls setrlimit (module imported beforehand).
                preexec_fn=preexec,  # noqa: PLW1509
            )
        except BaseException:
            if self._guard is not None:
                self._guard.release(self._token)
            raise
        if self._guard is not None:
            self._guard.watch(self._token, session=self._popen.pid)
        self.stdout = self._popen.stdout  # type: ignore[assignment]
        self.stderr = self._popen.stderr  # type: ignore[assignment]
        self.pid = self._popen.pid
        self._sid = self.pid  # start_new_session: the program leads its own session and group
        self._lock = threading.Lock()
        self._kill_reason: KillReason | None = None
        self._returncode: int | None = None
        self._ended: float | None = None
        self._finished = False

    # -- Execution -------------------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> int | None:
        try:
            code = self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        with self._lock:
            if self._ended is None:
                self._ended = time.monotonic()
                self._returncode = code
        return code

    def kill(self, reason: KillReason) -> None:
        with self._lock:
            if self._kill_reason is None and self._popen.returncode is None:
                self._kill_reason = reason
        self._kill_tree()

    def result(self) -> ExecutionResult:
        code = self.wait()
        if not self._finished:
            self._finished = True
            self._kill_tree()  # the task is over: nothing it started may outlive it
            if self._guard is not None:
                self._guard.release(self._token)
        exit_code, sig = (code, None) if code is not None and code >= 0 else (None, -(code or 0) or None)
        return ExecutionResult(
            exit_code=exit_code,
            signal=sig,
            kill_reason=self._kill_reason,
            duration_s=(self._ended or time.monotonic()) - self._started,
        )

    # -- killing the tree --------------------------------------------------------------------------
    def remaining(self) -> list[psutil.Process]:
        """Processes that belong to this execution and are still alive (zombies excluded)."""
        found: dict[int, psutil.Process] = {}
        marker = f"{TOKEN_VAR}={self._token}".encode()
        if self._popen.returncode is None:  # not reaped yet: the pid is still the program's
            try:
                main = psutil.Process(self.pid)
                if main.status() != psutil.STATUS_ZOMBIE:
                    found[main.pid] = main
                for child in main.children(recursive=True):
                    found[child.pid] = child
            except psutil.Error:
                pass
        # Once reaped, its children were handed to init: only the session and the token find them.
        if _PROC_SWEEP:
            for pid in _proc_sweep(self._sid, marker):
                if pid not in found:
                    try:
                        found[pid] = psutil.Process(pid)
                    except psutil.Error:
                        pass
        else:
            me = os.getpid()
            for proc in psutil.process_iter():
                if proc.pid in found or proc.pid == me:
                    continue
                try:
                    in_session = hasattr(os, "getsid") and os.getsid(proc.pid) == self._sid
                except OSError:
                    continue
                if in_session or _has_token(proc, marker):
                    found[proc.pid] = proc
        alive = []
        for proc in found.values():
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.Error:
                pass
        return alive

    def _kill_tree(self) -> None:
        for _ in range(_KILL_ROUNDS):
            if hasattr(os, "killpg"):  # POSIX; on Windows the psutil sweep below does the work
                try:
                    os.killpg(self._sid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            victims = self.remaining()
            if not victims:
                return
            for proc in victims:
                try:
                    proc.kill()  # SIGKILL on POSIX, TerminateProcess on Windows
                except psutil.Error:
                    pass
            psutil.wait_procs(victims, timeout=1)


class ProcessDriver(ExecutionDriver):
    """Plain processes: fast, no isolation. For trusted code and development."""

    name = "process"

    def check_available(self) -> None:  # runs wherever Python runs
        return None

    def enforced_limits(self) -> dict[str, str]:
        if sys.platform == "win32":
            return {"wall_time": "agent kills the process tree", "memory": "not enforced",
                    "network": "not isolated", "filesystem": "not isolated"}
        nproc = "RLIMIT_NPROC (per user; no effect for root)" if os.geteuid() == 0 else "RLIMIT_NPROC (per user)"
        return {
            "wall_time": "agent kills process group, session and tagged processes",
            "memory": "RLIMIT_AS (address space, per process)",
            "cpu_time": "RLIMIT_CPU (per process)",
            "file_size": "RLIMIT_FSIZE",
            "open_files": "RLIMIT_NOFILE",
            "processes": nproc,
            "scratch": "not enforced",
            "network": "not isolated",
            "filesystem": "not isolated (program/ and inputs/ are read-only by permissions only)",
        }

    def start(self, spec: ExecutionSpec) -> Execution:
        for directory in (spec.scratch_dir, spec.output_dir):
            Path(directory).mkdir(parents=True, exist_ok=True)
        return ProcessExecution(spec)

"""Resource limits that do not need a cgroup: rlimits (set by ``prlimit`` in the exec chain, so they
bind the sandbox and everything it forks) and how an exit status maps to a :class:`KillReason`."""

from __future__ import annotations

import math
import signal

from worker.execution.base import Limits
from worker.protocol import KillReason

PRLIMIT = "/usr/bin/prlimit"


def rlimits(limits: Limits, *, memory_in_cgroup: bool, processes_in_cgroup: bool) -> dict[str, int]:
    """prlimit option name -> value. Core dumps are always off: a crashing program must not reach a
    host core handler (``core_pattern`` pipes run as root outside every namespace)."""
    out: dict[str, int] = {"core": 0}
    if limits.cpu_time_s is not None:
        out["cpu"] = max(1, math.ceil(limits.cpu_time_s))  # per process; SIGXCPU then SIGKILL
    if limits.file_size_bytes is not None:
        out["fsize"] = limits.file_size_bytes  # a bigger write gets SIGXFSZ
    if limits.open_files is not None:
        out["nofile"] = limits.open_files
    if limits.memory_bytes is not None and not memory_in_cgroup:
        out["as"] = limits.memory_bytes  # last resort: address space, not resident memory
    if limits.max_processes is not None and not processes_in_cgroup:
        out["nproc"] = limits.max_processes  # last resort: counts every process of the sandbox uid
    return out


def prlimit_argv(values: dict[str, int]) -> list[str]:
    if not values:
        return []
    # CPU: hard one second above soft, so the program first gets SIGXCPU (a nameable reason)
    # rather than an anonymous SIGKILL.
    hard = {name: value + (1 if name == "cpu" else 0) for name, value in values.items()}
    return [PRLIMIT, *(f"--{name}={value}:{hard[name]}" for name, value in sorted(values.items())), "--"]


def describe_rlimits() -> dict[str, str]:
    return {
        "cpu_time": "rlimit RLIMIT_CPU (per process)",
        "file_size": "rlimit RLIMIT_FSIZE",
        "open_files": "rlimit RLIMIT_NOFILE",
        "core_dumps": "rlimit RLIMIT_CORE=0",
    }


def reason_from_signal(sig: int | None) -> tuple[KillReason | None, str | None]:
    """Signals the kernel sends when an rlimit is exceeded."""
    if sig == signal.SIGXFSZ:
        return KillReason.DISK, "file size limit exceeded (SIGXFSZ)"
    if sig == signal.SIGXCPU:
        return KillReason.TIME, "cpu time limit exceeded (SIGXCPU)"
    return None, None

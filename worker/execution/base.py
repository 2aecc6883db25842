"""The execution-driver interface: how the agent runs one task's program.

A driver turns an :class:`ExecutionSpec` (argv, the task's directories, mounts, limits, network
on/off, env) into a running :class:`Execution`. The agent reads the execution's stdout/stderr pipes,
enforces the wall-clock limit, cancellation and output caps through ``kill(reason)``, and asks the
driver for the result. Drivers differ in isolation: ``process`` (own process group, no isolation),
``bwrap`` (Linux namespaces + cgroups/rlimits), ``jobobject`` (Windows), ``docker`` (containers).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, ClassVar

from worker.errors import PoolError
from worker.protocol import KillReason


@dataclass(frozen=True)
class Mount:
    """A host path made visible to the program at ``target`` (absolute path inside the sandbox;
    drivers without a private filesystem view expose ``source`` itself and ignore ``target``)."""

    source: Path
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class Limits:
    """Resource ceilings for one execution; ``None`` means no limit asked."""

    wall_time_s: float
    memory_bytes: int | None = None
    max_processes: int | None = None
    cpu_time_s: float | None = None
    file_size_bytes: int | None = None
    open_files: int | None = None
    scratch_bytes: int | None = None
    tmp_bytes: int | None = None


@dataclass(frozen=True)
class ExecutionSpec:
    task_id: str
    argv: list[str]
    scratch_dir: Path  # writable working directory of the program (cwd)
    output_dir: Path  # writable; its contents are uploaded as the task's output
    mounts: list[Mount] = field(default_factory=list)  # program/ and inputs/, read-only
    env: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=lambda: Limits(wall_time_s=3600))
    network: bool = False
    gpus: int = 0
    image: str | None = None  # container drivers only


@dataclass
class ExecutionResult:
    exit_code: int | None  # None when killed by a signal
    signal: int | None = None
    kill_reason: KillReason | None = None  # why the driver/agent stopped it, if it did
    duration_s: float = 0.0
    detail: str | None = None  # e.g. "memory limit 100 MiB exceeded (cgroup v1 memory.failcnt=3)"

    @property
    def succeeded(self) -> bool:
        return self.kill_reason is None and self.exit_code == 0


class DriverUnavailable(PoolError, RuntimeError):
    """The driver cannot run on this host (tool missing, wrong OS); the message says what to install."""


class Execution(abc.ABC):
    """One running program (and every process it started)."""

    stdout: IO[bytes]
    stderr: IO[bytes]

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the main process; its return code, or None if still running after ``timeout``."""

    @abc.abstractmethod
    def kill(self, reason: KillReason) -> None:
        """Kill the whole process tree now and remember why. Idempotent."""

    @abc.abstractmethod
    def result(self) -> ExecutionResult:
        """After ``wait`` returned: exit code, signal, kill reason (including ones the driver
        detected itself, e.g. memory), duration. Also releases driver resources (cgroups...)."""


class ExecutionDriver(abc.ABC):
    name: ClassVar[str]

    @abc.abstractmethod
    def check_available(self) -> None:
        """Raise :class:`DriverUnavailable` with a clear message if this host cannot run the driver."""

    @abc.abstractmethod
    def enforced_limits(self) -> dict[str, str]:
        """Which limits this driver really enforces on this host and how, e.g.
        ``{"memory": "cgroup v1 memory.limit_in_bytes", "network": "none (not isolated)"}``.
        Reported in the worker's host facts so nobody believes in a limit that is not there."""

    @abc.abstractmethod
    def start(self, spec: ExecutionSpec) -> Execution:
        """Start the program; raise on a setup failure before anything ran."""

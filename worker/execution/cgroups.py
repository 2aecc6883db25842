"""Per-task control groups: detect what the host offers (cgroup v2, v1, or nothing) and manage one
cgroup per execution (limits, kill-all, the counters that tell why a task died, removal).

v2 (Azure VMs: systemd with ``Delegate=yes`` on the agent's unit): task cgroups are created next to
the agent inside its delegated cgroup. The "no internal processes" rule forbids enabling controllers
for children of a cgroup that holds processes, so :func:`detect` (with ``prepare=True``) moves the
agent's own processes into a ``<agent cgroup>/agent`` leaf first, then enables ``+memory +pids``
(and ``+cpu`` when offered) in the agent cgroup's ``cgroup.subtree_control``.

v1 (this development machine is hybrid: controllers on v1, an empty cgroup2 at ``unified/``): one
directory per controller, created under the agent's own cgroup of that controller.

Processes join a task cgroup by writing their pid to :attr:`TaskCgroup.procs_files` before they
exec the sandbox, so nothing the program forks can start outside it.
"""

from __future__ import annotations

import abc
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from worker.errors import PoolError
from worker.execution.base import Limits
from worker.util.pids import pid_alive

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpuacct")
STALE_NAME_RE = re.compile(r"^pool-(\d+)-")


def task_cgroup_name(task_id: str, unique: str) -> str:
    """Task cgroups carry the agent's pid, so a later agent can tell a dead one's leftovers."""
    return f"pool-{os.getpid()}-{task_id}-{unique}"


class CgroupError(PoolError, OSError):
    """A cgroup could not be made or changed (an OSError, so the agent rejects the task cleanly)."""


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror}") from None


def _keyed(text: str) -> dict[str, int]:
    """``"oom_kill 2\\nmax 0"`` -> {"oom_kill": 2, "max": 0}."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _own_paths(proc_self_cgroup: Path) -> tuple[str | None, dict[str, str]]:
    """(v2 path, {v1 controller: path}) of this process, from /proc/self/cgroup."""
    v2: str | None = None
    v1: dict[str, str] = {}
    for line in _read(proc_self_cgroup).splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        for name in controllers.split(","):
            if name:
                v1[name] = path
    return v2, v1


@dataclass
class CgroupHost:
    """What this host offers. ``version`` is "v2", "v1" or "none"; ``why`` explains a fallback."""

    version: str
    v2_parent: Path | None = None
    v2_controllers: frozenset[str] = frozenset()
    v1_parents: dict[str, Path] = field(default_factory=dict)
    why: str = ""

    def create(self, name: str, limits: Limits) -> TaskCgroup | None:
        if self.version == "v2" and self.v2_parent is not None:
            return CgroupV2(self.v2_parent / name, self.v2_controllers, limits)
        if self.version == "v1":
            return CgroupV1({c: p / name for c, p in self.v1_parents.items()}, limits)
        return None

    def parents(self) -> list[Path]:
        if self.version == "v2" and self.v2_parent is not None:
            return [self.v2_parent]
        return list(self.v1_parents.values()) if self.version == "v1" else []

    def sweep_stale(self) -> list[Path]:
        """Remove task cgroups left by an agent that died (named ``pool-<agent pid>-...``, that pid
        gone): kill what is left in them, then rmdir. Live agents' cgroups are never touched."""
        removed = []
        for parent in self.parents():
            try:
                children = [p for p in parent.iterdir() if p.is_dir()]
            except OSError:
                continue
            for child in children:
                match = STALE_NAME_RE.match(child.name)
                if not match or pid_alive(int(match.group(1))):
                    continue
                try:
                    _StaleCgroup(child).remove()
                    removed.append(child)
                except CgroupError:
                    pass
        return removed

    def describe(self) -> dict[str, str]:
        """Which limit each mechanism covers (for enforced_limits)."""
        if self.version == "v2":
            where = f"cgroup v2 ({self.v2_parent})"
            out = {"memory": f"{where} memory.max, swap off, oom.group",
                   "processes": f"{where} pids.max"}
            if "cpu" in self.v2_controllers:
                out["cpu_time_total"] = f"{where} cpu.stat usage_usec"
            return out
        if self.version == "v1":
            out = {}
            if "memory" in self.v1_parents:
                out["memory"] = f"cgroup v1 memory.limit_in_bytes ({self.v1_parents['memory']})"
            if "pids" in self.v1_parents:
                out["processes"] = f"cgroup v1 pids.max ({self.v1_parents['pids']})"
            if "cpuacct" in self.v1_parents:
                out["cpu_time_total"] = "cgroup v1 cpuacct.usage"
            return out
        return {}


def detect(root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP,
           prepare: bool = True) -> CgroupHost:
    """Find the best cgroup setup usable by this process. ``prepare`` allows the one-time v2 move
    of the agent into its ``agent`` leaf (needed to enable controllers for task cgroups)."""
    own_v2, own_v1 = _own_paths(proc_self_cgroup)
    reasons: list[str] = []

    unified = root if (root / "cgroup.controllers").exists() else root / "unified"
    if (unified / "cgroup.controllers").exists() and own_v2 is not None:
        host = _detect_v2(unified, own_v2, prepare)
        if isinstance(host, CgroupHost):
            return host
        reasons.append(f"v2: {host}")
    else:
        reasons.append("v2: no cgroup2 hierarchy")

    parents: dict[str, Path] = {}
    for ctrl in V1_CONTROLLERS:
        mount = root / ctrl
        if not (mount / "cgroup.procs").exists() or ctrl not in own_v1:
            continue
        parent = mount / own_v1[ctrl].lstrip("/")
        if os.access(parent, os.W_OK):
            parents[ctrl] = parent
        else:
            reasons.append(f"v1 {ctrl}: {parent} not writable")
    if "memory" in parents or "pids" in parents:
        return CgroupHost("v1", v1_parents=parents, why="; ".join(reasons))
    reasons.append("v1: no writable memory/pids hierarchy")
    return CgroupHost("none", why="; ".join(reasons))


def _detect_v2(unified: Path, own: str, prepare: bool) -> CgroupHost | str:
    parent = unified / own.lstrip("/")
    available = set(_read(parent / "cgroup.controllers").split())
    if not {"memory", "pids"} <= available:
        return f"{parent} offers controllers {sorted(available) or 'none'}, memory and pids needed"
    if not os.access(parent / "cgroup.subtree_control", os.W_OK):
        return f"{parent} is not delegated to uid {os.geteuid()} (systemd Delegate=yes)"
    wanted = {"memory", "pids"} | ({"cpu"} & available)
    enabled = set(_read(parent / "cgroup.subtree_control").split())
    if not wanted <= enabled:
        if not prepare:
            return f"controllers {sorted(wanted - enabled)} not enabled in {parent}/cgroup.subtree_control"
        try:
            _enable_controllers(parent, wanted - enabled)
        except CgroupError as exc:
            return str(exc)
    return CgroupHost("v2", v2_parent=parent, v2_controllers=frozenset(wanted))


def _enable_controllers(parent: Path, controllers: set[str]) -> None:
    procs = [p for p in _read(parent / "cgroup.procs").split() if p]
    if procs and parent.parent != parent:  # not the root: move our processes into a leaf first
        leaf = parent / "agent"
        leaf.mkdir(exist_ok=True)
        for pid in procs:
            try:
                (leaf / "cgroup.procs").write_text(pid)
            except OSError as exc:
                if exc.errno != 3:  # ESRCH: exited meanwhile
                    raise CgroupError(f"cannot move pid {pid} into {leaf}: {exc.strerror}") from None
    _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(controllers)))


class TaskCgroup(abc.ABC):
    """One execution's cgroup(s)."""

    procs_files: list[Path]

    @abc.abstractmethod
    def oom_kills(self) -> int: ...

    @abc.abstractmethod
    def pids_refused(self) -> int:
        """How many forks the process limit refused."""

    @abc.abstractmethod
    def cpu_seconds(self) -> float | None: ...

    @abc.abstractmethod
    def pids(self) -> list[int]: ...

    def kill_all(self, timeout: float = 5.0) -> None:
        """SIGKILL every process until the cgroup is empty (forks may race the first pass)."""
        deadline = time.monotonic() + timeout
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)

    @abc.abstractmethod
    def remove(self) -> None: ...

    @staticmethod
    def _rmdir(path: Path, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while path.exists():
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:  # EBUSY while the last zombies are reaped
                if time.monotonic() > deadline:
                    raise CgroupError(f"cannot remove cgroup {path}: still busy") from None
                time.sleep(0.02)


class CgroupV2(TaskCgroup):
    def __init__(self, path: Path, controllers: frozenset[str], limits: Limits) -> None:
        self.path = path
        try:
            path.mkdir()
        except OSError as exc:
            raise CgroupError(f"cannot create cgroup {path}: {exc.strerror}") from None
        self.procs_files = [path / "cgroup.procs"]
        try:
            if limits.memory_bytes is not None:
                _write(path / "memory.max", str(limits.memory_bytes))
                if (path / "memory.swap.max").exists():
                    _write(path / "memory.swap.max", "0")
                _write(path / "memory.oom.group", "1")  # an OOM kill takes the whole task down
            if limits.max_processes is not None:
                _write(path / "pids.max", str(limits.max_processes))
        except CgroupError:
            self.remove()
            raise

    def oom_kills(self) -> int:
        return _keyed(_read(self.path / "memory.events")).get("oom_kill", 0)

    def pids_refused(self) -> int:
        return _keyed(_read(self.path / "pids.events")).get("max", 0)

    def cpu_seconds(self) -> float | None:
        usec = _keyed(_read(self.path / "cpu.stat")).get("usage_usec")
        return None if usec is None else usec / 1e6

    def pids(self) -> list[int]:
        return [int(p) for p in _read(self.path / "cgroup.procs").split()]

    def kill_all(self, timeout: float = 5.0) -> None:
        if (self.path / "cgroup.kill").exists():  # Linux 5.14+: atomic, no fork race
            try:
                (self.path / "cgroup.kill").write_text("1")
            except OSError:
                pass
        super().kill_all(timeout)

    def remove(self) -> None:
        if self.path.exists():
            self.kill_all()
            self._rmdir(self.path)


class CgroupV1(TaskCgroup):
    def __init__(self, paths: dict[str, Path], limits: Limits) -> None:
        self.paths: dict[str, Path] = {}
        try:
            for ctrl, path in paths.items():
                try:
                    path.mkdir()
                except OSError as exc:
                    raise CgroupError(f"cannot create cgroup {path}: {exc.strerror}") from None
                self.paths[ctrl] = path
            mem = self.paths.get("memory")
            if mem is not None and limits.memory_bytes is not None:
                _write(mem / "memory.limit_in_bytes", str(limits.memory_bytes))
                if (mem / "memory.memsw.limit_in_bytes").exists():  # no escaping into swap
                    _write(mem / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
            pids = self.paths.get("pids")
            if pids is not None and limits.max_processes is not None:
                _write(pids / "pids.max", str(limits.max_processes))
        except CgroupError:
            self.remove()
            raise
        self.procs_files = [p / "cgroup.procs" for p in self.paths.values()]

    def oom_kills(self) -> int:
        mem = self.paths.get("memory")
        return 0 if mem is None else _keyed(_read(mem / "memory.oom_control")).get("oom_kill", 0)

    def pids_refused(self) -> int:
        pids = self.paths.get("pids")
        return 0 if pids is None else _keyed(_read(pids / "pids.events")).get("max", 0)

    def cpu_seconds(self) -> float | None:
        acct = self.paths.get("cpuacct")
        text = _read(acct / "cpuacct.usage").strip() if acct else ""
        return int(text) / 1e9 if text.isdigit() else None

    def pids(self) -> list[int]:
        seen: set[int] = set()
        for path in self.paths.values():
            seen.update(int(p) for p in _read(path / "cgroup.procs").split())
        return sorted(seen)

    def remove(self) -> None:
        if any(p.exists() for p in self.paths.values()):
            self.kill_all()
        for path in self.paths.values():
            self._rmdir(path)


class _StaleCgroup(TaskCgroup):
    """A leftover cgroup directory (one controller), only to empty and remove it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.procs_files = [path / "cgroup.procs"]

    def oom_kills(self) -> int:
        return 0

    def pids_refused(self) -> int:
        return 0

    def cpu_seconds(self) -> float | None:
        return None

    def pids(self) -> list[int]:
        return [int(p) for p in _read(self.path / "cgroup.procs").split()]

    def remove(self) -> None:
        self.kill_all()
        self._rmdir(self.path, timeout=2.0)

"""The ``bwrap`` driver: a task's program in a bubblewrap sandbox (the default on Linux).

Exec chain, each step replacing the previous one (same pid, nothing forked in between)::

    sh (join the task cgroup)  ->  prlimit (rlimits)  ->  setpriv (drop to the sandbox uid, root only)
      ->  bwrap (fresh user/pid/ipc/uts/net/mount/cgroup namespaces, seccomp)  ->  the program

Inside: a tmpfs root with read-only system directories, a curated read-only /etc (no agent config,
a synthesized passwd: :mod:`worker.execution.etc`), read-only program/inputs, writable scratch (cwd) and output, a size-capped
private /tmp, a fresh /proc and minimal /dev, no network unless the task opted in (see
:mod:`worker.execution.netfilter`), uid/gid 65534, no capabilities, no_new_privs, a new session (no
controlling tty). The pid namespace dies with its init, so nothing the program started survives it.
What is really enforced on this host is listed by :meth:`BwrapDriver.enforced_limits`.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from worker.errors import ConfigError, TaskRejected
from worker.execution import cgroups, netfilter, scratchfs, seccomp
from worker.execution import limits as rl
from worker.execution.base import (
    DriverUnavailable,
    Execution,
    ExecutionDriver,
    ExecutionResult,
    ExecutionSpec,
)
from worker.execution.etc import EtcSnapshot
from worker.protocol import KillReason

log = logging.getLogger(__name__)

# Where the task's directories appear inside: the agent mounts program/ and inputs/ at
# <root>/program and <root>/inputs, and programs rely on ../output from their working directory.
SANDBOX_ROOT = "/task"
SANDBOX_UID = 65534
SANDBOX_GID = 65534
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
GPU_NODE_RE = re.compile(r"^nvidia\d+$")
GPU_SHARED_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
_JOIN_CGROUP = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
MONITOR_INTERVAL_S = 0.05
TMPFS_FULL_BELOW_BYTES = 64 * 1024  # tmpfs hands out every page: full means (almost) nothing left


def gpu_device_nodes(count: int, dev: Path = Path("/dev")) -> list[str]:
    """The device nodes that give a sandbox ``count`` NVIDIA GPUs: the first ``count`` /dev/nvidiaN
    plus the shared control nodes and /dev/nvidia-caps/*. Raises when the host has fewer GPUs."""
    if count <= 0:
        return []
    gpus = sorted((p for p in dev.glob("nvidia*") if GPU_NODE_RE.match(p.name)),
                  key=lambda p: int(p.name[len("nvidia"):]))
    if len(gpus) < count:
        raise TaskRejected(f"the task asks for {count} GPU(s) but this host has {len(gpus)}")
    nodes = [str(p) for p in gpus[:count]]
    nodes += [str(dev / n) for n in GPU_SHARED_NODES if (dev / n).exists()]
    caps = dev / "nvidia-caps"
    if caps.is_dir():
        nodes += sorted(str(p) for p in caps.iterdir())
    return nodes


class BwrapDriver(ExecutionDriver):
    name = "bwrap"

    def __init__(
        self,
        *,
        bwrap: str = "/usr/bin/bwrap",
        sandbox_uid: int = SANDBOX_UID,
        sandbox_gid: int = SANDBOX_GID,
        disk: str = "auto",  # "loop" | "tmpfs" | "none" | "auto" (loop when possible, else tmpfs)
        use_cgroups: bool = True,
        use_seccomp: bool = True,
        extra_ro_paths: tuple[str, ...] | list[str] = (),  # e.g. /opt/conda for competition images
        network_blocked_cidrs: tuple[str, ...] | list[str] = (),  # beyond loopback/IMDS, e.g. the VNet
        dev_root: str | Path = "/dev",
        disk_dir: str | Path | None = None,  # default: <work_dir>/.sandbox-disks (next to the task dirs)
        **_ignored: Any,  # options meant for other drivers (image, ...)
    ) -> None:
        if disk not in ("auto", "loop", "tmpfs", "none"):
            raise ConfigError(f"disk must be auto, loop, tmpfs or none, not {disk!r}")
        self.bwrap = bwrap
        self.is_root = os.geteuid() == 0
        # Only root can switch uid; otherwise the sandbox runs as the agent's uid (mapped to 65534).
        self.host_uid = sandbox_uid if self.is_root else os.geteuid()
        self.host_gid = sandbox_gid if self.is_root else os.getegid()
        loop_problem = scratchfs.unavailable_reason()
        self.disk = ("loop" if loop_problem is None else "tmpfs") if disk == "auto" else disk
        if self.disk == "loop" and loop_problem:
            raise DriverUnavailable(f"disk=loop is not possible here: {loop_problem}")
        self.cgroup_host = cgroups.detect() if use_cgroups else cgroups.CgroupHost("none", why="disabled")
        self.cgroup_host.sweep_stale()  # a crashed agent's leftovers
        self.use_seccomp = use_seccomp and seccomp.supported()
        self.extra_ro_paths = tuple(extra_ro_paths)
        self.network_blocked_cidrs = tuple(network_blocked_cidrs)
        self.dev_root = Path(dev_root)
        self._disk_dir = Path(disk_dir) if disk_dir is not None else None
        self.disks = scratchfs.DiskPool()
        self.etc = EtcSnapshot(f"{SANDBOX_ROOT}/scratch", SANDBOX_UID, SANDBOX_GID,
                               base=Path("/run/pool-sandbox") if self.is_root and Path("/run").is_dir() else None)
        atexit.register(self.etc.close)
        self._lock = threading.Lock()

    # -- facts -------------------------------------------------------------------------------------
    def check_available(self) -> None:
        if not Path(self.bwrap).exists():
            raise DriverUnavailable(f"bubblewrap not found at {self.bwrap} (apt-get install bubblewrap)")
        if self.is_root and not Path("/usr/bin/setpriv").exists():
            raise DriverUnavailable("setpriv missing (util-linux): cannot drop to the sandbox uid")
        if not Path(rl.PRLIMIT).exists():
            raise DriverUnavailable(f"{rl.PRLIMIT} missing (util-linux)")
        proc = subprocess.run([self.bwrap, "--unshare-all", "--ro-bind", "/", "/", "--", "/bin/true"],
                              check=False, capture_output=True, text=True, **self._drop_kwargs())
        if proc.returncode != 0:
            raise DriverUnavailable(
                f"bubblewrap cannot create namespaces here: {proc.stderr.strip()} "
                "(needs unprivileged user namespaces: sysctl kernel.unprivileged_userns_clone=1; on "
                "Ubuntu 24.04 also an AppArmor profile allowing userns for /usr/bin/bwrap)"
            )

    def _drop_kwargs(self) -> dict[str, Any]:
        return {"user": self.host_uid, "group": self.host_gid, "extra_groups": []} if self.is_root else {}

    def enforced_limits(self) -> dict[str, str]:
        out = {
            "isolation": "bubblewrap: user, pid, ipc, uts, mount, cgroup namespaces; tmpfs root",
            "uid": f"host uid {self.host_uid}" + ("" if self.is_root else " (the agent's own: not root)")
                   + ", 65534 inside; no capabilities; no_new_privs",
            "filesystem": "system dirs and inputs read-only; scratch/output writable; agent files hidden",
            "network": "none (own network namespace); opt-in: host network minus loopback/link-local "
                       + ("(nftables owner match)" if self.is_root else "(NOT possible: agent is not root)"),
            "wall_time": "agent supervisor kills the pid namespace",
            "output": "agent supervisor caps stdout/stderr",
            "seccomp": "deny list (ptrace, mount, bpf, io_uring, TIOCSTI...)" if self.use_seccomp else "not used",
            "tmp": "private tmpfs, size-capped (counts toward memory)",
        }
        out.update(rl.describe_rlimits())
        cg = self.cgroup_host.describe()
        out["memory"] = cg.get("memory", "rlimit RLIMIT_AS (address space, last resort)")
        out["processes"] = cg.get("processes", f"rlimit RLIMIT_NPROC for uid {self.host_uid} (last resort)")
        if "cpu_time_total" in cg:
            out["cpu_time"] += f"; total: {cg['cpu_time_total']}"
        out["disk"] = {
            "loop": "loop-mounted ext4 of scratch_bytes holding scratch+output (ENOSPC, then killed: disk)",
            "tmpfs": "scratch is a size-capped tmpfs (RAM, counts toward memory; full: killed, disk); "
                     "output/ only RLIMIT_FSIZE",
            "none": "not enforced (RLIMIT_FSIZE per file only)",
        }[self.disk]
        if self.cgroup_host.version == "none":
            out["cgroups"] = f"none usable: {self.cgroup_host.why}"
        return out

    def disk_dir(self, spec: ExecutionSpec) -> Path:
        """Where the loop disks' images and mount points live: outside every task directory (the
        agent deletes those, and must never descend into a mounted disk)."""
        return self._disk_dir or spec.scratch_dir.parent.parent / ".sandbox-disks"

    # -- start -------------------------------------------------------------------------------------
    def _ensure_network_guard(self) -> None:
        """(Re)install the nftables rules before every task with network: idempotent and atomic, and
        a flushed ruleset is caught before the task can use it."""
        if not self.is_root:
            raise TaskRejected("this task asks for network, but the agent is not root, so the "
                             "sandbox cannot be kept off the host's loopback services: refused")
        with self._lock:
            try:
                netfilter.install(self.host_uid, list(self.network_blocked_cidrs))
            except (netfilter.NetfilterError, ValueError) as exc:
                raise TaskRejected(f"this task asks for network but the guard rules failed: {exc}") from None

    def start(self, spec: ExecutionSpec) -> BwrapExecution:
        if spec.network:
            self._ensure_network_guard()
        devices = gpu_device_nodes(spec.gpus, self.dev_root)
        return BwrapExecution(self, spec, devices)


class BwrapExecution(Execution):
    def __init__(self, driver: BwrapDriver, spec: ExecutionSpec, gpu_nodes: list[str]) -> None:
        self.driver = driver
        self.spec = spec
        self._reason: KillReason | None = None
        self._detail: str | None = None
        self._result: ExecutionResult | None = None
        self._fds: list[int] = []
        self.cgroup: cgroups.TaskCgroup | None = None
        self.disk: scratchfs.ScratchDisk | None = None
        self._info_fd: int | None = None
        self._tmpfs_scratch: Path | None = None
        try:
            self._prepare()
            argv = self._argv(gpu_nodes)
            self.started = time.monotonic()
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=self._fds, env={"PATH": DEFAULT_PATH}, close_fds=True,
            )
        except BaseException:
            self._cleanup()
            raise
        for fd in self._fds:  # the child holds its own copies
            os.close(fd)
        self._fds = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.stdout = self.proc.stdout
        self.stderr = self.proc.stderr
        self._exited = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name=f"bwrap-monitor-{spec.task_id}", daemon=True)
        self._monitor.start()

    # -- setup -------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        d, spec = self.driver, self.spec
        lim = spec.limits
        name = cgroups.task_cgroup_name(spec.task_id, uuid.uuid4().hex[:8])
        self.cgroup = d.cgroup_host.create(name, lim)
        if d.disk == "loop" and lim.scratch_bytes is not None:
            self.disk = d.disks.acquire(d.disk_dir(spec), lim.scratch_bytes, d.host_uid, d.host_gid)
        if d.is_root:
            for path in (spec.scratch_dir, spec.output_dir):
                path.mkdir(parents=True, exist_ok=True)
                os.chown(path, d.host_uid, d.host_gid)

    def _path_fd(self, path: Path) -> int:
        if path.is_symlink():
            raise TaskRejected(f"refusing to mount a symlink into the sandbox: {path}")
        if self.driver.is_root:
            _check_traversable(path, self.driver.host_uid)
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        self._fds.append(fd)
        return fd

    def _argv(self, gpu_nodes: list[str]) -> list[str]:
        d, spec = self.driver, self.spec
        lim = spec.limits
        chain: list[str] = []
        if self.cgroup is not None:
            chain += ["/bin/sh", "-c", _JOIN_CGROUP, "sh", *map(str, self.cgroup.procs_files), "--"]
        kinds = d.cgroup_host.describe()
        chain += rl.prlimit_argv(rl.rlimits(lim, memory_in_cgroup=self.cgroup is not None and "memory" in kinds,
                                            processes_in_cgroup=self.cgroup is not None and "processes" in kinds))
        if d.is_root:
            chain += ["/usr/bin/setpriv", f"--reuid={d.host_uid}", f"--regid={d.host_gid}", "--clear-groups",
                      "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]

        b = [d.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID),
             "--hostname", "sandbox", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
             "--clearenv"]
        if spec.network:
            b.append("--share-net")
        for path in (*SYSTEM_PATHS, *d.extra_ro_paths):
            p = Path(path)
            if p.is_symlink():
                b += ["--symlink", os.readlink(p), path]
            elif p.exists():
                b += ["--ro-bind", path, path]
        b += ["--ro-bind", str(d.etc.path(spec.network)), "/etc"]  # curated copy: no agent config
        b += ["--proc", "/proc", "--dev", "/dev"]
        tmp_size = str(lim.tmp_bytes) if lim.tmp_bytes is not None else None
        for tmp in ("/tmp", "/dev/shm"):
            b += (["--size", tmp_size] if tmp_size else []) + ["--tmpfs", tmp]
        for node in gpu_nodes:
            b += ["--dev-bind", node, node]
        if gpu_nodes and Path("/sys").exists():
            b += ["--ro-bind", "/sys", "/sys"]  # nvidia-smi and CUDA read PCI topology
        for mount in spec.mounts:
            flag = "--ro-bind-fd" if mount.read_only else "--bind-fd"
            b += [flag, str(self._path_fd(mount.source)), mount.target]
        scratch, output = f"{SANDBOX_ROOT}/scratch", f"{SANDBOX_ROOT}/output"
        if self.disk is not None:
            b += ["--bind-fd", str(self._path_fd(self.disk.path("scratch"))), scratch,
                  "--bind-fd", str(self._path_fd(self.disk.path("output"))), output]
        else:
            if d.disk == "tmpfs" and lim.scratch_bytes is not None:
                b += ["--size", str(lim.scratch_bytes), "--perms", "0777", "--tmpfs", scratch]
                # bwrap reports the sandbox's pid here: its /proc/<pid>/root shows the tmpfs,
                # so the monitor can tell "scratch full" from any other failure.
                info_r, info_w = os.pipe()
                self._info_fd = info_r
                self._fds.append(info_w)
                b += ["--info-fd", str(info_w)]
            else:
                b += ["--bind-fd", str(self._path_fd(spec.scratch_dir)), scratch]
            b += ["--bind-fd", str(self._path_fd(spec.output_dir)), output]
        # The tmpfs root and /dev that bwrap built: read-only from here on (writes there would go
        # to RAM outside every cap); /tmp, /dev/shm, scratch and output are separate mounts.
        b += ["--remount-ro", "/", "--remount-ro", "/dev"]
        env = {"PATH": DEFAULT_PATH, "HOME": scratch, "TMPDIR": "/tmp", "LANG": "C.UTF-8",
               "USER": "sandbox", "LOGNAME": "sandbox",
               "PYTHONUNBUFFERED": "1", "POOL_TASK_ID": spec.task_id, **spec.env}  # as the process driver
        for key, value in env.items():
            b += ["--setenv", key, value]
        if d.use_seccomp:
            fd = seccomp.filter_fd()
            self._fds.append(fd)
            b += ["--seccomp", str(fd)]
        b += ["--chdir", scratch, "--", *spec.argv]
        return chain + b

    # -- running -----------------------------------------------------------------------------------
    def _read_info(self) -> None:
        """bwrap's --info-fd JSON ({"child-pid": N, ...}), written once the sandbox is set up."""
        fd, self._info_fd = self._info_fd, None
        if fd is None:
            return
        data = b""
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and b"}" not in data:
                ready, _, _ = select.select([fd], [], [], 0.1)
                if ready:
                    chunk = os.read(fd, 4096)
                    if not chunk:
                        break
                    data += chunk
        finally:
            os.close(fd)
        try:
            pid = int(json.loads(data.decode())["child-pid"])
        except (ValueError, KeyError, TypeError):
            return
        self._tmpfs_scratch = Path(f"/proc/{pid}/root{SANDBOX_ROOT}/scratch")

    def _watch(self) -> None:
        """Turn the limit counters into kills with a reason, as soon as they move."""
        lim = self.spec.limits
        self._read_info()
        while not self._exited.wait(MONITOR_INTERVAL_S) and self.proc.poll() is None:
            reason = self._limit_exceeded(lim)
            if reason is not None:
                self._kill(*reason)
                return

    def _limit_exceeded(self, lim: Any) -> tuple[KillReason, str] | None:
        cg = self.cgroup
        if cg is not None:
            if (n := cg.oom_kills()) > 0:
                return KillReason.MEMORY, f"memory limit {_mib(lim.memory_bytes)} exceeded (oom_kill={n})"
            if (n := cg.pids_refused()) > 0:
                return KillReason.PROCESSES, f"process limit {lim.max_processes} reached ({n} forks refused)"
            if lim.cpu_time_s is not None and (cpu := cg.cpu_seconds()) is not None and cpu >= lim.cpu_time_s:
                return KillReason.TIME, f"cpu time limit {lim.cpu_time_s:g}s exceeded ({cpu:.1f}s used)"
        if self.disk is not None and self.disk.is_full():
            return KillReason.DISK, f"scratch+output disk limit {_mib(lim.scratch_bytes)} reached"
        if self._tmpfs_scratch is not None and _tmpfs_full(self._tmpfs_scratch):
            return KillReason.DISK, f"scratch limit {_mib(lim.scratch_bytes)} reached (tmpfs)"
        return None

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self, reason: KillReason) -> None:
        self._kill(reason, None)

    def _kill(self, reason: KillReason, detail: str | None) -> None:
        if self._reason is None:
            self._reason, self._detail = reason, detail
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGKILL)  # bwrap dies -> its pid namespace dies
            except ProcessLookupError:
                pass
        if self.cgroup is not None:
            self.cgroup.kill_all(timeout=2.0)

    def result(self) -> ExecutionResult:
        if self._result is not None:
            return self._result
        rc = self.proc.wait()
        duration = time.monotonic() - self.started
        self._exited.set()
        self._monitor.join(timeout=5.0)
        reason, detail = self._reason, self._detail
        if reason is None:  # the program ended by itself: did a limit end it?
            found = self._limit_exceeded(self.spec.limits)
            if found is None and rc > 128:
                found_reason, found_detail = rl.reason_from_signal(rc - 128)
                found = (found_reason, found_detail) if found_reason else None
            if found is not None and rc != 0:
                reason, detail = found
        exit_code: int | None = rc
        sig: int | None = None
        if rc < 0:  # bwrap itself was killed (by kill())
            exit_code, sig = None, -rc
        elif rc > 128:  # bwrap reports a program killed by signal N as 128+N, like a shell
            sig = rc - 128
        try:
            if self.disk is not None:
                scratchfs.move_contents(self.disk.path("output"), self.spec.output_dir)
        except OSError as exc:  # e.g. the host disk is full: report it, never lose the result
            log.error("task %s: copying output/ off its disk failed: %s", self.spec.task_id, exc)
            detail = f"{detail + '; ' if detail else ''}output/ could not be copied off the task disk: {exc}"
        finally:
            self._cleanup()
        self._result = ExecutionResult(exit_code=exit_code, signal=sig, kill_reason=reason,
                                       duration_s=duration, detail=detail)
        return self._result

    def _cleanup(self) -> None:
        if self._info_fd is not None:  # start failed before the monitor took it
            os.close(self._info_fd)
            self._info_fd = None
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []
        if self.cgroup is not None:
            try:
                self.cgroup.remove()
            except cgroups.CgroupError:
                pass  # a leftover empty cgroup is harmless; the next detect() does not depend on it
        if self.disk is not None:
            self.driver.disks.release(self.disk, self.driver.host_uid, self.driver.host_gid)
            self.disk = None


def _check_traversable(path: Path, uid: int) -> None:
    """bwrap runs as the sandbox uid and resolves bind sources by path: every ancestor must let it
    through (o+x is enough; listing is not needed)."""
    for parent in [*reversed(path.parents)]:
        st = parent.stat()
        if st.st_uid == uid or st.st_mode & 0o001:
            continue
        raise PermissionError(
            f"{path} cannot be mounted into the sandbox: {parent} is not traversable by uid {uid} "
            "(make the agent's work directory 0711)"
        )


def _tmpfs_full(path: Path) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:  # the sandbox is gone
        return False
    return st.f_bavail * st.f_frsize < TMPFS_FULL_BELOW_BYTES


def _mib(value: int | None) -> str:
    return "unset" if value is None else f"{value / 1024**2:g} MiB"

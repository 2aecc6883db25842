"""The ``docker`` driver: the task runs in a container of the competition's image (docker or podman CLI).

No network (``--network none``) unless the task opted in, all capabilities dropped,
no-new-privileges, read-only root filesystem, private size-capped /tmp, unprivileged user, memory
(swap included), process, open-file, file-size and CPU-time limits enforced by the engine's cgroups
and ulimits; program/ and inputs/ bound read-only at /task/program and /task/inputs, scratch/ and
output/ read-write at /task/scratch (cwd) and /task/output — the same layout as the bwrap driver.
The container is not started with ``--rm``: after it stops, ``inspect`` tells whether the kernel
OOM-killed it, then it is removed.

Untested against a running engine here (this machine has the docker client only); the command line
it builds is unit-tested, and the integration test skips with the reason when no engine answers.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
import uuid
from typing import Any

from worker.errors import TaskRejected
from worker.execution.base import (
    DriverUnavailable,
    Execution,
    ExecutionDriver,
    ExecutionResult,
    ExecutionSpec,
)
from worker.execution.guard import task_guard
from worker.protocol import KillReason

SANDBOX_ROOT = "/task"


def container_name(spec: ExecutionSpec) -> str:
    return f"pool-{spec.task_id}-{uuid.uuid4().hex[:8]}".lower()


def build_run_command(spec: ExecutionSpec, name: str, *, engine: str = "docker", image: str | None = None,
                      user: str = "65534:65534", network: str = "bridge") -> list[str]:
    """The ``docker run`` command line for one execution (pure: unit-tested)."""
    image = spec.image or image
    if not image:
        raise TaskRejected("the docker driver needs an image (execution.image in the agent config, or the task's)")
    lim = spec.limits
    if image.startswith("-") or any(c.isspace() for c in image):
        raise TaskRejected(f"not an image reference: {image!r}")
    cmd = [engine, "run", "--name", name, "--init",
           "--label", f"pool.task={spec.task_id}",
           "--network", network if spec.network else "none",
           "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
           "--read-only", "--user", user, "--ipc", "private",
           "--tmpfs", f"/tmp:rw,nosuid,nodev,noexec,size={lim.tmp_bytes or 64 * 1024**2}",
           "--ulimit", "core=0:0"]
    if lim.memory_bytes is not None:
        cmd += ["--memory", str(lim.memory_bytes), "--memory-swap", str(lim.memory_bytes)]
    if lim.max_processes is not None:
        cmd += ["--pids-limit", str(lim.max_processes)]
    if lim.open_files is not None:
        cmd += ["--ulimit", f"nofile={lim.open_files}:{lim.open_files}"]
    if lim.file_size_bytes is not None:
        cmd += ["--ulimit", f"fsize={lim.file_size_bytes}:{lim.file_size_bytes}"]
    if lim.cpu_time_s is not None:
        cpu = max(1, math.ceil(lim.cpu_time_s))
        cmd += ["--ulimit", f"cpu={cpu}:{cpu + 1}"]
    if spec.gpus:
        cmd += ["--gpus", str(spec.gpus)]
    for mount in spec.mounts:
        cmd += ["--mount", f"type=bind,source={mount.source},target={mount.target}"
                + (",readonly" if mount.read_only else "")]
    if lim.scratch_bytes is not None:
        # The engine cannot cap a bind mount: scratch becomes a size-capped tmpfs (counts toward memory).
        cmd += ["--mount", f"type=tmpfs,target={SANDBOX_ROOT}/scratch,tmpfs-size={lim.scratch_bytes},tmpfs-mode=1777"]
    else:
        cmd += ["--mount", f"type=bind,source={spec.scratch_dir},target={SANDBOX_ROOT}/scratch"]
    cmd += ["--mount", f"type=bind,source={spec.output_dir},target={SANDBOX_ROOT}/output",
            "--workdir", f"{SANDBOX_ROOT}/scratch"]
    for key, value in {"HOME": f"{SANDBOX_ROOT}/scratch", "TMPDIR": "/tmp", **spec.env}.items():
        cmd += ["--env", f"{key}={value}"]
    cmd += [image, *spec.argv]  # `run` stops parsing its own flags at the image
    return cmd


class DockerDriver(ExecutionDriver):
    name = "docker"

    def __init__(self, *, engine: str = "docker", image: str | None = None, user: str = "65534:65534",
                 network: str = "bridge", **_ignored: Any) -> None:
        self.engine = engine
        self.image = image
        self.user = user
        self.network = network

    def _cli(self) -> str:
        path = shutil.which(self.engine)
        if path is None:
            raise DriverUnavailable(f"{self.engine} CLI not found (install docker-ce-cli or podman)")
        return path

    def check_available(self) -> None:
        cli = self._cli()
        proc = subprocess.run([cli, "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True,
                              timeout=30, check=False)
        if proc.returncode != 0 or not proc.stdout.strip():
            detail = (proc.stderr.strip().splitlines() or ["no answer"])[-1]
            raise DriverUnavailable(f"no {self.engine} engine reachable: {detail}")

    def enforced_limits(self) -> dict[str, str]:
        engine = f"{self.engine} engine"
        return {
            "isolation": f"container ({engine}): own namespaces, read-only root, user {self.user}",
            "memory": f"{engine} cgroup --memory (swap included)",
            "processes": f"{engine} cgroup --pids-limit",
            "cpu_time": "ulimit RLIMIT_CPU (per process)",
            "file_size": "ulimit RLIMIT_FSIZE",
            "open_files": "ulimit RLIMIT_NOFILE",
            "disk": "scratch is a size-capped tmpfs (counts toward memory); output/ only RLIMIT_FSIZE",
            "network": f"none; opt-in: engine network {self.network!r} (block the host and IMDS in DOCKER-USER)",
            "capabilities": "all dropped, no-new-privileges",
            "wall_time": "agent supervisor (docker kill)",
            "output": "agent supervisor caps stdout/stderr",
        }

    def start(self, spec: ExecutionSpec) -> DockerExecution:
        name = container_name(spec)
        if hasattr(os, "geteuid") and os.geteuid() == 0 and ":" in self.user:
            uid, gid = (int(x) for x in self.user.split(":", 1))
            for path in (spec.scratch_dir, spec.output_dir):  # the container user must write there
                os.chown(path, uid, gid)
        cmd = build_run_command(spec, name, engine=self._cli(), image=self.image, user=self.user,
                                network=self.network)
        return DockerExecution(self, cmd, name)


class DockerExecution(Execution):
    def __init__(self, driver: DockerDriver, cmd: list[str], name: str) -> None:
        self.driver = driver
        self.name = name
        self.cli = cmd[0]
        self._reason: KillReason | None = None
        self._result: ExecutionResult | None = None
        # The container belongs to the engine, not to this process: if the agent dies (even SIGKILL),
        # its guard process removes the container (worker/execution/guard.py).
        self._guard = task_guard() if os.name == "posix" else None
        if self._guard is not None:
            self._guard.watch(name, cleanup=[self.cli, "rm", "-f", name])
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.stdout, self.stderr = self.proc.stdout, self.proc.stderr

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self, reason: KillReason) -> None:
        if self._reason is None:
            self._reason = reason
        subprocess.run([self.cli, "kill", self.name], capture_output=True, timeout=60, check=False)

    def _inspect(self) -> tuple[bool, int | None]:
        proc = subprocess.run([self.cli, "inspect", "--format", "{{.State.OOMKilled}} {{.State.ExitCode}}", self.name],
                              capture_output=True, text=True, timeout=60, check=False)
        parts = proc.stdout.split()
        if proc.returncode != 0 or len(parts) != 2:
            return False, None
        return parts[0] == "true", int(parts[1])

    def result(self) -> ExecutionResult:
        if self._result is not None:
            return self._result
        rc = self.proc.wait()
        duration = time.monotonic() - self.started
        oom, code = self._inspect()
        subprocess.run([self.cli, "rm", "-f", self.name], capture_output=True, timeout=60, check=False)
        if self._guard is not None:
            self._guard.release(self.name)
        reason, detail = self._reason, None
        if reason is None and oom:
            reason, detail = KillReason.MEMORY, "the container was OOM-killed"
        exit_code = code if code is not None else rc
        sig = exit_code - 128 if exit_code is not None and exit_code > 128 else None
        self._result = ExecutionResult(exit_code=exit_code, signal=sig, kill_reason=reason,
                                       duration_s=duration, detail=detail)
        return self._result

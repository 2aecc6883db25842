"""Helpers for the sandbox tests: task directories laid out like the agent's, and a run helper that
drives an execution through the real supervisor (pipes drained, wall clock, output cap)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from worker.execution.base import Execution, ExecutionResult, ExecutionSpec, Limits, Mount
from worker.execution.supervisor import Supervisor

HAVE_BWRAP = sys.platform == "linux" and Path("/usr/bin/bwrap").exists()
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

needs_bwrap = pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap not installed (apt-get install bubblewrap)")
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (cgroups, loop mounts, uid switch)")


@dataclass
class TaskDirs:
    root: Path
    task_id: str

    @property
    def program(self) -> Path:
        return self.root / "program"

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def scratch(self) -> Path:
        return self.root / "scratch"

    @property
    def output(self) -> Path:
        return self.root / "output"

    def spec(self, argv: list[str], **limits: object) -> ExecutionSpec:
        base = {"wall_time_s": 20.0, "memory_bytes": 256 * 1024**2, "max_processes": 64,
                "scratch_bytes": 64 * 1024**2, "tmp_bytes": 16 * 1024**2, "open_files": 256,
                "file_size_bytes": 256 * 1024**2}
        base.update(limits)  # type: ignore[arg-type]
        network = bool(base.pop("network", False))
        env = base.pop("env", {})  # type: ignore[assignment]
        mounts = [Mount(self.program, "/task/program"), Mount(self.inputs, "/task/inputs")]  # as the agent does
        return ExecutionSpec(task_id=self.task_id, argv=argv, scratch_dir=self.scratch,
                             output_dir=self.output, mounts=mounts, limits=Limits(**base),  # type: ignore[arg-type]
                             network=network, env=env)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def bwrap_driver():
    """One bwrap driver per module, its pooled loop disks outside every test's work directory."""
    from worker.execution.bwrap import BwrapDriver

    if not HAVE_BWRAP:
        pytest.skip("bubblewrap not installed")
    disk_dir = Path(tempfile.mkdtemp(prefix="pool-sandbox-disks-", dir="/var/tmp"))
    driver = BwrapDriver(disk_dir=disk_dir)
    driver.check_available()
    yield driver
    driver.disks.close()
    shutil.rmtree(disk_dir, ignore_errors=True)


@pytest.fixture
def work_root() -> Iterator[Path]:
    """A work directory like the agent's: traversable (0711) so the sandbox uid can reach bind sources."""
    # Not under /tmp: the sandbox has its own /tmp, which would blur "where did that write go".
    root = Path(tempfile.mkdtemp(prefix="pool-sandbox-test-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def make_task(work_root: Path):
    counter = iter(range(1000))

    def make(program: str = "", name: str | None = None) -> TaskDirs:
        task_id = name or f"t{next(counter)}"
        dirs = TaskDirs(work_root / task_id, task_id)
        for sub in ("program", "inputs", "scratch", "output"):
            (dirs.root / sub).mkdir(parents=True)
        if program:
            (dirs.program / "main.sh").write_text(program)
        return dirs

    return make


@dataclass
class Ran:
    result: ExecutionResult
    stdout: bytes
    stderr: bytes
    output_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")


def supervise(execution: Execution, wall_time_s: float, max_output_bytes: int | None = 1024**2,
              keep: int = 64 * 1024) -> Ran:
    """Run through the real supervisor; keep only the first ``keep`` bytes of each stream."""
    kept: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}

    def on_output(name: str, chunk: bytes) -> None:
        room = keep - len(kept[name])
        if room > 0:
            kept[name] += chunk[:room]

    sup = Supervisor(execution, wall_time_s=wall_time_s, on_output=on_output, max_output_bytes=max_output_bytes)
    result = sup.run()
    return Ran(result, bytes(kept["stdout"]), bytes(kept["stderr"]), dict(sup.output_bytes))


def run_spec(driver, spec: ExecutionSpec, max_output_bytes: int | None = 1024**2) -> Ran:
    return supervise(driver.start(spec), spec.limits.wall_time_s, max_output_bytes)

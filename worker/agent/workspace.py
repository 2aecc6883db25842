"""The per-attempt task directory under ``work_dir`` and how bundles are placed into it.

::

    <work_dir>/<task_id>-<attempt>/
        program/        the program bundle (read-only)
        inputs/<name>   input bundles: a directory per archive, a file per single-file bundle (read-only)
        scratch/        the program's working directory (read-write)
        output/         uploaded as output.tar.gz when the program ends (read-write)

From the program's working directory the layout is the same under every driver:
``../program``, ``../inputs/<name>``, ``../output``.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from worker.agent.cache import InputCache
from worker.agent.errors import TaskRejected
from worker.execution.archive import ArchiveError, extract
from worker.execution.base import Mount
from worker.protocol import Bundle, Task

SANDBOX_ROOT = "/task"  # where drivers with a private filesystem view mount the directories


class Workspace:
    def __init__(self, work_dir: Path, task: Task) -> None:
        self.root = Path(work_dir) / f"{task.task_id}-{task.attempt}"
        self.program = self.root / "program"
        self.inputs = self.root / "inputs"
        self.scratch = self.root / "scratch"
        self.output = self.root / "output"

    def create(self) -> None:
        remove_tree(self.root)  # leftovers of an earlier delivery of this attempt
        self.root.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(self.root)
        for directory in (self.program, self.inputs, self.scratch, self.output):
            os.mkdir(directory)

    def place(self, cache: InputCache, bundle: Bundle, dest: Path, max_bytes: int) -> None:
        """Put a bundle at ``dest`` (archives extracted safely, files copied out of the cache)."""
        with cache.open(bundle) as cached:
            if bundle.kind == "file":
                dest.parent.mkdir(parents=True, exist_ok=True)
                if cached.stat().st_size > max_bytes:
                    raise TaskRejected(f"input {bundle.name} is larger than {max_bytes} bytes")
                shutil.copyfile(cached, dest)
                return
            try:
                extract(cached, dest, max_bytes=max_bytes)
            except ArchiveError as exc:
                raise TaskRejected(f"bundle {bundle.name}: {exc}") from None

    def prepare(self, task: Task, cache: InputCache, max_bytes: int) -> None:
        if task.program is not None:
            target = self.program / task.program.name if task.program.kind == "file" else self.program
            self.place(cache, task.program, target, max_bytes)
        for bundle in task.inputs:
            self.place(cache, bundle, self.inputs / bundle.name, max_bytes)
        for directory in (self.program, self.inputs):
            make_read_only(directory)

    def mounts(self) -> list[Mount]:
        return [
            Mount(self.program, f"{SANDBOX_ROOT}/program", read_only=True),
            Mount(self.inputs, f"{SANDBOX_ROOT}/inputs", read_only=True),
        ]

    def remove(self) -> None:
        """The usual end leaves the four directories empty: five ``rmdir`` calls remove it, a
        fraction of a full tree walk's cost; whatever is left in it goes the long way."""
        for directory in (self.program, self.inputs, self.scratch, self.output, self.root):
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass
            except OSError:  # not empty (or not removable as it is): the full walk handles it
                remove_tree(directory)


def make_read_only(root: Path) -> None:
    """No write bits, read (and directory search) for everyone: a sandbox may run the program under
    another uid. Permissions are all the process driver has; sandboxed drivers also mount these
    read-only."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o555)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, (stat.S_IMODE(os.lstat(path).st_mode) & ~0o222) | 0o444)
    os.chmod(root, 0o555)


def remove_tree(root: Path) -> None:
    if not os.path.lexists(root):
        return

    def writable_and_retry(func, path, _exc):  # read-only dirs (program/) cannot be emptied otherwise
        os.chmod(os.path.dirname(path), 0o700)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
        func(path)

    shutil.rmtree(root, onerror=writable_and_retry)

"""A size-capped, disk-backed filesystem for a task's writable directories.

A sparse file formatted as ext4 (no journal, lazy init: ~20 ms for 10 GiB) and loop-mounted
``nosuid,nodev`` holds ``scratch/`` and ``output/``; writing past its size fails with ENOSPC instead of
filling the host's disk. Needs root (mount) and ``mkfs.ext4``; without them the bwrap driver falls
back to a size-capped tmpfs (RAM-backed, counted in the memory cgroup). Watching ``du`` was rejected:
it is racy and a fast writer fills the disk between two looks.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path

MKFS = "/usr/sbin/mkfs.ext4"
# Below this much free space the filesystem counts as full: ext4 refuses writes (ENOSPC) while some
# free blocks remain, reserved for delayed-allocation metadata (~600 KiB measured on a 32 MiB disk).
FULL_BELOW_MIN_BYTES = 1024 * 1024
FULL_BELOW_FRACTION = 1 / 256


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "loop mounts need root"
    if not Path(MKFS).exists() and not shutil.which("mkfs.ext4"):
        return "mkfs.ext4 missing (apt-get install e2fsprogs)"
    if not Path("/dev/loop-control").exists():
        return "no /dev/loop-control (loop devices unavailable)"
    return None


class ScratchDisk:
    def __init__(self, base: Path, size_bytes: int) -> None:
        self.base = base
        self.image = base / "disk.img"
        self.mountpoint = base / "fs"
        self.size_bytes = size_bytes
        self.mounted = False

    def create(self, uid: int, gid: int, subdirs: tuple[str, ...] = ("scratch", "output")) -> None:
        # 0711: bwrap runs as the sandbox uid and must traverse to the bind sources, not list them
        self.base.mkdir(mode=0o711, parents=True, exist_ok=True)
        os.chmod(self.base, 0o711)
        self.mountpoint.mkdir(exist_ok=True)
        fd = os.open(self.image, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, self.size_bytes)
        finally:
            os.close(fd)
        self._run([shutil.which("mkfs.ext4") or MKFS, "-q", "-F", "-O", "^has_journal", "-m", "0",
                   "-E", "lazy_itable_init=1,nodiscard", str(self.image)])
        self._run(["mount", "-o", "loop,nosuid,nodev,noatime", str(self.image), str(self.mountpoint)])
        self.mounted = True
        (self.mountpoint / "lost+found").rmdir()
        self._make_subdirs(uid, gid, subdirs)

    def _make_subdirs(self, uid: int, gid: int, subdirs: tuple[str, ...]) -> None:
        for name in subdirs:
            path = self.mountpoint / name
            path.mkdir(mode=0o700)
            os.chown(path, uid, gid)

    def path(self, name: str) -> Path:
        return self.mountpoint / name

    def free_bytes(self) -> int:
        st = os.statvfs(self.mountpoint)
        return st.f_bavail * st.f_frsize

    def is_full(self) -> bool:
        threshold = max(FULL_BELOW_MIN_BYTES, int(self.size_bytes * FULL_BELOW_FRACTION))
        return self.mounted and self.free_bytes() < threshold

    def used_inodes(self) -> int:
        st = os.statvfs(self.mountpoint)
        return st.f_files - st.f_ffree

    def wipe(self, uid: int, gid: int, subdirs: tuple[str, ...] = ("scratch", "output")) -> None:
        """Empty the filesystem for the next task (root ignores the modes a program may have set;
        the sandbox had no capabilities, so nothing is immutable)."""
        for entry in os.scandir(self.mountpoint):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        self._make_subdirs(uid, gid, subdirs)

    def destroy(self) -> None:
        if self.mounted:
            # lazy: a straggler holding a file open must not block the next task
            subprocess.run(["umount", "-l", str(self.mountpoint)], check=False, capture_output=True)
            self.mounted = False
        self.image.unlink(missing_ok=True)
        shutil.rmtree(self.base, ignore_errors=True)
        _LIVE.discard(self.base)

    @staticmethod
    def _run(argv: list[str]) -> None:
        proc = subprocess.run(argv, check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            raise OSError(f"{' '.join(argv[:2])} failed: {proc.stderr.strip() or proc.returncode}")


_LIVE: set[Path] = set()  # disk directories made by this process (never swept)
_SWEPT: set[Path] = set()


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 1:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
            if point.startswith(prefix):
                found.append(point)
    return found


def sweep(state_dir: Path) -> list[str]:
    """Unmount and delete the disks a crashed earlier agent left in ``state_dir`` (not this
    process's own). Returns what it removed."""
    removed = []
    for point in _mounts_under(state_dir):
        if Path(point).parent not in _LIVE:
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
            removed.append(point)
    if state_dir.is_dir():
        for entry in state_dir.iterdir():
            if entry not in _LIVE:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(str(entry))
    return removed


class DiskPool:
    """Formatted, mounted disks kept between tasks: making one costs ~30 ms (mkfs, mount, umount),
    emptying a used one a few. A disk goes back to the pool only if it emptied cleanly and held
    few files (a tree of millions of files is faster to reformat than to delete)."""

    REFORMAT_ABOVE_INODES = 20_000

    def __init__(self, max_idle: int = 2) -> None:
        self.max_idle = max_idle
        self._idle: list[ScratchDisk] = []
        self._lock = threading.Lock()
        atexit.register(self.close)

    def acquire(self, state_dir: Path, size_bytes: int, uid: int, gid: int) -> ScratchDisk:
        with self._lock:
            for disk in self._idle:
                if disk.size_bytes == size_bytes and disk.base.parent == state_dir:
                    self._idle.remove(disk)
                    return disk
            if state_dir not in _SWEPT:
                _SWEPT.add(state_dir)
                sweep(state_dir)
            base = state_dir / uuid.uuid4().hex[:12]
            _LIVE.add(base)
        state_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        os.chmod(state_dir, 0o711)  # bwrap (as the sandbox uid) traverses it to the bind sources
        disk = ScratchDisk(base, size_bytes)
        try:
            disk.create(uid, gid)
        except BaseException:
            disk.destroy()
            raise
        return disk

    def release(self, disk: ScratchDisk, uid: int, gid: int) -> None:
        try:
            if disk.mounted and disk.used_inodes() <= self.REFORMAT_ABOVE_INODES:
                disk.wipe(uid, gid)
                with self._lock:
                    if len(self._idle) < self.max_idle:
                        self._idle.append(disk)
                        return
        except OSError:
            pass  # could not empty it: a fresh one next time
        disk.destroy()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for disk in idle:
            disk.destroy()


def move_contents(src: Path, dst: Path) -> None:
    """Copy what the program left in ``src`` to ``dst`` without following symlinks (a link to
    /etc/shadow stays a link; the uploader decides what to do with links). Iterative, so a very
    deep tree cannot exhaust the stack; fifos and sockets are skipped (copying one would block)."""
    stack = [(src, dst)]
    while stack:
        s, d = stack.pop()
        d.mkdir(parents=True, exist_ok=True)
        for entry in os.scandir(s):
            target = d / entry.name
            if entry.is_dir(follow_symlinks=False):
                stack.append((Path(entry.path), target))
            elif entry.is_symlink():
                if target.is_symlink() or target.exists():
                    target.unlink()
                os.symlink(os.readlink(entry.path), target)
            elif entry.is_file(follow_symlinks=False):
                shutil.copyfile(entry.path, target, follow_symlinks=False)


def remove_work_root(root: Path, drivers: Iterable[object]) -> None:
    """Delete a throw-away work root (self-test, benchmark) and what the drivers pooled for it.

    The drivers' pooled scratch disks are unmounted first, so nothing is deleted through a mount;
    directories are made writable again because tasks leave read-only ones (program/ is 0555)."""
    for driver in drivers:
        disks = getattr(driver, "disks", None)
        if disks is not None:
            disks.close()
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
    os.chmod(root, 0o755)
    shutil.rmtree(root, ignore_errors=True)

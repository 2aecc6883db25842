"""A size-capped, disk-backed filesystem for a task's writable directories.

A sparse file formatted as ext4 (no journal, lazy init: ~20 ms for 10 GiB) and loop-mounted
``nosuid,nodev`` holds ``scratch/`` and ``output/``; writing past its size fails with ENOSPC instead of
filling the host's disk. Needs root (mount) and ``mkfs.ext4``; without them the bwrap driver falls
back to a size-capped tmpfs (RAM-backed, counted in the memory cgroup). Watching ``du`` was rejected:
it is racy and a fast writer fills the disk between two looks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
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

    def destroy(self) -> None:
        if self.mounted:
            # lazy: a straggler holding a file open must not block the next task
            subprocess.run(["umount", "-l", str(self.mountpoint)], check=False, capture_output=True)
            self.mounted = False
        self.image.unlink(missing_ok=True)
        shutil.rmtree(self.base, ignore_errors=True)

    @staticmethod
    def _run(argv: list[str]) -> None:
        proc = subprocess.run(argv, check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            raise OSError(f"{' '.join(argv[:2])} failed: {proc.stderr.strip() or proc.returncode}")


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

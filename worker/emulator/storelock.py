"""One broker per store: an exclusive ``flock`` on ``<data dir>/store.lock``, held for the broker's life.

Two brokers on one SQLite store would both hand out the same sequence numbers and deliver the same
messages twice (seen after a crashed ``pool local up`` was started again). The kernel drops the lock
when its holder dies, even by SIGKILL, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "store.lock"


class StoreLocked(RuntimeError):
    """Another live process holds the store."""


class StoreLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> StoreLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreLocked(f"another emulator (pid {holder}) is already using the store in {self.path.parent}; "
                              f"stop it first (`pool local down`, or kill that pid)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

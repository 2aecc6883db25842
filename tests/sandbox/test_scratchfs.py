"""Loop-mounted scratch disks: pooling, and recovery from a crashed agent's leftovers."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.sandbox.conftest import needs_root
from worker.execution import scratchfs

pytestmark = [needs_root, pytest.mark.skipif(scratchfs.unavailable_reason() is not None,
                                             reason=f"no loop disks: {scratchfs.unavailable_reason()}")]


@pytest.fixture
def state_dir():
    root = Path(tempfile.mkdtemp(prefix="pool-scratchfs-test-", dir="/var/tmp"))
    yield root / ".sandbox-disks"
    for point in scratchfs._mounts_under(root):
        os.system(f"umount -l {point}")
    shutil.rmtree(root, ignore_errors=True)


def _mounted(path: Path) -> bool:
    return str(path) in scratchfs._mounts_under(path.parent)


def test_pool_reuses_an_emptied_disk(state_dir):
    pool = scratchfs.DiskPool()
    disk = pool.acquire(state_dir, 16 * 1024**2, 65534, 65534)
    (disk.path("scratch") / "left-behind").write_text("x")
    os.chmod(disk.path("scratch"), 0o000)  # what a program may do
    pool.release(disk, 65534, 65534)
    again = pool.acquire(state_dir, 16 * 1024**2, 65534, 65534)
    assert again is disk and os.listdir(disk.path("scratch")) == []
    assert os.stat(disk.path("scratch")).st_uid == 65534
    other = pool.acquire(state_dir, 32 * 1024**2, 65534, 65534)  # another size: a new disk
    assert other is not disk
    pool.release(other, 65534, 65534)
    pool.release(again, 65534, 65534)
    pool.close()
    assert not _mounted(disk.mountpoint) and not disk.image.exists()


def test_full_threshold(state_dir):
    pool = scratchfs.DiskPool()
    disk = pool.acquire(state_dir, 16 * 1024**2, 0, 0)
    assert not disk.is_full()
    with open(disk.path("scratch") / "fill", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 1024**2)
                f.flush()
        except OSError:
            pass
    assert disk.is_full()
    pool.release(disk, 0, 0)
    pool.close()


def test_a_crashed_agents_disks_are_swept(state_dir):
    state_dir.mkdir(parents=True)
    orphan = scratchfs.ScratchDisk(state_dir / "orphan", 16 * 1024**2)
    orphan.create(65534, 65534)  # made, never released: as if the agent was SIGKILLed
    assert _mounted(orphan.mountpoint)
    pool = scratchfs.DiskPool()
    fresh = pool.acquire(state_dir, 16 * 1024**2, 65534, 65534)
    assert not _mounted(orphan.mountpoint) and not orphan.base.exists()
    assert _mounted(fresh.mountpoint)
    pool.release(fresh, 65534, 65534)
    pool.close()

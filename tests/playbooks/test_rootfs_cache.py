"""The base-rootfs cache: an entry counts only when complete and intact (else it is rebuilt)."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.rootfs import _sha256_file, base_key, cached_entry_ok


def test_complete_entry_is_used(tmp_path: Path):
    tarball, checksum = tmp_path / "base.tar", tmp_path / "base.tar.sha256"
    tarball.write_bytes(b"x" * 4096)
    checksum.write_text(_sha256_file(tarball) + "\n")
    assert cached_entry_ok(tarball, checksum)


def test_truncated_missing_or_unchecked_entries_are_rebuilt(tmp_path: Path):
    tarball, checksum = tmp_path / "base.tar", tmp_path / "base.tar.sha256"
    tarball.write_bytes(b"x" * 4096)
    assert not cached_entry_ok(tarball, checksum)  # interrupted before the checksum was written
    checksum.write_text(_sha256_file(tarball))
    tarball.write_bytes(b"x" * 100)  # truncated / corrupted later
    assert not cached_entry_ok(tarball, checksum)
    tarball.unlink()
    assert not cached_entry_ok(tarball, checksum)


def test_key_follows_the_inputs(monkeypatch):
    from tests.fixtures import rootfs

    key = base_key()
    assert key == base_key()
    monkeypatch.setattr(rootfs, "BASE_PACKAGES", (*rootfs.BASE_PACKAGES, "curl"))
    assert base_key() != key

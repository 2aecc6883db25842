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


def test_cloud_init_key_follows_its_packages_and_the_base(monkeypatch):
    from tests.fixtures import rootfs

    key = rootfs.cloud_init_key()
    assert key == rootfs.cloud_init_key() and key != base_key()
    monkeypatch.setattr(rootfs, "CLOUD_INIT_PACKAGES", (*rootfs.CLOUD_INIT_PACKAGES, "curl"))
    with_curl = rootfs.cloud_init_key()
    assert with_curl != key
    monkeypatch.setattr(rootfs, "BASE_PACKAGES", (*rootfs.BASE_PACKAGES, "curl"))
    assert rootfs.cloud_init_key() != with_curl  # a new base means a new cloud-init tree


def test_nocloud_seed_is_a_first_boot_with_the_user_data_unchanged(tmp_path: Path):
    from tests.fixtures.rootfs import seed_nocloud

    (tmp_path / "etc/cloud/cloud.cfg.d").mkdir(parents=True)
    (tmp_path / "etc/machine-id").write_text("0123\n")
    user_data = "#cloud-config\nruncmd: [[/bin/true]]\n"
    seed_nocloud(tmp_path, user_data, "i-test")
    assert (tmp_path / "var/lib/cloud/seed/nocloud/user-data").read_text() == user_data
    assert "instance-id: i-test" in (tmp_path / "var/lib/cloud/seed/nocloud/meta-data").read_text()
    assert "NoCloud" in (tmp_path / "etc/cloud/cloud.cfg.d/99-test-datasource.cfg").read_text()
    assert not (tmp_path / "etc/machine-id").exists()

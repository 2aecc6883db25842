"""Safe extraction: every attack is refused with a readable error, and nothing lands outside."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from worker.execution.archive import ArchiveError, extract

MB = 1024 * 1024


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = link
    ti.mode = mode
    return ti


def outside_untouched(tmp_path: Path) -> None:
    assert not (tmp_path / "evil").exists()


def test_good_tar_and_zip(tmp_path):
    tar = make_tar(tmp_path / "a.tar.gz", [
        (info("dir", tarfile.DIRTYPE, mode=0o755), None),
        (info("dir/run.sh", mode=0o4755), b"echo hi\n"),
        (info("dir/link", tarfile.SYMTYPE, link="run.sh"), None),
        (info("hard", tarfile.LNKTYPE, link="dir/run.sh"), None),
    ])
    written = extract(tar, tmp_path / "out", max_bytes=MB)
    out = tmp_path / "out"
    assert (out / "dir/run.sh").read_bytes() == b"echo hi\n"
    assert os.readlink(out / "dir/link") == "run.sh"
    assert (out / "hard").read_bytes() == b"echo hi\n"
    assert stat.S_IMODE((out / "dir/run.sh").stat().st_mode) == 0o755  # setuid stripped
    assert written == 16

    zpath = tmp_path / "b.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("pkg/main.py", "print(1)")
        zf.writestr("pkg/sub/", "")
    extract(zpath, tmp_path / "zout", max_bytes=MB)
    assert (tmp_path / "zout/pkg/main.py").read_text() == "print(1)"


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/tmp/evil-abs", "./../evil"])
def test_traversal_and_absolute(tmp_path, name):
    tar = make_tar(tmp_path / "x.tar", [(info(name), b"pwned")], mode="w")
    with pytest.raises(ArchiveError, match="traversal|absolute"):
        extract(tar, tmp_path / "out", max_bytes=MB)
    outside_untouched(tmp_path)
    assert not Path("/tmp/evil-abs").exists()


@pytest.mark.parametrize("link", ["../../evil", "/etc/passwd", "sub/../../evil"])
def test_symlink_out(tmp_path, link):
    tar = make_tar(tmp_path / "x.tar", [(info("l", tarfile.SYMTYPE, link=link), None)], mode="w")
    with pytest.raises(ArchiveError, match="link"):
        extract(tar, tmp_path / "out", max_bytes=MB)


def test_write_through_symlink_refused(tmp_path):
    """A link to an in-tree-looking path then a file through it: refused even if the link were allowed."""
    (tmp_path / "evil").mkdir()
    tar = make_tar(tmp_path / "x.tar", [
        (info("l", tarfile.SYMTYPE, link="../evil"), None),
        (info("l/file"), b"pwned"),
    ], mode="w")
    with pytest.raises(ArchiveError):
        extract(tar, tmp_path / "out", max_bytes=MB)
    assert not (tmp_path / "evil/file").exists()


def test_file_over_existing_symlink_does_not_follow(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("safe")
    dest = tmp_path / "out"
    dest.mkdir()
    tar = make_tar(tmp_path / "x.tar", [(info("f"), b"pwned")], mode="w")
    os.symlink(victim, dest / "f")  # planted before extraction
    extract(tar, dest, max_bytes=MB)
    assert victim.read_text() == "safe" and (dest / "f").read_bytes() == b"pwned"


@pytest.mark.parametrize("link", ["../evil", "/etc/passwd", "missing"])
def test_hardlink_out(tmp_path, link):
    tar = make_tar(tmp_path / "x.tar", [(info("h", tarfile.LNKTYPE, link=link), None)], mode="w")
    with pytest.raises(ArchiveError):
        extract(tar, tmp_path / "out", max_bytes=MB)


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_devices_and_fifos(tmp_path, kind):
    tar = make_tar(tmp_path / "x.tar", [(info("dev", kind), None)], mode="w")
    with pytest.raises(ArchiveError, match="not allowed"):
        extract(tar, tmp_path / "out", max_bytes=MB)


def test_zip_symlink_out_and_traversal(tmp_path):
    zpath = tmp_path / "z.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zi = zipfile.ZipInfo("l")
        zi.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(zi, "/etc")
    with pytest.raises(ArchiveError, match="link"):
        extract(zpath, tmp_path / "out", max_bytes=MB)
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("../evil", "pwned")
    with pytest.raises(ArchiveError, match="traversal"):
        extract(zpath, tmp_path / "out2", max_bytes=MB)
    outside_untouched(tmp_path)


def test_zip_bomb_stops_at_cap(tmp_path):
    """200 MB of zeros compress to ~200 KB; extraction stops at the cap."""
    zpath = tmp_path / "bomb.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("zeros", "w", force_zip64=True) as fh:
        for _ in range(200):
            fh.write(bytes(MB))
    assert zpath.stat().st_size < 2 * MB
    with pytest.raises(ArchiveError, match="more than"):
        extract(zpath, tmp_path / "out", max_bytes=10 * MB)
    assert not (tmp_path / "out" / "zeros").exists() or (tmp_path / "out" / "zeros").stat().st_size <= 10 * MB


def test_tar_size_and_member_caps(tmp_path):
    tar = make_tar(tmp_path / "big.tar.gz", [(info("big"), bytes(3 * MB))])
    with pytest.raises(ArchiveError, match="larger than|more than"):
        extract(tar, tmp_path / "out", max_bytes=2 * MB)
    many = make_tar(tmp_path / "many.tar", [(info(f"f{i}"), b"") for i in range(20)], mode="w")
    with pytest.raises(ArchiveError, match="members"):
        extract(many, tmp_path / "out2", max_bytes=MB, max_members=10)


def test_garbage_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not an archive at all")
    with pytest.raises(ArchiveError, match="not a zip or tar"):
        extract(junk, tmp_path / "out", max_bytes=MB)

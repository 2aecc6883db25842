"""Safe extraction of zip and tar archives (program and input bundles come from participants).

Refused, with an :class:`ArchiveError` naming the member: absolute paths, ``..`` components, links
whose target leaves the destination, hard links to anything but a regular file extracted earlier,
devices / FIFOs / sockets, writing through a symlink, more than ``max_members`` entries, and more
than ``max_bytes`` of content (counted while writing, so a lying header or a zip bomb stops at
the cap). Permissions keep only rwx bits (no setuid/setgid/sticky); owners are never restored.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from worker.errors import PoolError

_COPY_CHUNK = 1024 * 1024


class ArchiveError(PoolError, ValueError):
    """The archive is unsafe or unreadable; the message says which member and why."""


@dataclass
class _Entry:
    name: str
    kind: str  # "file" | "dir" | "symlink" | "hardlink"
    mode: int
    link: str = ""
    opener: object = None  # () -> IO[bytes] for files
    size: int = 0


def _clean_name(name: str) -> PurePosixPath:
    if not name or "\x00" in name:
        raise ArchiveError(f"member {name!r}: empty or invalid name")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"member {name!r}: absolute path")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ArchiveError(f"member {name!r}: path traversal ('..')")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


class _Extractor:
    def __init__(self, dest: Path, max_bytes: int, max_members: int) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        self.root = os.path.realpath(dest)
        self.max_bytes = max_bytes
        self.max_members = max_members
        self.written = 0
        self.files: set[str] = set()  # regular files extracted so far (hard link targets)

    def _target(self, rel: PurePosixPath, name: str) -> str:
        path = os.path.normpath(os.path.join(self.root, *rel.parts))
        if not _inside(self.root, path):
            raise ArchiveError(f"member {name!r}: outside the destination")
        parent = os.path.realpath(os.path.dirname(path))  # refuses writing through a symlinked dir
        if not _inside(self.root, parent):
            raise ArchiveError(f"member {name!r}: its directory is a link out of the destination")
        return path

    def _check_count(self, count: int) -> None:
        if count > self.max_members:
            raise ArchiveError(f"archive has more than {self.max_members} members")

    def _remove_existing(self, path: str) -> None:
        if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
            os.unlink(path)  # a later member of the same name wins, as with tar itself

    def add(self, entry: _Entry) -> None:
        rel = _clean_name(entry.name)
        if rel == PurePosixPath("."):
            return
        path = self._target(rel, entry.name)
        mode = entry.mode & 0o777
        if entry.kind == "dir":
            if os.path.islink(path):
                raise ArchiveError(f"member {entry.name!r}: directory replaces a link")
            os.makedirs(path, exist_ok=True)
            os.chmod(path, (mode or 0o755) | 0o700)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._remove_existing(path)
        if entry.kind == "symlink":
            link = entry.link
            if not link or os.path.isabs(link) or link.startswith("\\") or (len(link) > 1 and link[1] == ":"):
                raise ArchiveError(f"member {entry.name!r}: link to absolute path {link!r}")
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), link))
            if not _inside(self.root, resolved):
                raise ArchiveError(f"member {entry.name!r}: link {link!r} points outside the destination")
            os.symlink(link, path)
            return
        if entry.kind == "hardlink":
            source = self._target(_clean_name(entry.link), entry.name)
            if source not in self.files or os.path.islink(source):
                raise ArchiveError(f"member {entry.name!r}: hard link to {entry.link!r}, "
                                   "which is not a file of this archive")
            self._count(os.path.getsize(source), entry.name)
            shutil.copyfile(source, path, follow_symlinks=False)
            os.chmod(path, os.stat(source).st_mode & 0o777)
            self.files.add(path)
            return
        # regular file: O_NOFOLLOW|O_EXCL so nothing is written through a link planted earlier
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as out, entry.opener() as src:  # type: ignore[operator]
            while True:
                chunk = src.read(_COPY_CHUNK)
                if not chunk:
                    break
                self._count(len(chunk), entry.name)
                out.write(chunk)
        os.chmod(path, (mode or 0o644) | 0o400)
        self.files.add(path)

    def _count(self, size: int, name: str) -> None:
        self.written += size
        if self.written > self.max_bytes:
            raise ArchiveError(f"archive expands to more than {self.max_bytes} bytes (at member {name!r})")


def _tar_entries(tar: tarfile.TarFile) -> Iterator[_Entry]:
    for member in tar:
        if member.isdir():
            yield _Entry(member.name, "dir", member.mode)
        elif member.issym():
            yield _Entry(member.name, "symlink", member.mode, link=member.linkname)
        elif member.islnk():
            yield _Entry(member.name, "hardlink", member.mode, link=member.linkname)
        elif member.isreg():
            def opener(m: tarfile.TarInfo = member) -> IO[bytes]:
                fh = tar.extractfile(m)
                assert fh is not None
                return fh

            yield _Entry(member.name, "file", member.mode, opener=opener, size=member.size)
        else:
            kind = "device" if member.ischr() or member.isblk() else "fifo" if member.isfifo() else "special"
            raise ArchiveError(f"member {member.name!r}: {kind} files are not allowed")


def _zip_entries(zf: zipfile.ZipFile) -> Iterator[_Entry]:
    for info in zf.infolist():
        unix_mode = info.external_attr >> 16
        kind = stat.S_IFMT(unix_mode)
        if info.is_dir():
            yield _Entry(info.filename, "dir", unix_mode & 0o777 or 0o755)
        elif kind == stat.S_IFLNK:
            if info.file_size > 4096:
                raise ArchiveError(f"member {info.filename!r}: symlink target too long")
            yield _Entry(info.filename, "symlink", 0o777, link=zf.read(info).decode("utf-8", "replace"))
        elif kind in (0, stat.S_IFREG):
            yield _Entry(info.filename, "file", unix_mode & 0o777 or 0o644,
                         opener=lambda i=info: zf.open(i), size=info.file_size)
        else:
            raise ArchiveError(f"member {info.filename!r}: special files (devices, FIFOs) are not allowed")


def extract(archive: Path, dest: Path, *, max_bytes: int, max_members: int = 100_000) -> int:
    """Extract ``archive`` (zip, tar, tar.gz/bz2/xz) into ``dest``; returns the bytes written."""
    extractor = _Extractor(Path(dest), max_bytes, max_members)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                extractor._check_count(len(zf.infolist()))
                if sum(i.file_size for i in zf.infolist()) > max_bytes:
                    raise ArchiveError(f"archive declares more than {max_bytes} bytes of content")
                for entry in _zip_entries(zf):
                    extractor.add(entry)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tar:
                for count, entry in enumerate(_tar_entries(tar), 1):
                    extractor._check_count(count)
                    if entry.size > max_bytes:
                        raise ArchiveError(f"member {entry.name!r} is larger than {max_bytes} bytes")
                    extractor.add(entry)
        else:
            raise ArchiveError("not a zip or tar archive")
    except ArchiveError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, RuntimeError) as exc:
        raise ArchiveError(f"cannot read archive: {exc}") from None
    return extractor.written

"""The program's ``output/`` directory, packed as tar.gz and uploaded through the output SAS."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from worker.errors import PoolError


class OutputTooLarge(PoolError, ValueError):
    pass


def pack(output_dir: Path, archive: Path, max_bytes: int | None) -> int:
    """Pack ``output_dir`` into ``archive``; links are stored as links, never followed. Returns the
    archive's size; stops with :class:`OutputTooLarge` as soon as it passes ``max_bytes``."""
    with open(archive, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for dirpath, dirnames, filenames in os.walk(output_dir):
            dirnames.sort()
            for name in sorted(dirnames) + sorted(filenames):
                path = Path(dirpath) / name
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to(output_dir)))
                if not (info.isreg() or info.isdir() or info.issym()):
                    continue  # FIFOs, sockets, devices are not outputs
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if info.isreg():
                    with path.open("rb") as fh:
                        tar.addfile(info, fh)
                else:
                    tar.addfile(info)
                if max_bytes is not None and raw.tell() > max_bytes:
                    raise OutputTooLarge(f"the output archive exceeds the limit of {max_bytes} bytes")
    size = archive.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise OutputTooLarge(f"the output archive is {size} bytes, limit {max_bytes}")
    return size

"""Downloaded bundles, kept on disk up to a size cap and evicted least-recently-used first.

Entries are named by the bundle's sha256 when the site gives one (the same program reaches a
worker once), else by a hash of the URL without its SAS. A file's mtime is its last use, so the LRU
order survives restarts. Agents sharing a cache directory serialise on an flock.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from worker.agent import blobs
from worker.agent.errors import InfrastructureError
from worker.protocol import Bundle

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one agent per cache directory
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


def cache_key(bundle: Bundle) -> str:
    if bundle.sha256:
        return bundle.sha256.lower()
    return "url-" + hashlib.sha256(bundle.url.split("?", 1)[0].encode()).hexdigest()


class InputCache:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if fcntl is None:
            yield
            return
        with open(self.dir / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def open(self, bundle: Bundle) -> Iterator[Path]:
        """The bundle's local file, valid (never evicted) inside the ``with`` block."""
        with self._locked():
            path = self.dir / cache_key(bundle)
            if path.exists():
                self.hits += 1
                os.utime(path)
            else:
                self.misses += 1
                self._download(bundle, path)
            self._evict(keep=path)
            yield path

    def _download(self, bundle: Bundle, path: Path) -> None:
        fd, tmp_name = tempfile.mkstemp(dir=self.dir, prefix=".part-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                try:
                    blobs.download(bundle.url, fh)
                except InfrastructureError as exc:
                    raise InfrastructureError(f"bundle {bundle.name}: {exc}", "bundle_download") from exc
            if bundle.sha256:
                digest = _sha256(tmp)
                if digest != bundle.sha256.lower():
                    raise InfrastructureError(
                        f"bundle {bundle.name}: downloaded content has sha256 {digest}, expected {bundle.sha256}",
                        "bundle_download")
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)

    def entries(self) -> list[Path]:
        return [p for p in self.dir.iterdir() if p.is_file() and not p.name.startswith(".")]

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.entries())

    def _evict(self, keep: Path) -> None:
        entries = sorted(self.entries(), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in entries)
        for entry in entries:
            if total <= self.max_bytes:
                break
            if entry == keep:
                continue  # in use; a single bundle larger than the cap stays until the next one
            total -= entry.stat().st_size
            log.info("cache: evicting %s", entry.name)
            entry.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()

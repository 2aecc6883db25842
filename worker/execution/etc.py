"""The sandbox's /etc: a read-only snapshot of the few host /etc entries programs need, plus a
synthesized passwd/group. One bind mount instead of ~25 (measured: ~4 ms less per task), and
nothing else of the host's /etc (the agent's config among it) is ever in view.

The snapshot is rebuilt when a source entry changes (mtime/inode of the top-level entries, checked
at every start: a package upgrade refreshing ld.so.cache or the CA bundle is picked up).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path

ENTRIES = (
    "alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "ssl", "ca-certificates",
    "ca-certificates.conf", "nsswitch.conf", "hosts", "host.conf", "gai.conf", "localtime", "timezone",
    "mime.types", "os-release", "debian_version", "lsb-release", "protocols", "services", "fonts",
    "locale.alias", "python3", "matplotlibrc",
)
NETWORK_ENTRIES = ("resolv.conf",)  # only for tasks with network; copied through its symlink


def _signature(source: Path, entries: tuple[str, ...]) -> tuple:
    sig = []
    for name in entries:
        try:
            st = os.stat(source / name)  # follows links: a re-pointed resolv.conf counts as a change
        except OSError:
            continue
        sig.append((name, st.st_mtime_ns, st.st_ino, st.st_size))
    return tuple(sig)


def _public(st: os.stat_result) -> bool:
    """World-readable (directories: and traversable). Anything else — /etc/ssl/private, a 0600
    key — stays out, even when the agent runs as root and could read it."""
    needed = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(st.st_mode) else 0)
    return st.st_mode & needed == needed


def _copy_public(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst``: links as links, only world-readable files and directories."""
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISDIR(st.st_mode) and _public(st):
        dst.mkdir()
        for entry in sorted(os.listdir(src)):
            _copy_public(src / entry, dst / entry)
    elif stat.S_ISREG(st.st_mode) and _public(st):
        shutil.copyfile(src, dst)


class EtcSnapshot:
    def __init__(self, home: str, uid: int, gid: int, source: Path = Path("/etc"),
                 base: Path | None = None) -> None:
        self.home, self.uid, self.gid = home, uid, gid
        self.source = source
        self.base = base
        self._built: dict[bool, tuple[tuple, Path]] = {}
        self._lock = threading.Lock()

    def path(self, network: bool) -> Path:
        entries = ENTRIES + (NETWORK_ENTRIES if network else ())
        sig = _signature(self.source, entries)
        with self._lock:
            built = self._built.get(network)
            if built is not None and built[0] == sig and built[1].exists():
                return built[1]
            target = self._build(entries)
            if built is not None:  # executions already started keep their mount of the old copy
                shutil.rmtree(built[1], ignore_errors=True)
            self._built[network] = (sig, target)
            return target

    def _build(self, entries: tuple[str, ...]) -> Path:
        base = self.base
        if base is not None:
            try:
                base.mkdir(parents=True, exist_ok=True)
            except OSError:  # e.g. /run read-only under systemd's ProtectSystem=strict
                base = None
        target = Path(tempfile.mkdtemp(prefix="pool-sandbox-etc-", dir=base))
        for name in entries:
            src = self.source / name
            dst = target / name
            if name in NETWORK_ENTRIES and src.exists():
                shutil.copyfile(src, dst)  # through the symlink (systemd-resolved's stub file)
            elif os.path.lexists(src):
                _copy_public(src, dst)
        (target / "passwd").write_text(
            f"root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{self.uid}:{self.gid}:sandbox:{self.home}:/bin/sh\n")
        (target / "group").write_text(f"root:x:0:\nsandbox:x:{self.gid}:\n")
        for dirpath, dirnames, filenames in os.walk(target):
            for name in dirnames:
                os.chmod(os.path.join(dirpath, name), 0o755)
            for name in filenames:
                path = os.path.join(dirpath, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o644)
        os.chmod(target, 0o755)
        return target

    def close(self) -> None:
        with self._lock:
            for _, path in self._built.values():
                shutil.rmtree(path, ignore_errors=True)
            self._built.clear()

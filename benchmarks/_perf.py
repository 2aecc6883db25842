"""Where a process's CPU goes, by Linux ``perf``: the language runtime, the kernel, native libraries.

Used by ``benchmarks emulator --perf`` to split the broker's CPU per message into what its runtime
(the Python interpreter; Erlang's VM for RabbitMQ) spends and what would remain without it: the kernel
(socket I/O, fsync, file writes) and native libraries (SQLite, proton's C engine, libc, uvloop). The
part outside the runtime bounds how far any rewrite of the code the runtime runs could go.

perf samples every thread of the given processes at ``FREQUENCY`` Hz with call chains (for the kernel
split); that costs the sampled processes a few per cent of CPU.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

FREQUENCY = 999
# Kernel functions whose inclusive share names what the kernel time was spent on (they do not nest).
KERNEL_PARTS = {
    "fsync": "do_fsync",
    "socket send": "tcp_sendmsg",
    "socket receive": "tcp_recvmsg",
    "file writes": "generic_perform_write",  # buffered writes (ext4 and most local filesystems)
    "polling": "do_epoll_wait",
}
# The runtime: CPython (shared or static), and Erlang's VM with its JIT code (RabbitMQ; the JIT's code
# lives in an anonymous memfd mapping, which perf names "memfd:vmem (deleted)").
_RUNTIME = re.compile(r"^(libpython[\d.]*\.so.*|python[\d.]*|beam(\.smp)?|\[JIT\].*|perf-\d+\.map|jitted-.*"
                      r"|memfd:vmem.*)$")
_ROW = re.compile(r"^\s*([\d.]+)%\s+(?:([\d.]+)%\s+)?(.+?)\s*$")


class PerfUnavailable(RuntimeError):
    """perf is missing or may not sample these processes (kernel.perf_event_paranoid, containers)."""


@dataclass
class CpuBreakdown:
    """Shares (0..1) of the sampled CPU time."""

    runtime: float
    kernel: float
    native: float
    kernel_parts: dict[str, float] = field(default_factory=dict)
    top_native: list[tuple[str, float]] = field(default_factory=list)
    samples: int = 0

    @property
    def outside_runtime(self) -> float:
        return self.kernel + self.native


def available() -> bool:
    return shutil.which("perf") is not None


class PerfRecord:
    """``perf record`` of running processes for the duration of a ``with`` block."""

    def __init__(self, pids: list[int]) -> None:
        if not available():
            raise PerfUnavailable("perf is not installed (Debian: linux-perf)")
        self.pids = pids
        self._dir = Path(tempfile.mkdtemp(prefix="bench-perf-"))
        self.data = self._dir / "perf.data"
        self._proc: subprocess.Popen | None = None
        self.breakdown: CpuBreakdown | None = None
        self.error: str | None = None

    def __enter__(self) -> Self:
        cmd = ["perf", "record", "-q", "-F", str(FREQUENCY), "-g", "-o", str(self.data),
               "-p", ",".join(map(str, self.pids))]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:  # perf refuses at once when it may not sample (perf_event_paranoid); it runs on otherwise
            self._proc.wait(0.5)
        except subprocess.TimeoutExpired:
            return self
        err = self._proc.stderr.read().strip() if self._proc.stderr else ""
        shutil.rmtree(self._dir, ignore_errors=True)
        raise PerfUnavailable(f"perf record exited at once: {err.splitlines()[-1] if err else self._proc.returncode}")

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGINT)  # perf writes its data file on SIGINT
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        try:
            if exc[0] is None:
                self.breakdown = analyse(self.data)
        except subprocess.CalledProcessError as err:  # a damaged or empty data file: no split, the run stands
            self.error = f"perf report failed: {(err.stderr or '').strip()[-200:]}"
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)


def _report(data: Path, *args: str) -> tuple[list[tuple[float, float | None, str]], int]:
    """The rows (share, second share or None, key) of one ``perf report``, and its sample count."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "-g", "none", *args],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"^# Samples: (\d+)(K?)", out, re.MULTILINE)
    samples = 0 if m is None else int(m.group(1)) * (1000 if m.group(2) else 1)
    rows = []
    for line in out.splitlines():
        if line.startswith("#"):
            continue
        m = _ROW.match(line)
        if m:
            rows.append((float(m.group(1)) / 100, float(m.group(2)) / 100 if m.group(2) else None, m.group(3)))
    return rows, samples


def _short(dso: str) -> str:
    """libsqlite3.so.0.8.6 -> libsqlite3, _cffi_backend.cpython-311-x86_64-linux-gnu.so -> _cffi_backend"""
    return re.split(r"\.so\b|\.cpython-|\.abi3", dso, maxsplit=1)[0]


def analyse(data: Path) -> CpuBreakdown:
    """Shares by shared object (self time), and the kernel's part by what it was doing (inclusive)."""
    runtime = kernel = native = 0.0
    natives: list[tuple[str, float]] = []
    by_dso, samples = _report(data, "--no-children", "--sort", "dso")
    for share, _, dso in by_dso:
        if dso.startswith("[kernel"):
            kernel += share
        elif _RUNTIME.match(dso):
            runtime += share
        else:
            native += share
            name = _short(dso)
            if name and share >= 0.005:
                natives.append((name, share))
    parts = dict.fromkeys(KERNEL_PARTS, 0.0)
    wanted = {sym: name for name, sym in KERNEL_PARTS.items()}
    by_symbol, _ = _report(data, "--children", "--sort", "sym")
    for children, _, sym in by_symbol:
        name = wanted.get(sym.removeprefix("[k] ").strip())
        if name is not None and sym.startswith("[k]"):
            parts[name] = max(parts[name], children)
    return CpuBreakdown(runtime, kernel, native, parts, sorted(natives, key=lambda x: -x[1])[:3], samples)

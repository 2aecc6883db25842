"""benchmarks/_perf.py against real processes sampled by real perf: a Python loop is runtime time, an
fsync loop is kernel time spent in fsync. Skipped where perf is missing or may not sample."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks._perf import PerfRecord, PerfUnavailable, available

pytestmark = pytest.mark.skipif(not available(), reason="perf is not installed (Debian: linux-perf)")

BUSY_PYTHON = "import time\nend = time.time() + 20\nwhile time.time() < end:\n    sum(i * i for i in range(1000))\n"
FSYNC_LOOP = ("import os, sys, time\nfd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)\nend = time.time() + 20\n"
              "while time.time() < end:\n    os.pwrite(fd, b'x' * 4096, 0)\n    os.fsync(fd)\n")


def _sample(script: str, *args: str):
    proc = subprocess.Popen([sys.executable, "-c", script, *args])
    try:
        time.sleep(0.3)
        try:
            with PerfRecord([proc.pid]) as rec:
                time.sleep(1.5)
        except PerfUnavailable as exc:
            pytest.skip(f"perf may not sample here: {exc}")
        return rec.breakdown
    finally:
        proc.kill()
        proc.wait()


def test_a_python_loop_is_runtime_time():
    b = _sample(BUSY_PYTHON)
    assert b is not None and b.samples > 300
    assert b.runtime > 0.6, b
    assert b.runtime + b.kernel + b.native == pytest.approx(1.0, abs=0.02)


def test_an_fsync_loop_is_kernel_time_in_fsync(tmp_path: Path):
    b = _sample(FSYNC_LOOP, str(tmp_path / "f"))
    assert b is not None
    assert b.kernel > 0.3, b
    assert b.kernel_parts["fsync"] > 0.1, b
    assert b.kernel_parts["file writes"] > 0.005, b  # the pwrite before each fsync
    assert b.kernel_parts["socket send"] < 0.05, b  # a part names only its own kernel path
    assert b.outside_runtime > b.runtime

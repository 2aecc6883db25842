"""Sandboxed by default: the local stack and the demo pick bwrap wherever `pool sandbox check` passes,
and fall back to the unsandboxed process driver only with a visible warning; `--driver process`
is an explicit choice (no warning)."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from tests.fixtures.azurite import require_azurite
from worker.local.sandboxing import choose_driver

IS_ROOT = os.geteuid() == 0
needs_bwrap_as_root = pytest.mark.skipif(not (IS_ROOT and shutil.which("bwrap")),
                                         reason="needs root and bubblewrap (the sandbox's own requirements)")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A data dir the sandbox uid can traverse (as /var/lib/pool-agent is)."""
    path = Path(tempfile.mkdtemp(prefix="pool-default-driver-", dir="/var/tmp"))
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.root
@needs_bwrap_as_root
def test_auto_picks_bwrap_where_the_sandbox_check_passes(open_dir):
    said: list[str] = []
    assert choose_driver("auto", open_dir / "pool", said.append) == "bwrap"
    assert said == ["execution driver: bwrap (task programs run sandboxed; see docs/sandbox.md)"]


@pytest.mark.root
@needs_bwrap_as_root
def test_auto_falls_back_to_process_with_a_warning_when_the_sandbox_cannot_work(tmp_path):
    closed = tmp_path / "private"
    closed.mkdir(mode=0o700)  # the sandbox uid cannot reach agents' work dirs below it
    said: list[str] = []
    assert choose_driver("auto", closed / "pool", said.append) == "process"
    assert said[0].startswith("WARNING: the bwrap sandbox cannot run here") and "not traversable" in said[0]
    assert "UNSANDBOXED" in said[1] and "--driver process" in said[1]


def test_an_explicit_driver_is_used_as_given_without_a_warning(tmp_path):
    said: list[str] = []
    assert choose_driver("process", tmp_path, said.append) == "process"
    assert said == []


@pytest.mark.slow
@pytest.mark.root
@needs_bwrap_as_root
def test_demo_runs_sandboxed_by_default(open_dir):
    from worker.local.demo import run_demo

    require_azurite()
    out = io.StringIO()
    code = run_demo(open_dir / "pool", workers=2, timeout=180, console=Console(file=out, width=200))
    text = out.getvalue()
    assert code == 0, text
    assert "execution driver: bwrap" in text and "WARNING" not in text
    import yaml

    assert yaml.safe_load((open_dir / "pool" / "profile.yaml").read_text())["driver"] == "bwrap"

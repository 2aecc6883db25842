"""`pool demo` on a fresh data dir: starts everything, evaluates the sample submissions, exits 0."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from tests.fixtures.azurite import require_azurite
from worker.local.demo import run_demo


@pytest.mark.slow
def test_demo_passes_on_a_fresh_data_dir(tmp_path):
    require_azurite()
    out = io.StringIO()
    code = run_demo(tmp_path / "pool", workers=2, timeout=120, console=Console(file=out, width=200))
    text = out.getvalue()
    assert code == 0, text
    assert "demo passed" in text
    for name, outcome in (("linear-regression", "finished"), ("crashes", "failed"), ("too-slow", "timed_out")):
        assert name in text and outcome in text
    assert text.count("UNEXPECTED") == 0

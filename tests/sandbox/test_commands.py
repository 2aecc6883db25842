"""`pool sandbox check`."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from tests.sandbox.conftest import needs_bwrap
from worker.cli import app


@needs_bwrap
def test_check_bwrap_lists_limits_and_passes_its_self_test():
    result = CliRunner().invoke(app, ["sandbox", "check", "--driver", "bwrap"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for row in ("memory", "processes", "disk", "network", "seccomp"):
        assert f"│ {row}" in result.output
    assert "FAIL" not in result.output and result.output.count("pass") >= 5


def test_check_process_driver_reports_what_it_cannot_do():
    result = CliRunner().invoke(app, ["sandbox", "check", "-d", "process", "--no-self-test"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "limits enforced" in result.output


@pytest.mark.skipif(sys.platform == "win32", reason="checks the message off Windows")
def test_unusable_and_unknown_drivers_exit_2():
    result = CliRunner().invoke(app, ["sandbox", "check", "-d", "jobobject"])
    assert result.exit_code == 2 and "Windows only" in result.output
    result = CliRunner().invoke(app, ["sandbox", "check", "-d", "nope"])
    assert result.exit_code == 2 and "unknown driver" in result.output


def test_help_explains():
    result = CliRunner().invoke(app, ["sandbox", "check", "--help"])
    assert result.exit_code == 0 and "really enforces" in result.output

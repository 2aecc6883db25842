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


@needs_bwrap
def test_check_bwrap_probes_network_isolation_for_real():
    result = CliRunner().invoke(app, ["sandbox", "check", "--driver", "bwrap"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "network isolated (probed)" in line)
    assert "pass" in row and "unreachable from the program (errno" in row


def test_network_probe_fails_a_driver_that_claims_isolation_but_has_none():
    """The probe is real: a driver that does not isolate (process), checked as if it claimed to,
    fails the row, because the host's listener really accepted the program's connection."""
    from worker.execution.commands import _self_test
    from worker.execution.process import ProcessDriver

    rows = {name: (passed, detail) for name, passed, detail in _self_test("claims-isolation", ProcessDriver())}
    passed, detail = rows["network isolated (probed)"]
    assert not passed and "reached the host's 127.0.0.1" in detail
    honest = {name: (passed, detail) for name, passed, detail in _self_test("process", ProcessDriver())}
    assert honest["network not isolated (probed)"][0]

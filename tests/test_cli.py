"""`pool --help` explains every command, and each command's own --help works."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from worker.cli import app

COMMANDS = [
    ["emulator"], ["agent"], ["submit"], ["status"], ["logs"], ["cancel"], ["demo"], ["version"],
    ["local", "up"], ["local", "down"], ["competition", "create"], ["sandbox", "check"],
]


def test_top_level_help_lists_every_command():
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for command in {c[0] for c in COMMANDS}:
        assert f" {command} " in result.output


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_explains_itself(command):
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Usage: pool " + " ".join(command) in result.output


def test_console_entry_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "worker", "version"], capture_output=True, text=True, check=True)
    from worker import __version__

    assert out.stdout.strip() == __version__

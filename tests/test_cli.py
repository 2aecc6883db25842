"""`pool --help` explains every command, and each command's own --help works."""

import subprocess
import sys
from pathlib import Path
from typing import Annotated

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


def _packages_loaded_by(code: str) -> set[str]:
    """Top-level packages in sys.modules after `import worker.cli` and ``code`` in a fresh interpreter."""
    probe = f"import sys; import worker.cli; {code}; print(' '.join({{m.split('.')[0] for m in sys.modules}}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    return set(out.stdout.split())


def test_help_and_a_thin_client_command_import_neither_rich_nor_pydantic():
    """`pool --help` renders plain help (Typer's rich help imports rich and markdown-it) and a command's
    parameters are converted without pydantic (worker.util.cli_coercion): both cost start-up time."""
    helped = _packages_loaded_by("from typer.testing import CliRunner; "
                             "assert CliRunner().invoke(worker.cli.app, ['--help']).exit_code == 0")
    assert not helped & {"rich", "markdown_it", "pydantic"}
    # `pool submit` parses all its options, then fails to reach a site that is not there (exit 1).
    submitted = _packages_loaded_by(
        "from typer.testing import CliRunner; r = CliRunner().invoke(worker.cli.app, ['submit', '--site', "
        "'http://127.0.0.1:9', '-t', '5', '--max-attempts', '2', '-e', 'A=1', '-l', 'p=x', '--timeout', '1.5', "
        "'--wait', '--', 'true']); assert r.exit_code == 1 and 'unreachable' in r.output, r.output")
    assert not submitted & {"rich", "markdown_it", "pydantic"}


def test_invalid_values_get_typers_own_messages():
    runner = CliRunner()
    for args, message in ((["status", "--limit", "0"], "'--limit' / '-n': Input should be greater than or equal to 1"),
                          (["status", "--limit", "many"], "Input should be a valid integer"),
                          (["submit", "--time-limit", "0.01", "--", "true"], "greater than or equal to 0.1"),
                          (["submit", "--bundle", "/no/such/dir"], "dir '/no/such/dir' does not exist.")):
        result = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert result.exit_code == 2 and message in result.output, (args, result.output)


def test_plain_conversion_gives_what_typer_gives(tmp_path):
    """Every value, valid or not, converts to the same value (and type) or fails with the same message
    through the plain conversion as through Typer's own (pydantic) one."""
    import typer
    from typer._click.exceptions import BadParameter
    from typer._coercion import build_runtime_param

    from worker.util.cli_coercion import plain_runtime_param

    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    probe = typer.Typer()

    @probe.command()
    def every_kind(text: str = "x", count: Annotated[int, typer.Option(min=1, max=500)] = 3, plain_int: int = 0,
                   limit: Annotated[float, typer.Option(min=0.1)] = 600, plain_float: float = 1.5,
                   clamped: Annotated[int, typer.Option(min=1, max=5, clamp=True)] = 2,
                   directory: Annotated[Path, typer.Option(exists=True, file_okay=False)] = Path("."),
                   anywhere: Path = Path(".pool"), items: Annotated[list[str] | None, typer.Option()] = None,
                   flag: bool = False) -> None:
        """A command with a parameter of each kind `pool` uses."""

    command = typer.main.get_command(probe)
    ctx = command.make_context("every-kind", [])
    values = {
        "text": ["x", "", " spaced ", "-", b"bytes", 5],
        "count": ["3", "1", "500", "0", "501", "-1", "many", "+3", "03", " 3", "1_0", "3.0", 3, 3.0, True, "9" * 30],
        "plain_int": ["0", "-0", "-7", "123456789012345678", "1e3", 7],
        "limit": ["600", "0.1", "0.05", "1e3", "1E-1", ".5", "5.", "-1", "inf", "nan", "abc", " 1", 600, 0.5, "1e99"],
        "plain_float": ["1.5", "-2.25", "1_000.5", "0x10", 2, False],
        "clamped": ["3", "0", "9", "x"],
        "directory": [str(tmp_path), str(a_file), str(tmp_path / "missing"), tmp_path, "."],
        "anywhere": [".pool", str(tmp_path / "missing"), str(a_file), Path("x"), ""],
        "items": [("a", "b"), [], ("a",), ("a", 1), "a"],
        "flag": [True, False, "yes", "0", "", 1],
    }
    covered = set()
    for param in command.params:
        if param.name not in values:
            continue
        plain = plain_runtime_param(param.type_descriptor)
        assert plain is not None, param.name
        own = build_runtime_param(param.type_descriptor)
        covered.add(param.name)
        for value in values[param.name]:
            outcomes = []
            for conversion in (plain, own):
                try:
                    result = conversion.coerce(value, param=param, ctx=ctx)
                    outcomes.append(("ok", result, type(result)))
                except BadParameter as exc:
                    outcomes.append(("error", exc.format_message(), None))
            assert outcomes[0] == outcomes[1], (param.name, value, outcomes)
    assert covered == set(values)


def test_the_command_table_matches_what_each_module_registers():
    """worker.cli.COMMANDS (the lazily loaded areas) names every command of every area, and only those."""
    import typer

    from worker.cli import COMMANDS, command_area

    registered: dict[str, str | None] = {"version": None}
    for module in dict.fromkeys(m for m in COMMANDS.values() if m is not None):
        group = typer.main.get_group(command_area(module))
        registered.update(dict.fromkeys(group.commands, module))
    assert registered == COMMANDS


def test_a_command_loads_only_its_own_area():
    code = ("import sys; from typer.testing import CliRunner; from worker.cli import app; "
            "r = CliRunner().invoke(app, ['submit', '--site', 'http://127.0.0.1:9', '--', 'true']); "
            "assert r.exit_code == 1, r.output; print(' '.join(m for m in sys.modules if m.endswith('.commands')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["worker.site.commands"]


def test_command_modules_do_not_postpone_annotations():
    """Typer evaluates string annotations (twice) for every parameter while building the commands:
    `from __future__ import annotations` in a command module costs start-up time (worker/cli.py)."""
    import __future__

    import importlib

    from worker.cli import COMMANDS

    for module in {m for m in COMMANDS.values() if m is not None}:
        assert getattr(importlib.import_module(module), "annotations", None) is not __future__.annotations, module


@pytest.mark.parametrize("command", [[], ["local"], ["competition"], ["node"]], ids=lambda c: " ".join(c) or "pool")
def test_a_group_without_a_command_prints_its_help_and_exits_2(command):
    result = CliRunner().invoke(app, command, env={"COLUMNS": "200"})
    assert result.exit_code == 2 and ("Usage: pool " + " ".join(command)).strip() in result.output
    assert "Commands:" in result.output


def test_usage_errors_keep_typers_error_panel():
    result = CliRunner().invoke(app, ["subnit"], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "No such command 'subnit'. Did you mean 'submit'" in result.output
    assert "─ Error ─" in result.output  # the same rich panel as before the help became plain

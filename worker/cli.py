"""The ``pool`` command. It only wires: each area registers its commands from its own module."""

from __future__ import annotations

import functools
import importlib
from typing import Any, NoReturn

import typer
import typer.main
from typer.core import TyperGroup

from worker.errors import PoolError
from worker.util import cli_coercion

# Every top-level command, in the order `pool --help` lists them, with the module whose
# register(app: typer.Typer) adds it (None: defined here). A module is imported, and its commands
# built, only when one of its commands runs or the full help is shown: `pool submit` pays for no
# other area (tests/test_cli.py checks this table against what the modules register). These modules
# do not postpone annotations (no `from __future__ import annotations`): Typer would evaluate every
# annotation string, twice, while building the commands (~35 ms of a ~150 ms `pool --help`).
COMMANDS: dict[str, str | None] = {
    "emulator": "worker.emulator.commands",
    "demo": "worker.local.commands",
    "submit": "worker.site.commands",  # submit, status, logs, cancel, rerun: thin clients of the site's API
    "status": "worker.site.commands",
    "logs": "worker.site.commands",
    "cancel": "worker.site.commands",
    "rerun": "worker.site.commands",
    "version": None,
    "agent": "worker.agent.commands",
    "local": "worker.local.commands",  # local up/down
    "competition": "worker.local.commands",  # create, limits; import (from worker.site.commands)
    "site": "worker.site.commands",  # site serve
    "sandbox": "worker.execution.commands",  # sandbox check
    "node": "worker.node.commands",  # SSH operations on workers
}


@functools.cache
def command_area(module: str) -> typer.Typer:
    """The commands one module registers (each module keeps heavy imports inside its commands)."""
    area = typer.Typer()
    importlib.import_module(module).register(area)
    return area


def _plain_help(command: Any) -> None:
    """Click's plain help for this command and its subcommands: Typer's rich help imports rich,
    markdown-it and pygments (~0.15 s of a ~0.3 s `pool --help`). Usage errors keep Typer's panel,
    drawn by the root group's mode (rich is imported only when an error is shown)."""
    command.rich_markup_mode = None  # type: ignore[attr-defined]
    for sub in getattr(command, "commands", {}).values():
        _plain_help(sub)


class _PoolGroup(TyperGroup):
    """Every command's expected failures (:class:`PoolError`) end the same way: one line, exit 2.
    Commands come from their modules when first asked for (:data:`COMMANDS`); their help is plain."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        for command in self.commands.values():
            _plain_help(command)

    def format_help(self, ctx, formatter):  # type: ignore[no-untyped-def]
        errors_mode, self.rich_markup_mode = self.rich_markup_mode, None
        try:
            return super().format_help(ctx, formatter)
        finally:
            self.rich_markup_mode = errors_mode

    def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            _no_args_help(ctx.get_help())
        return super().parse_args(ctx, args)

    def list_commands(self, ctx):  # type: ignore[no-untyped-def]
        return [*COMMANDS, *(name for name in self.commands if name not in COMMANDS)]

    def get_command(self, ctx, name):  # type: ignore[no-untyped-def]
        module = COMMANDS.get(name)
        if name not in self.commands and module is not None:
            self._load(module)
        return super().get_command(ctx, name)

    def resolve_command(self, ctx, args):  # type: ignore[no-untyped-def]
        if args and args[0] not in COMMANDS:  # an unknown command: "Did you mean ..." needs every name
            for module in dict.fromkeys(m for m in COMMANDS.values() if m is not None):
                self._load(module)
        return super().resolve_command(ctx, args)

    def _load(self, module: str) -> None:
        group = typer.main.get_group(command_area(module))  # built as Typer builds them (fresh per app call)
        for name, command in group.commands.items():
            _plain_help(command)
            self.commands.setdefault(name, command)

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except PoolError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None
        except Exception as exc:
            if type(exc).__name__ != "NoArgsIsHelpError":  # told by name, as Typer does
                raise
            _no_args_help(exc.format_message())  # type: ignore[attr-defined] # e.g. `pool local`: its help


def _no_args_help(text: str) -> NoReturn:
    """A group given no command prints its help and exits 2, as Typer does (its rich error handler,
    used for the errors' panels, would print nothing for the plain help)."""
    typer.echo(text)
    raise typer.Exit(2)


cli_coercion.install()  # parameters converted without importing pydantic where they can (start-up time)

app = typer.Typer(
    cls=_PoolGroup,
    name="pool",
    help=(
        "compute-pools: run competition submissions and other long tasks on pools of workers "
        "fed by Azure Service Bus queues — or, with no cloud account, on the local stack "
        "(start with `pool demo`)."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",  # of usage errors only: the help is plain (_plain_help)
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _pool() -> None:
    # The root is a group of lazily loaded commands (_PoolGroup); this callback keeps Typer from
    # turning an app with one eagerly registered command (version) into that single command.
    pass


@app.command()
def version() -> None:
    """Print the installed compute-pools version."""
    from worker import __version__

    typer.echo(__version__)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

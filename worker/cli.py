"""The ``pool`` command. It only wires: each area registers its commands from its own module."""

from __future__ import annotations

import importlib

import typer
from typer.core import TyperGroup

from worker.errors import PoolError
from worker.util import cli_coercion


class _PoolGroup(TyperGroup):
    """Every command's expected failures (:class:`PoolError`) end the same way: one line, exit 2."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except PoolError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None


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
    # Plain (click) help: Typer's rich help imports rich and markdown-it, ~0.15 s of a 0.3 s `--help`.
    rich_markup_mode=None,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Each module exposes register(app: typer.Typer) and keeps heavy imports inside its commands,
# so `pool --help` stays fast.
_COMMAND_MODULES = (
    "worker.emulator.commands",  # pool emulator
    "worker.agent.commands",  # pool agent
    "worker.local.commands",  # pool local up/down, demo, competition
    "worker.site.commands",  # pool site serve; submit, status, logs, cancel, rerun (API clients)
    "worker.execution.commands",  # pool sandbox check
    "worker.node.commands",  # pool node (SSH operations on workers)
)

for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)


@app.command()
def version() -> None:
    """Print the installed compute-pools version."""
    from worker import __version__

    typer.echo(__version__)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

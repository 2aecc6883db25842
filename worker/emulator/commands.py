"""``pool emulator``: run the local Service Bus endpoint."""

import os
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command(name="emulator")(emulator)


def emulator(
    config: Annotated[Path, typer.Option(
        "--config", "-c", exists=True, dir_okay=False, readable=True,
        help="YAML file with namespace policies and queues (see worker/emulator/sample-config.yaml "
             "and docs/emulator.md).")],
    host: Annotated[str, typer.Option(
        help="Address to bind (AMQP and HTTP). Keep 127.0.0.1 unless other machines must reach it: "
             "traffic is not encrypted.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="AMQP port (0 picks a free one).")] = 5672,
    data_dir: Annotated[Path, typer.Option(
        "--data-dir", help="Directory for the SQLite store (messages survive restarts).")] = Path(".pool/emulator"),
    http_port: Annotated[int | None, typer.Option(
        "--http-port", help="Serve /healthz, /metrics and the runtime queue API on this port "
                            "(0 picks a free one; omitted = no HTTP).")] = None,
    ready_file: Annotated[Path | None, typer.Option(
        "--ready-file", hidden=True, help="Write pid and bound ports as JSON here once serving.")] = None,
    exit_with_parent: Annotated[bool, typer.Option(
        "--exit-with-parent", hidden=True, help="Stop when the parent process exits (test fixtures).")] = False,
    durability: Annotated[str, typer.Option(
        help="SQLite synchronous mode: 'full' fsyncs every commit (survives power loss), "
             "'normal' survives process crashes only.")] = "full",
) -> None:
    """Run the local Azure Service Bus endpoint (AMQP 1.0) that the unchanged azure-servicebus SDK talks to.

    Prints one connection string per policy (they end in ;UseDevelopmentEmulator=true, which makes
    the SDK use plain AMQP on the given port). Stop with Ctrl-C or SIGTERM.
    """
    try:
        import proton  # noqa: F401  (the AMQP engine; only the `local` extra installs it)
    except ImportError:
        typer.echo("pool emulator needs python-qpid-proton: pip install 'compute-pools[local]'", err=True)
        raise typer.Exit(2) from None
    from worker.emulator.app import run
    from worker.emulator.config import ConfigError
    from worker.emulator.storelock import StoreLocked

    if durability.lower() not in ("full", "normal"):
        raise typer.BadParameter("must be 'full' or 'normal'", param_hint="--durability")
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        run(config, data_dir, host, port, http_port, ready_file, durability.upper(),
            parent_pid=os.getppid() if exit_with_parent else None)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except StoreLocked as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"error: cannot serve on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from exc

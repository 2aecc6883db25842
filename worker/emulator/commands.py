"""``pool emulator``: run the local Service Bus endpoint."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command(name="emulator")(emulator)


def emulator(
    config: Path = typer.Option(..., "--config", "-c", exists=True, dir_okay=False, readable=True,
                                help="YAML file with namespace policies and queues "
                                     "(see worker/emulator/sample-config.yaml and docs/emulator.md)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (AMQP and HTTP). Keep 127.0.0.1 unless "
                                               "other machines must reach it: traffic is not encrypted."),
    port: int = typer.Option(5672, help="AMQP port (0 picks a free one)."),
    data_dir: Path = typer.Option(Path(".pool/emulator"), "--data-dir",
                                  help="Directory for the SQLite store (messages survive restarts)."),
    http_port: int | None = typer.Option(None, "--http-port",
                                         help="Serve /healthz, /metrics and the runtime queue API on this "
                                              "port (0 picks a free one; omitted = no HTTP)."),
    ready_file: Path | None = typer.Option(None, "--ready-file", hidden=True,
                                           help="Write pid and bound ports as JSON here once serving."),
    durability: str = typer.Option("full", help="SQLite synchronous mode: 'full' fsyncs every commit "
                                                "(survives power loss), 'normal' survives process crashes."),
) -> None:
    """Run the local Azure Service Bus endpoint (AMQP 1.0) that the unchanged azure-servicebus SDK talks to.

    Prints one connection string per policy (they end in ;UseDevelopmentEmulator=true, which makes
    the SDK use plain AMQP on the given port). Stop with Ctrl-C or SIGTERM.
    """
    from worker.emulator.app import run
    from worker.emulator.config import ConfigError

    if durability.lower() not in ("full", "normal"):
        raise typer.BadParameter("must be 'full' or 'normal'", param_hint="--durability")
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        run(config, data_dir, host, port, http_port, ready_file, durability.upper())
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except OSError as exc:
        typer.echo(f"error: cannot serve on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from exc

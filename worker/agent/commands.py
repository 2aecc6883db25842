"""``pool agent --config FILE``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def agent(
        config: Annotated[Path, typer.Option("--config", "-c", help="Agent config file (YAML); see docs/agent.md.")],
        check: Annotated[bool, typer.Option("--check", help="Validate the config and the driver, then exit.")] = False,
    ) -> None:
        """Run a worker agent: take tasks one at a time from the pool's queue, run them, stream their
        logs to blobs and report statuses. SIGTERM/Ctrl-C: take no new task, let the current one
        finish within shutdown_grace_s (else hand it back to the queue), exit 0."""
        import logging
        import threading

        from worker.config import ConfigError, load_agent_config
        from worker.execution.base import DriverUnavailable

        try:
            cfg = load_agent_config(config)
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        logging.basicConfig(level=cfg.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("azure").setLevel(logging.WARNING)
        logging.getLogger("uamqp").setLevel(logging.WARNING)
        from worker.agent.signals import stop_on_signals
        from worker.agent.worker import Agent

        stop = threading.Event()
        try:
            worker = Agent(cfg, stop)
        except (DriverUnavailable, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        if check:
            typer.echo(f"config OK; driver {worker.driver.name} available; worker id {worker.worker_id}")
            return
        stop_on_signals(stop)
        raise typer.Exit(worker.run())

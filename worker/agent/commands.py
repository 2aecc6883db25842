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

        from worker.config import load_agent_config

        cfg = load_agent_config(config)  # a ConfigError ends the command with one line (worker.cli)
        logging.basicConfig(level=cfg.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("azure").setLevel(logging.WARNING)
        logging.getLogger("uamqp").setLevel(logging.WARNING)
        from worker.agent.signals import stop_on_signals
        from worker.agent.worker import Agent

        stop = threading.Event()
        worker = Agent(cfg, stop)  # DriverUnavailable / ConfigError: one line, exit 2
        if check:
            typer.echo(f"config OK; driver {worker.driver.name} available; worker id {worker.worker_id}")
            return
        stop_on_signals(stop)
        raise typer.Exit(worker.run())

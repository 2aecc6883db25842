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
        metrics_port: Annotated[int | None, typer.Option(
            "--metrics-port", min=0, max=65535, envvar="POOL_AGENT_METRICS_PORT",
            help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics (tasks, failures by kill reason, "
                 "durations, last report).")] = None,
        log_format: Annotated[str, typer.Option("--log-format", help="text or json (one object per line).")] = "text",
    ) -> None:
        """Run a worker agent: take tasks one at a time from the pool's queue, run them, stream their
        logs to blobs and report statuses. SIGTERM/Ctrl-C: take no new task, let the current one
        finish within shutdown_grace_s (else hand it back to the queue), exit 0."""
        import logging
        import threading

        from worker.config import load_agent_config

        cfg = load_agent_config(config)  # a ConfigError ends the command with one line (worker.cli)
        if log_format not in ("text", "json"):
            typer.echo("error: --log-format must be text or json", err=True)
            raise typer.Exit(2)
        from worker.util.logs import configure_logging

        configure_logging(log_format, cfg.log_level.upper())
        from worker.agent.signals import stop_on_signals
        from worker.agent.worker import Agent

        stop = threading.Event()
        worker = Agent(cfg, stop)  # DriverUnavailable / ConfigError: one line, exit 2
        if check:
            typer.echo(f"config OK; driver {worker.driver.name} available; worker id {worker.worker_id}")
            return
        if metrics_port is not None:
            from worker.agent.metrics import AgentMetrics

            worker.metrics = AgentMetrics(worker.worker_id, cfg.pool or cfg.servicebus.task_queue)
            port = worker.metrics.serve(metrics_port)
            logging.getLogger("worker.agent").info("metrics: http://127.0.0.1:%d/metrics", port)
        stop_on_signals(stop)
        try:
            raise typer.Exit(worker.run())
        finally:
            if worker.metrics is not None:
                worker.metrics.close()

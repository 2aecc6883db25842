"""``pool agent --config FILE`` (run the agent) and its local control surface: ``pool agent status``,
``pool agent drain``, ``pool agent resume`` (see worker/agent/state.py)."""

from pathlib import Path
from typing import Annotated

import typer

DEFAULT_CONFIG = Path("/etc/pool-agent/agent.yaml")  # where the image's service reads it

ConfigOption = Annotated[Path, typer.Option(
    "--config", "-c", help="The agent's config file (its control_dir, default work_dir's parent, holds the state).")]
ControlDirOption = Annotated[Path | None, typer.Option(
    "--control-dir", help="The agent's control directory, instead of reading it from --config.")]


def _control_dir(config: Path, control_dir: Path | None) -> Path:
    if control_dir is not None:
        return control_dir
    from worker.config import ConfigError, load_agent_config

    try:
        return load_agent_config(config).resolved_control_dir()
    except ConfigError as exc:
        hint = " (the image's config is readable by root: use sudo)" if "Permission denied" in str(exc) else ""
        typer.echo(f"error: {exc}{hint}", err=True)
        raise typer.Exit(2) from None


def _age(stamp: str | None) -> str:
    if not stamp:
        return "never"
    from datetime import UTC, datetime

    seconds = max(0, int((datetime.now(UTC) - datetime.fromisoformat(stamp)).total_seconds()))
    return f"{stamp} ({seconds}s ago)"


def status_report(control_dir: Path) -> dict:
    """The state file plus what only a reader can tell: whether the writing process still runs."""
    import dataclasses

    import psutil

    from worker.agent.state import drain_requested, read_state

    try:
        state = read_state(control_dir)
    except (ValueError, TypeError):  # cut short by a power loss (it is not fsynced): say so
        return {"state": "unknown", "running": False, "drain_requested": drain_requested(control_dir),
                "control_dir": str(control_dir), "error": "the state file is unreadable"}
    if state is None:
        return {"state": "unknown", "running": False, "drain_requested": drain_requested(control_dir),
                "control_dir": str(control_dir), "error": "no state file: the agent has not run here yet"}
    report = dataclasses.asdict(state)
    running = state.state != "stopped" and psutil.pid_exists(state.pid)
    report["running"] = running
    report["drain_requested"] = drain_requested(control_dir)  # the flag itself, even if not yet seen
    report["control_dir"] = str(control_dir)
    if state.state != "stopped" and not running:
        report["state"] = "dead"  # the process that wrote it is gone without saying so
        report["last_state"] = state.state
    return report


def register(app: typer.Typer) -> None:
    agent_app = typer.Typer(no_args_is_help=False, context_settings={"help_option_names": ["-h", "--help"]})

    @agent_app.callback(invoke_without_command=True)
    def agent(
        ctx: typer.Context,
        config: Annotated[Path | None, typer.Option(
            "--config", "-c", help="Agent config file (YAML); see docs/agent.md.")] = None,
        check: Annotated[bool, typer.Option("--check", help="Validate the config and the driver, then exit.")] = False,
        metrics_port: Annotated[int | None, typer.Option(
            "--metrics-port", min=0, max=65535, envvar="POOL_AGENT_METRICS_PORT",
            help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics (tasks, failures by kill reason, "
                 "durations, last report).")] = None,
        log_format: Annotated[str, typer.Option("--log-format", help="text or json (one object per line).")] = "text",
    ) -> None:
        """Run a worker agent: take tasks one at a time from the pool's queue, run them, stream their
        logs to blobs and report statuses. SIGTERM/Ctrl-C: take no new task, let the current one
        finish within shutdown_grace_s (else hand it back to the queue), exit 0. `status`, `drain` and
        `resume` read and steer a running agent on this machine (see docs/operations.md)."""
        if ctx.invoked_subcommand is not None:
            return
        if config is None:
            typer.echo(ctx.get_help())
            typer.echo("\nerror: --config is required to run the agent", err=True)
            raise typer.Exit(2)
        _run_agent(config, check, metrics_port, log_format)

    @agent_app.command("status")
    def status(
        config: ConfigOption = DEFAULT_CONFIG,
        control_dir: ControlDirOption = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the state as JSON.")] = False,
    ) -> None:
        """Show what the agent on this machine is doing: state (starting, idle, busy, draining, drained,
        stopped; `dead` when its process is gone without stopping), current task, counts, version.
        Exit 1 when the agent is not running."""
        import json

        report = status_report(_control_dir(config, control_dir))
        if as_json:
            typer.echo(json.dumps(report, indent=1))
        else:
            _print_status(report)
        raise typer.Exit(0 if report["running"] else 1)

    @agent_app.command("drain")
    def drain(
        config: ConfigOption = DEFAULT_CONFIG,
        control_dir: ControlDirOption = None,
        wait: Annotated[float, typer.Option(
            "--wait", help="Seconds to wait until the agent holds no task (0: return at once).")] = 0,
    ) -> None:
        """Let the agent finish its current task and take no new one. The flag is a file: it survives
        an agent restart until `pool agent resume`. With --wait, exit 1 if a task is still running then."""
        import getpass
        import time

        from worker.agent.state import request_drain

        where = _control_dir(config, control_dir)
        _require_dir(where)
        new = request_drain(where, by=getpass.getuser())
        typer.echo("drain requested" if new else "already draining")
        deadline = time.monotonic() + wait
        while True:
            report = status_report(where)
            idle = not report["running"] or (report.get("task_id") is None and report["state"] == "drained")
            if idle or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        _print_status(report)
        if wait and not idle:
            typer.echo(f"error: still running task {report.get('task_id')} after {wait:.0f}s", err=True)
            raise typer.Exit(1)

    @agent_app.command("resume")
    def resume(
        config: ConfigOption = DEFAULT_CONFIG,
        control_dir: ControlDirOption = None,
    ) -> None:
        """Clear the drain flag: the agent takes tasks again (within one receive wait)."""
        from worker.agent.state import clear_drain

        where = _control_dir(config, control_dir)
        _require_dir(where)
        typer.echo("resumed" if clear_drain(where) else "was not draining")

    app.add_typer(agent_app, name="agent")


def _require_dir(path: Path) -> None:
    if not path.is_dir():
        typer.echo(f"error: no agent control directory {path}", err=True)
        raise typer.Exit(2)


def _print_status(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    state = report["state"]
    if report.get("drain_requested") and state in ("idle", "busy"):
        state += " (drain requested, not yet seen by the agent)"
    if state == "dead":
        state += f" (last state {report.get('last_state')}, pid {report.get('pid')} gone)"
    rows = [("state", state)]
    if "error" in report:
        rows.append(("error", report["error"]))
    else:
        task = report.get("task_id")
        rows += [
            ("task", f"{task} attempt {report.get('task_attempt')} since {_age(report.get('task_since'))}"
             if task else "-"),
            ("worker", report.get("worker_id") or "-"),
            ("pool", report.get("pool") or "-"),
            ("driver", report.get("driver") or "-"),
            ("version", report.get("version") or "-"),
            ("pid", str(report.get("pid"))),
            ("started", _age(report.get("started_at"))),
            ("updated", _age(report.get("updated_at"))),
            ("last report", _age(report.get("last_report_at"))),
            ("tasks", f"{report.get('tasks_done', 0)} done, {report.get('tasks_failed', 0)} failed"),
        ]
    for key, value in rows:
        table.add_row(f"[bold]{key}[/]", value)
    Console(highlight=False).print(table)


def _run_agent(config: Path, check: bool, metrics_port: int | None = None, log_format: str = "text") -> None:
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

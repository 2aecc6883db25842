# ruff: noqa: B008 - typer declares options as argument defaults
"""CLI of the local stack: ``pool local up|down``, ``pool demo``, ``pool competition create``
(``pool submit|status|logs|cancel|rerun`` are clients of the site's API: worker.site.commands). Heavy imports stay inside the commands (``pool --help`` stays fast)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

DATA_DIR_HELP = "Directory of the local stack (profile, database, blobs, logs)."


def _data_dir_option() -> Path:
    return typer.Option(Path(".pool"), "--data-dir", "-d", envvar="POOL_DATA_DIR", help=DATA_DIR_HELP)


local_app = typer.Typer(help="Run the whole system on this machine: emulator, Azurite, site, agents.",
                        no_args_is_help=True)
competition_app = typer.Typer(help="Manage competitions (= pools: a task queue and a response queue, "
                                   "plus blob containers).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(local_app, name="local")
    app.add_typer(competition_app, name="competition")
    app.command(name="demo")(demo)
    from worker.site.commands import competition_import, competition_retire  # typer only: cheap

    competition_app.command("import")(competition_import)
    competition_app.command("retire")(competition_retire)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def _open_site(data_dir: Path, *, require_running: bool = True):  # type: ignore[no-untyped-def]
    """The local stack's site (a context manager), or a clean exit saying why there is none."""
    from worker.local.client import open_site
    from worker.local.profile import StackNotRunning

    try:
        return open_site(data_dir, require_running=require_running)
    except StackNotRunning as exc:
        raise _fail(str(exc)) from None


# --- pool local up / down ----------------------------------------------------------------------------
@local_app.command("up")
def local_up(
    workers: int = typer.Option(2, "--workers", "-w", min=0, help="Agents per pool."),
    driver: str = typer.Option("auto", "--driver", help="Execution driver of the agents: auto (default: bwrap "
                                                      "where `pool sandbox check` passes, else process with a "
                                                      "warning), bwrap, process (unsandboxed, opt-in)..."),
    competition: list[str] = typer.Option(["default"], "--competition", "-c",
                                          help="Competition(s) to create at start (repeatable)."),
    database_url: str | None = typer.Option(None, "--database-url", envvar="POOL_DATABASE_URL",
                                            help="The site database (default: SQLite in the data dir), e.g. "
                                                 "postgresql+psycopg://user@host/db."),
    data_dir: Path = _data_dir_option(),
) -> None:
    """Start the local stack in the foreground and keep it running until Ctrl-C / SIGTERM.

    Starts the Service Bus emulator, Azurite, the site's watcher and monitor, and N agents for every
    pool; writes DATA_DIR/profile.yaml so other `pool` commands find the stack; prints a line
    containing `ready` when every component accepts work. Pools created later with
    `pool competition create` get their agents without a restart.
    """
    import signal
    import threading

    from worker.local.stack import LocalStack, StackError

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stack = LocalStack(data_dir, workers=workers, driver=driver, competitions=tuple(competition),
                       database_url=database_url, on_output=lambda line: typer.echo(line))
    try:
        stack.start()
    except (StackError, RuntimeError, ValueError) as exc:
        raise _fail(str(exc)) from None
    pools = ", ".join(sorted(stack.agents))
    typer.echo(f"site: {stack.service.url}   (dashboard and API; token: site_token in {stack.data_dir}/profile.yaml)")
    typer.echo(f"ready: pools {pools}; {workers} agent(s) per pool; data dir {stack.data_dir}")
    typer.echo(f"  submit:  pool submit --data-dir {data_dir} --wait -- echo hello")
    typer.echo(f"  status:  pool status --data-dir {data_dir}      stop: Ctrl-C")
    sys.stdout.flush()
    try:
        stack.supervise(stop)
    finally:
        typer.echo("stopping...")
        stack.stop()
        typer.echo("stopped")


@local_app.command("down")
def local_down(data_dir: Path = _data_dir_option(),
               timeout: float = typer.Option(60, help="Seconds to wait for a clean stop.")) -> None:
    """Stop a stack started with `pool local up` in another terminal (sends it SIGTERM).

    Also after a crash: when `pool local up` is gone (killed) but its emulator, Azurite or agents
    still run, they are found from the profile and the data dir and stopped."""
    import os
    import signal
    import time

    from worker.local.profile import StackNotRunning, load_profile, update_profile
    from worker.local.survivors import find_survivors, stop_survivors

    try:
        profile = load_profile(data_dir, require_running=False)
    except StackNotRunning as exc:
        raise _fail(str(exc)) from None
    if profile.alive and profile.state != "stopped":
        os.kill(profile.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while profile.alive and time.monotonic() < deadline:
            time.sleep(0.2)
        if profile.alive:
            raise _fail(f"pid {profile.pid} still running after {timeout:.0f} s")
        crashed = False
    else:
        crashed = True
    survivors = find_survivors(data_dir, profile)
    if survivors:
        if crashed:
            typer.echo(f"the stack's own process (pid {profile.pid}) is gone; stopping what it left running")
        stop_survivors(survivors, typer.echo)
    elif crashed:
        raise _fail(f"the local stack in {data_dir.resolve()} is not running (pid {profile.pid} is gone) "
                    "and left nothing running")

    def stopped(p) -> None:  # type: ignore[no-untyped-def]
        p.state = "stopped"

    update_profile(data_dir, stopped)
    typer.echo("stopped")


# --- pool competition create ------------------------------------------------------------------------
@competition_app.command("create")
def competition_create(
    name: str = typer.Argument(..., help="3-50 lowercase letters, digits and hyphens."),
    data_dir: Path = _data_dir_option(),
    azure: bool = typer.Option(False, "--azure", help="Create it in Azure with the Pulumi program instead."),
    stack_config: Path | None = typer.Option(None, "--stack-config", help="(--azure) Pulumi stack config file."),
    stack: str | None = typer.Option(None, "--stack", help="(--azure) Pulumi stack name."),
    site: str | None = typer.Option(None, "--site", envvar="POOL_SITE_URL",
                                    help="(--azure) Register the new pool with this site (token: $POOL_SITE_TOKEN); "
                                         "without it, the site.yaml entry is printed."),
    on_site: bool = typer.Option(False, "--on-site", help="(--azure) Let the site deploy it (POST /api/v1/pools "
                                 "with azure; the site needs the Pulumi CLI and Azure rights) and follow it here."),
) -> None:
    """Create a competition: its task/response queue pair (worker and site policies with least
    rights), its blob containers and its pool on the site. On the local stack this happens at
    runtime, no restart; `pool local up` starts its agents."""
    from worker.config import check_competition_name
    from worker.errors import PoolError

    check_competition_name(name)  # a ConfigError: one line, exit 2 (worker.cli)
    if on_site:
        if not azure:
            raise _fail("--on-site is for --azure (a local pool is created on the local stack)", 2)
        from worker.site.commands import create_on_site

        create_on_site(name, stack_config, stack, site, data_dir)
        return
    if azure:
        try:
            from worker.site import provisioning
        except ImportError as exc:
            raise _fail(f"the Azure path needs the infra extra (pip install 'compute-pools[infra]'): {exc}") from None
        try:
            outputs = provisioning.create_competition_stack(name, config_file=stack_config, stack=stack,
                                                            on_output=typer.echo)
        except PoolError as exc:
            raise _fail(str(exc)) from None
        secret = getattr(provisioning, "SECRET_OUTPUTS", frozenset())
        for key, value in sorted(outputs.items()):  # the site's connection strings are not printed
            typer.echo(f"{key}: {'(secret: read it with `pulumi stack output --show-secrets`)' if key in secret else value}")
        from worker.site.commands import register_outputs

        register_outputs(outputs, site)
        return
    from worker.local.competition import create_local_competition

    try:
        info = create_local_competition(data_dir, name)
    except PoolError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"competition {name}: task queue {info.task_queue}, response queue {info.response_queue}, "
               f"containers {name}-bundles/-logs/-outputs")


@competition_app.command("limits")
def competition_limits(
    name: str = typer.Argument(..., help="The pool (competition)."),
    max_in_flight: int | None = typer.Option(None, "--max-in-flight", min=0,
                                             help="Tasks sent and not final, all participants (0: no limit)."),
    max_per_label: int | None = typer.Option(None, "--max-per-label", min=0,
                                             help="The same per participant label (0: no limit)."),
    retry_budget: int | None = typer.Option(None, "--retry-budget", min=0,
                                            help="Infrastructure retries per task (0: never retry)."),
    retry_backoff: float | None = typer.Option(None, "--retry-backoff", min=0.01,
                                               help="First retry's delay in seconds (doubles each time)."),
    retry_backoff_max: float | None = typer.Option(None, "--retry-backoff-max", min=0.01,
                                                   help="Longest delay between retries, seconds."),
    data_dir: Path = _data_dir_option(),
) -> None:
    """Show or set a pool's admission limits and infrastructure retry budget (docs/site.md)."""
    from worker.errors import PoolError
    from worker.site.db import transaction
    from worker.site.pools import set_limits

    given = {"max_in_flight": max_in_flight, "max_in_flight_per_label": max_per_label,
             "retry_budget": retry_budget, "retry_backoff_s": retry_backoff, "retry_backoff_max_s": retry_backoff_max}
    with _open_site(data_dir, require_running=False) as site, transaction(site.sessions) as session:
        try:
            pool = set_limits(session, name, **{k: v for k, v in given.items() if v is not None})
        except (PoolError, ValueError) as exc:
            raise _fail(str(exc)) from None
        typer.echo(f"{pool.name}: max_in_flight={pool.max_in_flight or 'unlimited'} "
                   f"max_in_flight_per_label={pool.max_in_flight_per_label or 'unlimited'} "
                   f"retry_budget={pool.retry_budget} retry_backoff_s={pool.retry_backoff_s:g} "
                   f"retry_backoff_max_s={pool.retry_backoff_max_s:g}")


# --- pool demo --------------------------------------------------------------------------------------
def demo(
    workers: int = typer.Option(3, "--workers", "-w", min=1, help="Agents for the demo pool."),
    driver: str = typer.Option("auto", "--driver", help="Execution driver of the agents: auto (bwrap where it "
                                                      "works, else process with a warning), bwrap, process."),
    timeout: float = typer.Option(180, "--timeout", help="Give up after this many seconds."),
    data_dir: Path = _data_dir_option(),
) -> None:
    """The whole loop on this machine: starts the local stack (or uses the one running in DATA_DIR),
    creates the sample competition, evaluates a few submissions (one is expected to fail, one to
    time out), scores them, and prints a summary. Exits 0 when everything behaved as expected."""
    from worker.local.demo import run_demo

    raise typer.Exit(run_demo(data_dir, workers=workers, driver=driver, timeout=timeout))

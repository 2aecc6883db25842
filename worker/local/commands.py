# ruff: noqa: B008 - typer declares options as argument defaults
"""CLI of the local stack and of the site's everyday operations:
``pool local up|down``, ``pool submit``, ``pool status``, ``pool logs``, ``pool cancel``, ``pool demo``,
``pool competition create``. Heavy imports stay inside the commands (``pool --help`` stays fast)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from worker.site.service import Site

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
    app.command(name="submit")(submit)
    app.command(name="status")(status)
    app.command(name="logs")(logs)
    app.command(name="cancel")(cancel)
    app.command(name="demo")(demo)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def _open_site(data_dir: Path, *, require_running: bool = True) -> Site:
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
) -> None:
    """Create a competition: its task/response queue pair (worker and site policies with least
    rights), its blob containers and its pool on the site. On the local stack this happens at
    runtime, no restart; `pool local up` starts its agents."""
    from worker.config import check_competition_name
    from worker.errors import PoolError

    check_competition_name(name)  # a ConfigError: one line, exit 2 (worker.cli)
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
        return
    from worker.local.competition import create_local_competition

    try:
        info = create_local_competition(data_dir, name)
    except PoolError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"competition {name}: task queue {info.task_queue}, response queue {info.response_queue}, "
               f"containers {name}-bundles/-logs/-outputs")


# --- pool submit -------------------------------------------------------------------------------------
def submit(
    command: list[str] | None = typer.Argument(None, help="The command to run (after `--`)."),
    competition: str = typer.Option("default", "--competition", "-c", help="The pool to submit to."),
    bundle: Path | None = typer.Option(None, "--bundle", "-b", exists=True, file_okay=False,
                                       help="A directory uploaded as the program (at ../program from the "
                                            "working directory); runs its run.sh or main.py when no command "
                                            "is given."),
    inputs: list[str] = typer.Option([], "--input", "-i", help="NAME=PATH: a directory or file given to the "
                                                              "task at ../inputs/NAME (repeatable)."),
    time_limit: float = typer.Option(600, "--time-limit", "-t", min=0.1, help="Seconds before it is killed."),
    env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE for the program (repeatable)."),
    wait: bool = typer.Option(False, "--wait", "-w", help="Block until it ends; exit 0 only if it finished "
                                                          "successfully."),
    timeout: float | None = typer.Option(None, "--timeout", help="With --wait: give up after this many seconds."),
    data_dir: Path = _data_dir_option(),
) -> None:
    """Submit a task to a pool: `pool submit --wait -- python3 -c 'print(42)'` or
    `pool submit --bundle ./my-program --wait`."""
    from worker.errors import PoolError
    from worker.local.client import ClientError, bundle_command, open_site, wait_for
    from worker.site.producer import Submission

    argv = list(command or [])
    if not argv and bundle is None:
        raise _fail("give a command after `--` or a --bundle DIR", 2)
    try:
        if not argv:
            argv = bundle_command(bundle)  # type: ignore[arg-type]
        input_map = dict(_pair(i, "--input") for i in inputs)
        env_map = dict(_pair(e, "--env") for e in env)
        for name, path in input_map.items():
            if not Path(path).exists():
                raise ClientError(f"--input {name}={path}: no such file or directory")
        site = open_site(data_dir)
    except (PoolError, ValueError) as exc:
        raise _fail(str(exc), 2) from None
    with site:
        try:
            task = site.producer.submit(Submission(pool=competition, command=argv, program=bundle,
                                                   inputs={k: Path(v) for k, v in input_map.items()},
                                                   time_limit_s=time_limit, env=env_map))
        except (PoolError, FileNotFoundError, ValueError) as exc:
            raise _fail(str(exc)) from None
        typer.echo(f"submitted {task.id} to {competition}")
        if not wait:
            return
        try:
            task = wait_for(site, task.id, timeout=timeout)
        except TimeoutError as exc:
            raise _fail(str(exc), 3) from None
        _print_outcome(site, task)
    if not (task.state == "finished" and task.exit_code == 0):
        raise typer.Exit(1)


def _pair(text: str, option: str) -> tuple[str, str]:
    if "=" not in text:
        raise ValueError(f"{option} {text!r}: expected NAME=VALUE")
    key, value = text.split("=", 1)
    return key, value


def _print_outcome(site, task) -> None:  # type: ignore[no-untyped-def]
    from worker.site.queries import duration_s

    took = duration_s(task)
    parts = [f"{task.id}: {task.state}", f"exit code {task.exit_code if task.exit_code is not None else '-'}"]
    if took is not None:
        parts.append(f"ran {took:.2f} s")
    if task.attempt > 1:
        parts.append(f"attempt {task.attempt}")
    typer.echo(", ".join(parts))
    if task.reason:
        typer.echo(f"reason: {task.reason}")
    typer.echo(f"logs: pool logs {task.id}   (blobs: {site.storage.log_url(task.pool, task.id, task.attempt, 'stdout')}"
               f", .../stderr.log)")


# --- pool status ------------------------------------------------------------------------------------
def status(
    task_id: str | None = typer.Argument(None, help="Show one task and its history."),
    limit: int = typer.Option(20, "--limit", "-n", help="How many recent tasks to list."),
    competition: str | None = typer.Option(None, "--competition", "-c", help="Only this pool's tasks."),
    data_dir: Path = _data_dir_option(),
) -> None:
    """Pools (queue depth, dead letters, live workers, tasks per state) and recent tasks."""
    from rich.console import Console

    from worker.local import views
    from worker.local.client import ClientError, get_task

    console = Console()
    with _open_site(data_dir, require_running=False) as site:
        if task_id:
            try:
                get_task(site, task_id)
            except ClientError as exc:
                raise _fail(str(exc)) from None
            console.print(views.task_detail(site, task_id))
            return
        console.print(views.pools_table(site, agents=_local_agents(data_dir)))
        console.print(views.tasks_table(site, limit=limit, pool=competition))


def _local_agents(data_dir: Path) -> dict[str, list[tuple[str, str]]] | None:
    """The agents a running local stack keeps per pool (None when no stack runs)."""
    from worker.local.profile import StackNotRunning, load_profile

    try:
        profile = load_profile(data_dir)
    except (StackNotRunning, ValueError, OSError):
        return None
    return profile.agents_wanted()


# --- pool logs --------------------------------------------------------------------------------------
def logs(
    task_id: str = typer.Argument(..., help="The task."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep tailing until the task ends."),
    stream: str = typer.Option("both", "--stream", "-s", help="stdout, stderr or both."),
    attempt: int | None = typer.Option(None, "--attempt", help="Another attempt than the latest."),
    data_dir: Path = _data_dir_option(),
) -> None:
    """Print a task's stdout/stderr from blob storage (with --follow: live, while it runs)."""
    from worker.local.client import ClientError, stream_logs

    if stream not in ("stdout", "stderr", "both"):
        raise _fail("--stream must be stdout, stderr or both", 2)
    streams = ("stdout", "stderr") if stream == "both" else (stream,)

    def write(which: str, data: bytes) -> None:
        target = sys.stdout.buffer if which == "stdout" else sys.stderr.buffer
        target.write(data)
        target.flush()

    with _open_site(data_dir) as site:
        try:
            stream_logs(site, task_id, follow=follow, write=write, streams=streams, attempt=attempt)  # type: ignore[arg-type]
        except ClientError as exc:
            raise _fail(str(exc)) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None


# --- pool cancel ------------------------------------------------------------------------------------
def cancel(
    task_id: str = typer.Argument(..., help="The task."),
    reason: str = typer.Option("cancelled by the user", help="Recorded as the task's reason."),
    data_dir: Path = _data_dir_option(),
) -> None:
    """Cancel a task: a queued one at once, a running one within a few seconds."""
    with _open_site(data_dir) as site:
        try:
            task = site.producer.cancel(task_id, reason)
        except LookupError as exc:
            raise _fail(str(exc)) from None
    typer.echo(f"{task_id}: cancellation requested (state {task.state})")


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

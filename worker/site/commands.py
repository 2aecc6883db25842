# ruff: noqa: B008 - typer declares options as argument defaults
"""``pool site serve`` and the thin-client commands ``pool submit|status|logs|cancel|rerun``, which
talk to the site's HTTP API (a local stack's or a production site's, the same way). The client path
imports only the standard library, typer and rich (``pool --help`` and ``pool submit`` start fast)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import typer

site_app = typer.Typer(help="Run the site service: API, dashboard, metrics, watcher, monitor.", no_args_is_help=True)
STATE_STYLE = {"queued": "dim", "received": "cyan", "preparing": "cyan", "running": "yellow", "uploading": "cyan",
               "finished": "green", "failed": "red", "timed_out": "magenta", "cancelled": "blue"}
RUNNERS = (("run.sh", ["sh", "../program/run.sh"]), ("main.py", ["python3", "../program/main.py"]))


def register(app: typer.Typer) -> None:
    app.add_typer(site_app, name="site")
    for name, command in (("submit", submit), ("status", status), ("logs", logs), ("cancel", cancel),
                          ("rerun", rerun)):
        app.command(name=name)(command)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def _site_option() -> Any:
    return typer.Option(None, "--site", envvar="POOL_SITE_URL",
                        help="The site's URL (default: the local stack's, from DATA_DIR/profile.yaml). "
                             "Its token: $POOL_SITE_TOKEN.")


def _data_dir_option() -> Path:
    return typer.Option(Path(".pool"), "--data-dir", "-d", envvar="POOL_DATA_DIR",
                        help="Directory of the local stack (its profile names the site and its token).")


def _client(site: str | None, data_dir: Path):  # type: ignore[no-untyped-def]
    from worker.site.client import SiteClientError, find_site

    try:
        return find_site(site, None, data_dir)
    except SiteClientError as exc:
        raise _fail(str(exc)) from None


# --- pool site serve ---------------------------------------------------------------------------------
@site_app.command("serve")
def serve(
    config: Path = typer.Option(..., "--config", "-c", exists=True, dir_okay=False, help="site.yaml"),
    host: str | None = typer.Option(None, "--host", help="Override bind.host (default 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="Override bind.port (0: any free port)."),
    log_format: str = typer.Option("text", "--log-format", help="text or json (one object per line)."),
) -> None:
    """Run the site as a service: producer, watcher, monitor, the HTTP API under /api/v1 (OpenAPI at
    /docs), the dashboard at / and Prometheus metrics at /metrics, in one process. SIGTERM or Ctrl-C
    drains it: no new requests, live log tails end, the watcher commits what it holds, exit 0."""
    import logging

    from worker.config import ConfigError
    from worker.site.config import load_site_config
    from worker.site.server import SiteService
    from worker.util.logs import configure_logging

    if log_format not in ("text", "json"):
        raise _fail("--log-format must be text or json", 2)
    configure_logging(log_format)
    try:
        cfg = load_site_config(config)
    except ConfigError as exc:
        raise _fail(str(exc), 2) from None
    if host is not None:
        cfg.bind.host = host
    if port is not None:
        cfg.bind.port = port
    service = SiteService(cfg)
    try:
        service.start(serve_in_thread=False)
    except Exception as exc:  # noqa: BLE001 - say why it cannot start, in one line
        raise _fail(f"the site did not start: {exc}") from None
    logging.getLogger("worker.site").info("site: %s (API %s/api/v1, docs %s/docs)", service.url, service.url,
                                          service.url)
    typer.echo(f"site: {service.url}")
    sys.stdout.flush()
    service.serve_forever()
    typer.echo("stopped")


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
    labels: list[str] = typer.Option([], "--label", "-l", help="KEY=VALUE kept with the task, e.g. "
                                                               "participant=alice (repeatable)."),
    max_attempts: int = typer.Option(10, "--max-attempts", min=1, max=20,
                                     help="Most attempts in all; the pool's retry budget decides how often an "
                                          "infrastructure failure (worker lost, storage error...) is retried."),
    priority: int = typer.Option(0, "--priority", min=-1000, max=1000,
                                 help="Admission order under the pool's limits: higher first (e.g. 10 for "
                                      "baselines)."),
    wait: bool = typer.Option(False, "--wait", "-w", help="Block until it ends; exit 0 only if it finished "
                                                          "successfully."),
    timeout: float | None = typer.Option(None, "--timeout", help="With --wait: give up after this many seconds."),
    site: str | None = _site_option(),
    data_dir: Path = _data_dir_option(),
) -> None:
    """Submit a task to a pool: `pool submit --wait -- python3 -c 'print(42)'` or
    `pool submit --bundle ./my-program --wait`."""
    from worker.site.client import SiteClientError

    argv = list(command or [])
    if not argv and bundle is None:
        raise _fail("give a command after `--` or a --bundle DIR", 2)
    try:
        if not argv:
            argv = _bundle_command(bundle)  # type: ignore[arg-type]
        input_map = dict(_pair(i, "--input") for i in inputs)
        for name, path in input_map.items():
            if not Path(path).exists():
                raise ValueError(f"--input {name}={path}: no such file or directory")
        body: dict[str, Any] = {"pool": competition, "command": argv, "time_limit_s": time_limit,
                                "env": dict(_pair(e, "--env") for e in env),
                                "labels": dict(_pair(x, "--label") for x in labels), "max_attempts": max_attempts,
                                "priority": priority}
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    client = _client(site, data_dir)
    try:
        if bundle is not None:
            body["program"] = client.upload_bundle(competition, *_pack(bundle))
        if input_map:
            body["inputs"] = {n: client.upload_bundle(competition, *_pack(Path(p))) for n, p in input_map.items()}
        task = client.post("/api/v1/tasks", body)
    except SiteClientError as exc:
        raise _fail(str(exc), 2 if exc.status in (400, 404, 413, 422) else 1) from None
    typer.echo(f"submitted {task['id']} to {competition}")
    if not wait:
        return
    try:
        task = _wait(client, task["id"], timeout)
    except TimeoutError as exc:
        raise _fail(str(exc), 3) from None
    except SiteClientError as exc:
        raise _fail(str(exc)) from None
    _print_outcome(task)
    if not (task["state"] == "finished" and task["exit_code"] == 0):
        raise typer.Exit(1)


def _wait(client, task_id: str, timeout: float | None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Long polls: the site answers as soon as the task is final (or after up to 20 s)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = 20.0 if deadline is None else max(0.0, min(20.0, deadline - time.monotonic()))
        task = client.get(f"/api/v1/tasks/{task_id}", wait_s=round(left, 2) or None)
        if task["terminal"]:
            return task
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"task {task_id} still {task['state']} after {timeout:.0f} s")


def _bundle_command(bundle: Path) -> list[str]:
    for name, command in RUNNERS:
        if (bundle / name).is_file():
            return command
    raise ValueError(f"{bundle} has neither run.sh nor main.py: give the command after `--` "
                     "(the bundle is at ../program from the program's working directory)")


def _pack(path: Path) -> tuple[bytes, str]:
    """(data, kind): a directory packed as the site stores bundles (reproducible tar.gz); an archive
    (.tar.gz, .tgz, .zip) as is, extracted for the task; any other file as a single file."""
    if path.is_dir():
        from worker.storage import pack_directory

        return pack_directory(path), "archive"
    if path.name.endswith((".tar.gz", ".tgz", ".zip")):
        return path.read_bytes(), "archive"
    return path.read_bytes(), "file"


def _pair(text: str, option: str) -> tuple[str, str]:
    if "=" not in text:
        raise ValueError(f"{option} {text!r}: expected NAME=VALUE")
    key, value = text.split("=", 1)
    return key, value


def _print_outcome(task: dict[str, Any]) -> None:
    parts = [f"{task['id']}: {task['state']}",
             f"exit code {task['exit_code'] if task['exit_code'] is not None else '-'}"]
    if task.get("duration_s") is not None:
        parts.append(f"ran {task['duration_s']:.2f} s")
    if task["attempt"] > 1:
        parts.append(f"attempt {task['attempt']}")
    typer.echo(", ".join(parts))
    if task.get("reason"):
        typer.echo(f"reason: {task['reason']}")
    if task.get("failure_class") not in (None, "none"):
        typer.echo(f"failure: {task['failure_class']} ({task['failure_code']})")
    typer.echo(f"logs: pool logs {task['id']}   (blobs: {task['logs']['stdout']}, .../stderr.log)")


# --- pool status -------------------------------------------------------------------------------------
def _styled(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


def _n(value: Any) -> str:
    return "-" if value is None else str(value)


def status(
    task_id: str | None = typer.Argument(None, help="Show one task and its history."),
    limit: int = typer.Option(20, "--limit", "-n", min=1, max=500, help="How many recent tasks to list."),
    competition: str | None = typer.Option(None, "--competition", "-c", help="Only this pool's tasks."),
    site: str | None = _site_option(),
    data_dir: Path = _data_dir_option(),
) -> None:
    """Pools (queue depth, dead letters, live workers, tasks per state) and recent tasks; or one task."""
    from rich.console import Console
    from rich.table import Table

    from worker.site.client import SiteClientError

    client = _client(site, data_dir)
    console = Console()
    try:
        if task_id:
            console.print(*_task_detail(client.get(f"/api/v1/tasks/{task_id}")))
            return
        pools = client.get("/api/v1/pools")["pools"]
        tasks = client.get("/api/v1/tasks", limit=limit, pool=competition)["tasks"]
    except SiteClientError as exc:
        raise _fail(str(exc)) from None
    table = Table(title="pools", title_justify="left")
    table.add_column("pool", no_wrap=True)
    for column in ("depth", "DLQ", "workers", "idle", "waiting", "queued", "active", "done", "failed", "timeout",
                   "cancel", "done/min"):
        table.add_column(column, justify="right")
    short: list[str] = []
    for p in pools:
        t = p["tasks"]
        active = sum(t[s] for s in ("received", "preparing", "running", "uploading"))
        live, workers = p["workers"]["live"], str(p["workers"]["live"])
        wanted = client.local_agents.get(p["name"])  # a local stack: the agents it keeps for this pool
        if wanted and live < len(wanted):
            workers = f"[red]{live}/{len(wanted)}[/]"
            down = [f"{wid} {state.replace('_', ' ')}" for wid, state in wanted if state != "running"]
            short.append(f"{p['name']}: {live} of {len(wanted)} agents live" + (f" ({', '.join(down)})" if down else ""))
        table.add_row(p["name"], _n(p["queue"]["active"]), _n(p["queue"]["dead_lettered"]), workers,
                      str(p["workers"]["idle"]), str(t.get("waiting", 0)), str(t["queued"]), str(active),
                      str(t["finished"]), str(t["failed"]), str(t["timed_out"]), str(t["cancelled"]),
                      str(p["throughput"]["per_minute"]))
    if short:
        table.caption = "[red]short of agents[/] - " + "; ".join(short)
        table.caption_justify = "left"
    console.print(table)
    recent = Table(title=f"recent tasks (latest {limit})", title_justify="left")
    for column in ("task", "pool", "state", "exit", "took", "worker"):
        recent.add_column(column, no_wrap=True)
    recent.add_column("reason", overflow="fold", ratio=1, min_width=12)
    for t in tasks:
        state = _styled(t["state"]) + (f" (try {t['attempt']})" if t["attempt"] > 1 else "")
        took = f"{t['duration_s']:.1f}s" if t["duration_s"] is not None else "-"
        reason = t["reason"] or ""
        if t.get("failure_class") not in (None, "none"):
            reason = f"{t['failure_class']}/{t['failure_code']}: {reason}"
        recent.add_row(t["id"], t["pool"], state, _n(t["exit_code"]), took, t["worker_id"] or "-", reason[:120])
    console.print(recent)


def _task_detail(t: dict[str, Any]) -> list[Any]:
    from rich.table import Table

    summary = Table(show_header=False, title=f"task {t['id']}", title_justify="left")
    summary.add_column("field", style="bold")
    summary.add_column("value", overflow="fold")
    labels = ", ".join(f"{k}={v}" for k, v in t["labels"].items()) or "-"
    for field, value in (("pool", t["pool"]), ("state", _styled(t["state"])),
                         ("attempt", f"{t['attempt']} of {t['max_attempts']}"), ("command", " ".join(t["command"])),
                         ("time limit", f"{t['time_limit_s']:g} s"), ("labels", labels),
                         ("worker", t["worker_id"] or "-"), ("exit code", _n(t["exit_code"])),
                         ("kill reason", t["kill_reason"] or "-"), ("reason", t["reason"] or "-"),
                         ("failure", f"{t['failure_class']}: {t['failure_code']}" if t.get("failure_class") else "-"),
                         ("infrastructure retries", str(t.get("infra_retries", 0))),
                         ("label / priority", f"{t.get('label') or '-'} / {t.get('priority', 0)}"),
                         ("output bytes", _n(t["output_bytes"])), ("logs", t["logs"]["stdout"])):
        summary.add_row(field, value)
    history = Table(title="history", title_justify="left")
    for column in ("recorded", "attempt", "seq", "state", "by", "worker", "failure", "reason"):
        history.add_column(column, overflow="fold" if column == "reason" else "ellipsis")
    for e in t["history"]:
        failure = f"{e['failure_class']}/{e['failure_code']}" if e.get("failure_code") else ""
        history.add_row(e["recorded_at"][11:23], str(e["attempt"]), _n(e["seq"]), _styled(e["state"]), e["source"],
                        e["worker_id"] or "-", failure, e["reason"] or "")
    return [summary, history]


# --- pool logs ---------------------------------------------------------------------------------------
def logs(
    task_id: str = typer.Argument(..., help="The task."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep tailing until the task ends."),
    stream: str = typer.Option("both", "--stream", "-s", help="stdout, stderr or both."),
    attempt: int | None = typer.Option(None, "--attempt", min=1, help="Another attempt than the latest."),
    site: str | None = _site_option(),
    data_dir: Path = _data_dir_option(),
) -> None:
    """Print a task's stdout/stderr (with --follow: live, while it runs, through the site's
    Server-Sent Events tail)."""
    import threading

    from worker.site.client import SiteClientError

    if stream not in ("stdout", "stderr", "both"):
        raise _fail("--stream must be stdout, stderr or both", 2)
    streams = ("stdout", "stderr") if stream == "both" else (stream,)
    client = _client(site, data_dir)
    targets = {"stdout": sys.stdout, "stderr": sys.stderr}
    try:
        if not follow:
            query = f"?attempt={attempt}" if attempt else ""
            for name in streams:
                data = client._request("GET", f"/api/v1/tasks/{task_id}/logs/{name}{query}")
                text = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
                targets[name].write(text)
                targets[name].flush()
            return
        errors: list[Exception] = []

        def tail(name: str) -> None:
            try:
                for event, data in client.log_events(task_id, name, attempt):
                    if event == "end":
                        return
                    targets[name].write(data + "\n")
                    targets[name].flush()
            except Exception as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=tail, args=(name,), daemon=True) for name in streams]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
        if errors:
            raise errors[0]
    except SiteClientError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


# --- pool cancel / rerun -----------------------------------------------------------------------------
def cancel(
    task_id: str = typer.Argument(..., help="The task."),
    reason: str = typer.Option("cancelled by the user", help="Recorded as the task's reason."),
    site: str | None = _site_option(),
    data_dir: Path = _data_dir_option(),
) -> None:
    """Cancel a task: a queued one at once, a running one within a few seconds."""
    from worker.site.client import SiteClientError

    client = _client(site, data_dir)
    try:
        task = client.post(f"/api/v1/tasks/{task_id}/cancel", {"reason": reason})
    except SiteClientError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"{task_id}: cancellation requested (state {task['state']})")


def rerun(
    task_id: str = typer.Argument(..., help="A task in a final state (finished, failed, timed out, cancelled)."),
    wait: bool = typer.Option(False, "--wait", "-w", help="Block until the new attempt ends."),
    site: str | None = _site_option(),
    data_dir: Path = _data_dir_option(),
) -> None:
    """Run a task again: a new attempt with fresh URLs (its logs are kept per attempt)."""
    from worker.site.client import SiteClientError

    client = _client(site, data_dir)
    try:
        task = client.post(f"/api/v1/tasks/{task_id}/rerun")
        typer.echo(f"{task_id}: attempt {task['attempt']} queued")
        if wait:
            task = _wait(client, task_id, None)
            _print_outcome(task)
    except SiteClientError as exc:
        raise _fail(str(exc), 2 if exc.status == 409 else 1) from None
    if wait and not (task["state"] == "finished" and task["exit_code"] == 0):
        raise typer.Exit(1)


# --- pool competition import ---------------------------------------------------------------------------
def competition_import(
    stack: str | None = typer.Option(None, "--stack", help="A deployed Pulumi stack (needs the Pulumi CLI)."),
    outputs_file: Path | None = typer.Option(None, "--outputs-file", exists=True, dir_okay=False,
                                             help="Its outputs instead: `pulumi stack output --json "
                                                  "--show-secrets > FILE`."),
    site: str | None = _site_option(),
) -> None:
    """Register a pool brought up with plain `pulumi up` with a site, from its stack outputs: the
    competition, its queues, the site's connection strings (or namespace, with identities). Without
    --site / POOL_SITE_URL, prints the `pools:` entry for site.yaml instead."""
    from worker.config import ConfigError
    from worker.site import registration

    if (stack is None) == (outputs_file is None):
        raise _fail("give --stack NAME or --outputs-file FILE", 2)
    try:
        if outputs_file is not None:
            outputs = registration.read_outputs_file(outputs_file)
        else:
            from worker.site.provisioning import ProvisioningError

            try:
                outputs = registration.stack_outputs(stack)  # type: ignore[arg-type]
            except ProvisioningError as exc:
                raise _fail(str(exc)) from None
    except ConfigError as exc:
        raise _fail(str(exc), 2) from None
    register_outputs(outputs, site)


def register_outputs(outputs: dict[str, Any], site: str | None) -> None:
    """POST the pool to the site, or print its site.yaml entry (secrets included: it goes to a file
    only the site reads)."""
    from worker.config import ConfigError
    from worker.site.client import SiteClient, SiteClientError
    from worker.site.registration import pool_from_outputs, site_yaml_snippet

    try:
        body = pool_from_outputs(outputs)
    except ConfigError as exc:
        raise _fail(str(exc), 2) from None
    url = site or os.environ.get("POOL_SITE_URL")
    if not url:
        typer.echo("no --site given: add this to the site's site.yaml (it holds secrets):")
        typer.echo(site_yaml_snippet(body))
        return
    try:
        pool = SiteClient(url, os.environ.get("POOL_SITE_TOKEN")).post("/api/v1/pools", body)
    except SiteClientError as exc:
        raise _fail(f"registering {body['name']} with {url}: {exc}") from None
    typer.echo(f"pool {pool['name']} registered with {url} (task queue {pool['task_queue']})")


# --- pool competition retire / create --azure --on-site -----------------------------------------------
def competition_retire(
    name: str = typer.Argument(..., help="The pool (competition)."),
    site: str | None = _site_option(),
    data_dir: Path = _data_dir_option(),
) -> None:
    """Retire a pool on the site: no new submissions, and the site stops receiving from its response
    queue (every replica). Its tasks and history stay; `pool competition import` (or create) registers
    it again, and the statuses that waited in its queue are then applied."""
    from worker.site.client import SiteClientError

    client = _client(site, data_dir)
    try:
        answer = client.delete(f"/api/v1/pools/{name}")
    except SiteClientError as exc:
        raise _fail(str(exc), 2 if exc.status == 404 else 1) from None
    typer.echo(f"pool {name} retired" + ("; the site's receiver on its response queue is closed"
                                         if answer.get("receiver_closed") else ""))
    if answer.get("in_flight"):
        typer.echo(f"{answer['in_flight']} unfinished task(s) keep their state; their statuses wait in the response "
                   "queue until the pool is registered again")


def create_on_site(name: str, config_file: Path | None, stack: str | None, site: str | None, data_dir: Path,
                   poll_s: float = 2.0) -> None:
    """``pool competition create NAME --azure --on-site``: the site deploys and registers the pool
    (POST /api/v1/pools with azure -> 202 and an operation); follow the operation, printing the
    engine's output. Exit 0 when ready, 1 when failed, 2 for a config the site refuses."""
    from worker.config import ConfigError, load_yaml
    from worker.site.client import SiteClientError

    if config_file is None:
        raise _fail("--on-site needs --stack-config FILE (the site validates it as the CLI would)", 2)
    try:
        config = load_yaml(config_file, what="stack config")
    except ConfigError as exc:
        raise _fail(str(exc), 2) from None
    client = _client(site, data_dir)
    body: dict[str, Any] = {"name": name, "azure": {"config": config}}
    if stack:
        body["azure"]["stack"] = stack
    try:
        operation = client.post("/api/v1/pools", body)
        typer.echo(f"operation {operation['id']}: the site deploys stack {operation['stack']} "
                   f"(GET /api/v1/operations/{operation['id']})")
        shown: list[str] = []
        while True:
            tail = operation.get("output_tail") or []
            for line in _new_lines(shown, tail):
                typer.echo(f"  {line}")
            shown = tail
            if operation["state"] != "provisioning":
                break
            time.sleep(poll_s)
            operation = client.get(f"/api/v1/operations/{operation['id']}")
    except SiteClientError as exc:
        raise _fail(str(exc), 2 if exc.status == 422 else 1) from None
    except KeyboardInterrupt:
        typer.echo("stopped following; the site goes on deploying (see /api/v1/operations)")
        raise typer.Exit(130) from None
    if operation["state"] != "ready":
        raise _fail(f"creating pool {name} on the site failed: {operation.get('detail')}")
    typer.echo(f"pool {name} deployed and registered with {client.url}")


def _new_lines(before: list[str], after: list[str]) -> list[str]:
    """The lines of a sliding output window ``after`` not already in ``before``."""
    for start in range(len(before) + 1):
        overlap = before[start:]
        if after[:len(overlap)] == overlap:
            return after[len(overlap):]
    return after

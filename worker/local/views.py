"""Rich tables of the site's state (``pool status`` and the demo's live view)."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table

from worker.site.queries import duration_s, pool_summaries, recent_tasks, task_events
from worker.site.service import Site

STATE_STYLE = {"queued": "dim", "received": "cyan", "preparing": "cyan", "running": "yellow", "uploading": "cyan",
               "finished": "green", "failed": "red", "timed_out": "magenta", "cancelled": "blue"}
COUNTED = ("queued", "running", "finished", "failed", "timed_out", "cancelled")


def styled(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


def pools_table(site: Site, agents: dict[str, list[tuple[str, str]]] | None = None) -> Table:
    """``agents``: per pool, the agents a running local stack keeps (worker id, state); a pool with
    fewer live workers than that is flagged as short."""
    table = Table(title="pools", title_justify="left")
    short: list[str] = []
    table.add_column("pool", no_wrap=True)
    for column in ("depth", "DLQ", "workers", "idle", "queued", "active", "done", "failed", "timeout", "cancel"):
        table.add_column(column, justify="right")
    with site.sessions() as session:
        for p in pool_summaries(session):
            active = sum(p.counts.get(s, 0) for s in ("received", "preparing", "running", "uploading"))
            counts = [str(p.counts.get("queued", 0)), str(active)] + [str(p.counts.get(s, 0)) for s in COUNTED[2:]]
            workers = str(p.live_workers)
            wanted = (agents or {}).get(p.name)
            if wanted and p.live_workers < len(wanted):
                workers = f"[red]{p.live_workers}/{len(wanted)}[/]"
                down = [f"{wid} {state.replace('_', ' ')}" for wid, state in wanted if state != "running"]
                short.append(f"{p.name}: {p.live_workers} of {len(wanted)} agents live"
                             + (f" ({', '.join(down)})" if down else ""))
            table.add_row(p.name, _n(p.queue_depth), _n(p.dead_letters), workers, str(p.idle_workers), *counts)
    if short:
        table.caption = "[red]short of agents[/] - " + "; ".join(short)
        table.caption_justify = "left"
    return table


def tasks_table(site: Site, limit: int = 20, pool: str | None = None) -> Table:
    table = Table(title=f"recent tasks (latest {limit})", title_justify="left")
    for column in ("task", "pool", "state", "exit", "took", "worker"):
        table.add_column(column, no_wrap=True)
    table.add_column("reason", overflow="fold", ratio=1, min_width=12)
    with site.sessions() as session:
        for t in recent_tasks(session, limit, pool):
            took = duration_s(t)
            state = styled(t.state) + (f" (try {t.attempt})" if t.attempt > 1 else "")
            table.add_row(t.id, t.pool, state, _n(t.exit_code), f"{took:.1f}s" if took is not None else "-",
                          t.worker_id or "-", (t.reason or "")[:120])
    return table


def task_detail(site: Site, task_id: str) -> Group:
    with site.sessions() as session:
        from worker.site.models import Task

        t = session.get(Task, task_id)
        events = task_events(session, task_id)
    summary = Table(show_header=False, title=f"task {task_id}", title_justify="left")
    summary.add_column("field", style="bold")
    summary.add_column("value", overflow="fold")
    for field, value in (("pool", t.pool), ("state", styled(t.state)), ("attempt", f"{t.attempt} of {t.max_attempts}"),
                         ("command", " ".join(t.command)), ("time limit", f"{t.time_limit_s:g} s"),
                         ("worker", t.worker_id or "-"), ("exit code", _n(t.exit_code)),
                         ("kill reason", t.kill_reason or "-"), ("reason", t.reason or "-"),
                         ("output bytes", _n(t.output_bytes)),
                         ("logs", site.storage.log_url(t.pool, t.id, t.attempt, "stdout"))):
        summary.add_row(field, value)
    history = Table(title="history", title_justify="left")
    for column in ("recorded", "attempt", "seq", "state", "by", "worker", "reason"):
        history.add_column(column, overflow="fold" if column == "reason" else "ellipsis")
    for e in events:
        history.add_row(e.recorded_at.strftime("%H:%M:%S.%f")[:-3], str(e.attempt), str(e.seq) if e.seq >= 0 else "-",
                        styled(e.state), e.source, e.worker_id or "-", e.reason or "")
    return Group(summary, history)


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)

"""What the HTTP API and the dashboard do with the site, in one place (both call these): views of
pools, workers and tasks as plain dicts, task listing with filters, rerun, dead letters."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from worker.site import admission, transitions
from worker.site.db import retrying, transaction
from worker.site.models import (
    ACTIVE,
    TERMINAL,
    DeadLetter,
    Pool,
    SiteState,
    Task,
    TaskEvent,
    TaskLabel,
    Worker,
    utcnow,
)
from worker.site.queries import duration_s, is_live, pool_summaries
from worker.site.service import Site

THROUGHPUT_WINDOW_S = 300.0
QueueDepth = Callable[[Pool], dict[str, int] | None]  # active / scheduled / dead_lettered


class Conflict(RuntimeError):
    """The request is valid but the task's state does not allow it (HTTP 409)."""


class NotFound(LookupError):
    pass


class Invalid(ValueError):
    """A request field that cannot be used (HTTP 422 naming ``field``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


# --- pools and workers -------------------------------------------------------------------------------
def register_access(site: Site, name: str, *, task_queue_connection_string: str | None = None,
                    response_queue_connection_string: str | None = None, namespace: str | None = None) -> None:
    """Register (or re-activate) a pool deployed elsewhere with the site's access to its two queues:
    both queue-level connection strings, or the namespace (identity). ``POST /api/v1/pools`` and the
    Azure create job (worker.site.azure_pools, from the stack outputs) both call this. Raises
    :class:`Invalid` naming the field."""
    from worker.config import ConfigError, check_competition_name
    from worker.site.pools import register_pool

    try:
        check_competition_name(name)
    except ConfigError as exc:
        raise Invalid("name", str(exc)) from None
    pair = (task_queue_connection_string, response_queue_connection_string)
    if (pair[0] is None) != (pair[1] is None):
        raise Invalid("response_queue_connection_string" if pair[0] else "task_queue_connection_string",
                      "give both queue connection strings, or namespace")
    if (pair[0] is None) == (namespace is None):
        raise Invalid("namespace", "give the two queue connection strings or namespace (one of them)")
    for field, value in (("task_queue_connection_string", pair[0]), ("response_queue_connection_string", pair[1])):
        if value is not None and "Endpoint=" not in value:
            raise Invalid(field, "not a Service Bus connection string (Endpoint=sb://...)")
    with transaction(site.sessions) as session:
        register_pool(session, name, task_queue_connection_string=pair[0] or namespace,
                      response_queue_connection_string=pair[1] or namespace)
    site.storage.ensure_competition(name)


def retire_pool(site: Site, name: str) -> int:
    """Mark the pool retired (no new submissions; the watcher's receiver and the monitor's work on
    it stop). Returns how many of its tasks are unfinished (waiting, queued or with a worker): their
    statuses wait in the response queue until the pool is registered again. NotFound if no active pool has that name."""
    with transaction(site.sessions) as session:
        row = session.get(Pool, name, with_for_update=True)
        if row is None or not row.active:
            raise NotFound(f"no pool named {name!r}")
        row.active = False
        return session.scalar(select(func.count()).where(Task.pool == name,
                                                         Task.state.not_in(TERMINAL))) or 0


def pool_views(site: Site, depth: QueueDepth | None = None, name: str | None = None) -> list[dict[str, Any]]:
    since = utcnow() - timedelta(seconds=THROUGHPUT_WINDOW_S)
    with site.sessions() as session:
        summaries = [p for p in pool_summaries(session) if name is None or p.name == name]
        done = dict(session.execute(select(Task.pool, func.count()).where(Task.finished_at >= since)
                                    .group_by(Task.pool)).all())
        pools = {p.name: p for p in session.scalars(select(Pool))}
    views = []
    for p in summaries:
        live_depth = None
        if depth is not None:
            try:
                live_depth = depth(pools[p.name])
            except Exception:  # noqa: BLE001 - display data: fall back to the monitor's last reading
                live_depth = None
        queue = live_depth or {"active": p.queue_depth, "scheduled": None, "dead_lettered": p.dead_letters}
        views.append({
            "name": p.name, "task_queue": p.task_queue, "queue": queue,
            "workers": {"live": p.live_workers, "idle": p.idle_workers, "busy": p.live_workers - p.idle_workers},
            "tasks": {state.value: p.counts.get(state.value, 0) for state in SiteState},
            "throughput": {"window_s": THROUGHPUT_WINDOW_S, "finished": int(done.get(p.name, 0)),
                           "per_minute": round(done.get(p.name, 0) / (THROUGHPUT_WINDOW_S / 60), 2)},
        })
    return views


def worker_views(site: Site, pool: str | None = None) -> list[dict[str, Any]]:
    now = utcnow()
    with site.sessions() as session:
        query = select(Worker).order_by(Worker.pool, Worker.id)
        if pool:
            query = query.where(Worker.pool == pool)
        workers = list(session.scalars(query))
    return [{"id": w.id, "pool": w.pool, "live": is_live(w, now), "activity": w.activity,
             "current_task": w.current_task, "last_seen_at": _iso(w.last_seen_at),
             "last_heard_s": round((now - w.last_seen_at).total_seconds(), 1),
             "first_seen_at": _iso(w.first_seen_at), "left_at": _iso(w.left_at),
             "version": (w.host or {}).get("agent_version") or (w.host or {}).get("version"),
             "host": w.host or {}} for w in workers]


# --- tasks ---------------------------------------------------------------------------------------------
def task_view(task: Task, labels: dict[str, str] | None = None) -> dict[str, Any]:
    took = duration_s(task)
    return {
        "id": task.id, "pool": task.pool, "state": task.state, "attempt": task.attempt,
        "max_attempts": task.max_attempts, "task_type": task.task_type, "command": task.command,
        "env": task.env, "time_limit_s": task.time_limit_s, "resources": task.resources,
        "bundles": [{"name": b["name"], "id": f"sha256:{b['sha256']}", "size": b["size"]} for b in task.bundles],
        "labels": labels or {}, "worker_id": task.worker_id, "exit_code": task.exit_code,
        "kill_reason": task.kill_reason, "reason": task.reason, "output_bytes": task.output_bytes,
        "created_at": _iso(task.created_at), "sent_at": _iso(task.sent_at), "started_at": _iso(task.started_at),
        "finished_at": _iso(task.finished_at), "duration_s": round(took, 3) if took is not None else None,
        "cancel_requested_at": _iso(task.cancel_requested_at), "terminal": task.site_state.terminal,
        "label": task.label, "priority": task.priority, "failure_class": task.failure_class, "failure_code": task.failure_code,
        "infra_retries": task.infra_retries,
    }


def event_view(e: TaskEvent) -> dict[str, Any]:
    return {"attempt": e.attempt, "seq": e.seq if e.seq >= 0 else None, "state": e.state, "source": e.source,
            "worker_id": e.worker_id, "reason": e.reason, "failure_class": e.failure_class,
            "failure_code": e.failure_code, "reported_at": _iso(e.reported_at),
            "recorded_at": _iso(e.recorded_at)}


def _labels(session: Session, ids: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    if ids:
        for row in session.scalars(select(TaskLabel).where(TaskLabel.task_id.in_(ids))):
            out.setdefault(row.task_id, {})[row.key] = row.value
    return out


def list_tasks(site: Site, *, pool: str | None = None, states: list[str] | None = None,
               labels: dict[str, str] | None = None, since: datetime | None = None, limit: int = 50,
               offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Newest first; returns (page, total matching)."""
    query = select(Task)
    if pool:
        query = query.where(Task.pool == pool)
    if states:
        query = query.where(Task.state.in_(states))
    if since:
        query = query.where(Task.created_at >= since)
    for key, value in (labels or {}).items():
        query = query.where(Task.id.in_(select(TaskLabel.task_id).where(TaskLabel.key == key,
                                                                       TaskLabel.value == value)))
    with site.sessions() as session:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = list(session.scalars(query.order_by(Task.created_at.desc(), Task.id.desc())
                                    .limit(limit).offset(offset)))
        labels_of = _labels(session, [t.id for t in rows])
    return [task_view(t, labels_of.get(t.id)) for t in rows], total


def get_task(site: Site, task_id: str, *, history: bool = True) -> dict[str, Any]:
    with site.sessions() as session:
        task = session.get(Task, task_id)
        if task is None:
            raise NotFound(f"no task {task_id!r}")
        view = task_view(task, _labels(session, [task_id]).get(task_id))
        if history:
            events = session.scalars(select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id))
            view["history"] = [event_view(e) for e in events]
    view["logs"] = {s: site.storage.log_url(view["pool"], task_id, view["attempt"], s)  # type: ignore[arg-type]
                    for s in ("stdout", "stderr")}
    return view


def task_row(site: Site, task_id: str) -> Task:
    with site.sessions() as session:
        task = session.get(Task, task_id)
    if task is None:
        raise NotFound(f"no task {task_id!r}")
    return task


def rerun(site: Site, task_id: str, reason: str = "rerun requested") -> Task:
    """A new attempt of a task in a final state (worker.site.transitions.rerun), sent with fresh SAS URLs."""

    def requeue(session: Session) -> Task:
        row = session.get(Task, task_id, with_for_update=True)
        if row is None:
            raise NotFound(f"no task {task_id!r}")
        pool = session.get(Pool, row.pool)
        try:
            transitions.rerun(session, row, reason, waiting=pool is not None and admission.limited(pool))
        except transitions.TaskNotFinished as exc:
            raise Conflict(str(exc)) from None
        return row

    row = retrying(site.sessions, requeue)
    if row.state == SiteState.WAITING.value:  # under the pool's limits: admission sends it when a slot frees
        admission.admit_and_send(site.sessions, row.pool, site.producer.send)
        return row
    try:
        site.producer.send(task_id)
    except Exception:  # noqa: BLE001, S110 - recorded with sent_at empty: the monitor sends it again
        pass
    return row


def active_count(site: Site) -> int:
    with site.sessions() as session:
        return session.scalar(select(func.count()).where(Task.state.in_(ACTIVE))) or 0


# --- dead letters --------------------------------------------------------------------------------------
def dead_letter_view(d: DeadLetter) -> dict[str, Any]:
    return {"id": d.id, "pool": d.pool, "queue": d.queue, "message_id": d.message_id, "task_id": d.task_id,
            "attempt": d.attempt, "reason": d.reason, "description": d.description,
            "dead_lettered_at": _iso(d.dead_lettered_at), "resubmitted_at": _iso(d.resubmitted_at)}


def list_dead_letters(site: Site, pool: str | None = None, limit: int = 100, offset: int = 0
                      ) -> tuple[list[dict[str, Any]], int]:
    query = select(DeadLetter)
    if pool:
        query = query.where(DeadLetter.pool == pool)
    with site.sessions() as session:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = session.scalars(query.order_by(DeadLetter.id.desc()).limit(limit).offset(offset))
        return [dead_letter_view(d) for d in rows], total


def resubmit_dead_letter(site: Site, dead_letter_id: int) -> dict[str, Any]:
    with site.sessions() as session:
        record = session.get(DeadLetter, dead_letter_id)
    if record is None:
        raise NotFound(f"no dead letter {dead_letter_id}")
    if record.task_id is None:
        raise Conflict(f"dead letter {dead_letter_id} names no task: nothing to resubmit (purge it)")
    if record.resubmitted_at is not None:
        raise Conflict(f"dead letter {dead_letter_id} was already resubmitted at {record.resubmitted_at}")
    task = rerun(site, record.task_id, reason=f"resubmitted from dead letter {dead_letter_id}")

    def mark(session: Session) -> None:
        row = session.get(DeadLetter, dead_letter_id)
        if row is not None:
            row.resubmitted_at = utcnow()

    retrying(site.sessions, mark)
    return {"dead_letter": dead_letter_id, "task_id": task.id, "attempt": task.attempt}


def purge_dead_letters(site: Site, pool: str | None = None, dead_letter_id: int | None = None) -> int:
    statement = delete(DeadLetter)
    if pool:
        statement = statement.where(DeadLetter.pool == pool)
    if dead_letter_id is not None:
        statement = statement.where(DeadLetter.id == dead_letter_id)
    with transaction(site.sessions) as session:
        return session.execute(statement).rowcount or 0

"""Read-only views for the CLI and the demo: pools with their counts, recent tasks, one task's story."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.site.models import DEFAULT_LIVE_S, LIVE_AFTER_BEATS, Pool, Task, TaskEvent, Worker, utcnow


@dataclass
class PoolSummary:
    name: str
    task_queue: str
    queue_depth: int | None
    dead_letters: int | None
    live_workers: int
    counts: dict[str, int]
    idle_workers: int = 0  # of the live ones, those whose newest report says idle


def is_live(worker: Worker, now: datetime, default_s: float = DEFAULT_LIVE_S) -> bool:
    """Heard within LIVE_AFTER_BEATS of its report interval (``default_s`` when it never said), not left."""
    if worker.left_at is not None:
        return False
    window = LIVE_AFTER_BEATS * worker.interval_s if worker.interval_s else default_s
    return worker.last_seen_at >= now - timedelta(seconds=window)


def pool_summaries(session: Session, live_within_s: float = DEFAULT_LIVE_S) -> list[PoolSummary]:
    """``live_within_s``: the liveness window of workers that never sent a presence report."""
    counts: dict[str, dict[str, int]] = {}
    for pool, state, n in session.execute(select(Task.pool, Task.state, func.count()).group_by(Task.pool, Task.state)):
        counts.setdefault(pool, {})[state] = n
    now = utcnow()
    live: dict[str, int] = {}
    idle: dict[str, int] = {}
    for worker in session.scalars(select(Worker).where(Worker.left_at.is_(None))):  # one row per worker: small
        if is_live(worker, now, live_within_s):
            live[worker.pool] = live.get(worker.pool, 0) + 1
            idle[worker.pool] = idle.get(worker.pool, 0) + (worker.activity == "idle")
    return [PoolSummary(p.name, p.task_queue, p.queue_depth, p.dead_letters, live.get(p.name, 0),
                        counts.get(p.name, {}), idle.get(p.name, 0))
            for p in session.scalars(select(Pool).where(Pool.active.is_(True)).order_by(Pool.name))]


def recent_tasks(session: Session, limit: int = 20, pool: str | None = None) -> list[Task]:
    query = select(Task).order_by(Task.created_at.desc()).limit(limit)
    if pool:
        query = query.where(Task.pool == pool)
    return list(session.scalars(query))


def task_events(session: Session, task_id: str) -> list[TaskEvent]:
    return list(session.scalars(select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id)))


def duration_s(task: Task) -> float | None:
    if task.started_at and task.finished_at:
        return (task.finished_at - task.started_at).total_seconds()
    if task.started_at:
        return (utcnow() - task.started_at).total_seconds()
    return None


def age(at: datetime | None) -> str:
    if at is None:
        return "-"
    seconds = (utcnow() - at).total_seconds()
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m"

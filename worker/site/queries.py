"""Read-only views for the CLI and the demo: pools with their counts, recent tasks, one task's story."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.site.models import Pool, Task, TaskEvent, Worker, utcnow


@dataclass
class PoolSummary:
    name: str
    task_queue: str
    queue_depth: int | None
    dead_letters: int | None
    live_workers: int
    counts: dict[str, int]


def pool_summaries(session: Session, live_within_s: float = 60.0) -> list[PoolSummary]:
    counts: dict[str, dict[str, int]] = {}
    for pool, state, n in session.execute(select(Task.pool, Task.state, func.count()).group_by(Task.pool, Task.state)):
        counts.setdefault(pool, {})[state] = n
    since = utcnow() - timedelta(seconds=live_within_s)
    live = dict(session.execute(select(Worker.pool, func.count()).where(Worker.last_seen_at >= since)
                                .group_by(Worker.pool)).all())
    return [PoolSummary(p.name, p.task_queue, p.queue_depth, p.dead_letters, live.get(p.name, 0),
                        counts.get(p.name, {}))
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

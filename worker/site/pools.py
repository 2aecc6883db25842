"""The pools the site manages (one per competition: its task queue and response queue)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.config import competition_queues
from worker.errors import PoolError
from worker.site.models import Pool


class UnknownPool(PoolError, LookupError):
    pass


def register_pool(
    session: Session,
    name: str,
    *,
    task_queue_connection_string: str | None = None,
    response_queue_connection_string: str | None = None,
) -> Pool:
    """Add or update a pool (idempotent)."""
    task_queue, response_queue = competition_queues(name)
    pool = session.get(Pool, name)
    if pool is None:
        pool = Pool(name=name, task_queue=task_queue, response_queue=response_queue)
        session.add(pool)
    pool.task_queue_connection_string = task_queue_connection_string
    pool.response_queue_connection_string = response_queue_connection_string
    pool.active = True
    session.flush()
    return pool


def get_pool(session: Session, name: str) -> Pool:
    pool = session.get(Pool, name)
    if pool is None or not pool.active:
        known = ", ".join(p.name for p in list_pools(session)) or "none"
        raise UnknownPool(f"no pool named {name!r} (pools: {known}); create it with `pool competition create {name}`")
    return pool


def list_pools(session: Session) -> list[Pool]:
    return list(session.scalars(select(Pool).where(Pool.active.is_(True)).order_by(Pool.name)))

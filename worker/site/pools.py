"""The pools the site manages (one per competition: its task queue and response queue)."""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from worker.config import competition_queues
from worker.errors import PoolError
from worker.site.db import get_by_key
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


_POOL = select(Pool).where(Pool.name == bindparam("b_key"))  # built once (every submit reads its pool)


def get_pool(session: Session, name: str) -> Pool:
    pool = get_by_key(session, _POOL, Pool, name)
    if pool is None or not pool.active:
        known = ", ".join(p.name for p in list_pools(session)) or "none"
        raise UnknownPool(f"no pool named {name!r} (pools: {known}); create it with `pool competition create {name}`")
    return pool


_ACTIVE_POOLS = select(Pool).where(Pool.active.is_(True)).order_by(Pool.name)  # built once: read every second


def list_pools(session: Session) -> list[Pool]:
    return list(session.scalars(_ACTIVE_POOLS))


LIMIT_KEYS = ("max_in_flight", "max_in_flight_per_label", "retry_budget", "retry_backoff_s", "retry_backoff_max_s")


def set_limits(session: Session, name: str, **limits: float | None) -> Pool:
    """Set a pool's admission limits and infrastructure retry budget (keys: :data:`LIMIT_KEYS`; a
    ``max_in_flight*`` of None or 0 removes that limit). Unknown keys and negative values are refused."""
    pool = get_pool(session, name)
    for key, value in limits.items():
        if key not in LIMIT_KEYS:
            raise ValueError(f"unknown pool limit {key!r} (known: {', '.join(LIMIT_KEYS)})")
        if value is not None and value < 0:
            raise ValueError(f"{key} must be 0 or more, not {value}")
        if key.startswith("max_in_flight") and not value:
            value = None
        if key.startswith("retry_backoff") and (value is None or value <= 0):
            raise ValueError(f"{key} must be above 0")
        if key == "retry_budget" and value is None:
            raise ValueError("retry_budget must be a number (0: never retry)")
        setattr(pool, key, value)
    session.flush()
    return pool

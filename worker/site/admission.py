"""Fair admission: tasks wait on the site (state ``waiting``) and are sent to the pool's queue under its
limits, so one participant's flood cannot hold everyone else's tasks back in a FIFO queue.

Per pool (``pools`` columns, set with ``pool competition limits``):

- ``max_in_flight``: tasks sent and not final (``queued`` + a worker has it), all labels together;
- ``max_in_flight_per_label``: the same for each participant label (``tasks.label``; tasks without a
  label — the organizer's — are not held to it);
- tasks are let in by ``tasks.priority`` (higher first: e.g. organizer baselines 10, participants 0),
  then first come first served; a task whose label is at its cap is passed over, not blocking the
  others behind it.

A pool with neither limit admits at once (``submit`` writes the task ``queued``). Admission runs after
a submit, after the watcher committed a final state (a slot freed) and on every monitor tick. Each run
is one transaction that locks the pool row first (``SELECT ... FOR UPDATE``; SQLite serialises writers
anyway), so two site replicas never admit past a limit or both move the same task; waiting rows are
read with ``SKIP LOCKED`` on PostgreSQL, so a task being cancelled is not waited for. The send happens
after the commit; a send that fails is retried by the monitor, and the message id
``<task>:<attempt>`` makes a double send a no-op on a queue with duplicate detection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session, sessionmaker

from worker.site import transitions
from worker.site.db import retrying
from worker.site.models import IN_FLIGHT, Pool, SiteState, utcnow
from worker.site.models import Task as TaskRow

log = logging.getLogger(__name__)

SCAN = 1000  # waiting tasks looked at per run (passed-over labels included)


def limited(pool: Pool) -> bool:
    return pool.max_in_flight is not None or pool.max_in_flight_per_label is not None


def admit(session: Session, pool_name: str, now: datetime | None = None) -> list[str]:
    """Move the waiting tasks that fit under the limits to ``queued``; their ids, in admission order."""
    now = now or utcnow()
    pool = session.get(Pool, pool_name, with_for_update=True)  # one admitter per pool at a time
    if pool is None:
        return []
    total = 0
    per_label: dict[str | None, int] = {}
    for label, n in session.execute(select(TaskRow.label, func.count()).where(
            TaskRow.pool == pool_name, TaskRow.state.in_(IN_FLIGHT)).group_by(TaskRow.label)):
        per_label[label] = n
        total += n
    waiting = session.scalars(
        select(TaskRow).where(TaskRow.pool == pool_name, TaskRow.state == SiteState.WAITING.value)
        .order_by(TaskRow.priority.desc(), TaskRow.created_at, TaskRow.id).limit(SCAN)
        .with_for_update(skip_locked=True))
    admitted: list[str] = []
    for row in waiting:
        if pool.max_in_flight is not None and total >= pool.max_in_flight:
            break
        cap = pool.max_in_flight_per_label
        if row.label is not None and cap is not None and per_label.get(row.label, 0) >= cap:
            continue
        transitions.admit(session, row, now)
        total += 1
        per_label[row.label] = per_label.get(row.label, 0) + 1
        admitted.append(row.id)
    return admitted


# Built once and run on the session's connection: building the select and the ORM's execution path
# cost ~4x the query itself (it runs after every final status).
_HAS_WAITING = (select(TaskRow.id).where(TaskRow.pool == bindparam("b_pool"), TaskRow.state == SiteState.WAITING.value)
                .limit(1))


def has_waiting(session: Session, pool_name: str) -> bool:
    session.flush()  # what this transaction changed counts (as the ORM's autoflush would do)
    return session.connection().execute(_HAS_WAITING, {"b_pool": pool_name}).first() is not None


def admit_and_send(sessions: sessionmaker[Session], pool_name: str, send: Callable[[str], None]) -> list[str]:
    """Admit what fits (one transaction), then send each admitted task; a failed send is logged and
    left to the monitor (the task is ``queued`` with ``sent_at`` empty)."""
    with sessions() as session:  # a cheap read first: most runs find nothing waiting
        if not has_waiting(session, pool_name):
            return []
    admitted = retrying(sessions, lambda s: admit(s, pool_name))
    for task_id in admitted:
        try:
            send(task_id)
        except Exception as exc:  # noqa: BLE001 - the monitor resends it
            log.warning("admitted task %s not sent yet: %s", task_id, exc)
    return admitted

"""Every change of a task's state on the site, in one place.

Each function changes the task row and writes exactly ONE history row (:class:`TaskEvent`), and refuses
(:class:`TaskFinished`) to change a task that already reached a final state: the callers decide *whether*
a transition applies (stale or duplicate statuses, silent workers, dead letters), this module *how*. No
other code writes ``TaskEvent`` rows.

A lost task takes two transitions: :func:`lose` (the silent attempt, ``lost``), then :func:`requeue` (a new
attempt, ``queued``) or :func:`fail` (no attempts left), so its history shows both steps.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from worker import protocol
from worker.errors import PoolError
from worker.site.models import SiteState, TaskEvent, utcnow
from worker.site.models import Task as TaskRow

SITE = "site"
WORKER = "worker"


class TaskFinished(PoolError, RuntimeError):
    """A transition asked of a task that already reached a final state (a caller's bug: callers check)."""


def _open(row: TaskRow) -> None:
    if row.site_state.terminal:
        raise TaskFinished(f"task {row.id} is already {row.state}")


def _event(session: Session, row: TaskRow, state: SiteState | protocol.TaskState, now: datetime, *,
           reason: str | None, attempt: int | None = None, seq: int = -1, source: str = SITE,
           worker_id: str | None = None, reported_at: datetime | None = None) -> None:
    session.add(TaskEvent(task_id=row.id, attempt=row.attempt if attempt is None else attempt, seq=seq,
                          state=state.value, source=source, worker_id=worker_id, reason=reason,
                          reported_at=reported_at or now, recorded_at=now))


def submit(session: Session, row: TaskRow, now: datetime | None = None) -> None:
    """A new task: its row, queued for its first attempt."""
    now = now or utcnow()
    row.state, row.attempt = SiteState.QUEUED.value, 1
    session.add(row)
    _event(session, row, SiteState.QUEUED, now, reason="submitted")


def apply_worker_status(session: Session, row: TaskRow, status: protocol.Status, now: datetime | None = None) -> None:
    """A worker reported a new state of the current attempt (the caller has ruled out stale, duplicate
    and heartbeat statuses)."""
    now = now or utcnow()
    _open(row)
    row.state = status.state.value
    if status.state is protocol.TaskState.RUNNING and row.started_at is None:
        row.started_at = status.timestamp
    if status.exit_code is not None:
        row.exit_code = status.exit_code
    if status.kill_reason is not None:
        row.kill_reason = status.kill_reason.value
    if status.reason:
        row.reason = status.reason
    if status.output_bytes is not None:
        row.output_bytes = status.output_bytes
    if status.state.terminal:
        row.finished_at = now
    _event(session, row, status.state, now, reason=status.reason, attempt=status.attempt, seq=status.seq,
           source=WORKER, worker_id=status.worker_id, reported_at=status.timestamp)


def lose(session: Session, row: TaskRow, reason: str, now: datetime | None = None) -> None:
    """The worker of the current attempt went silent; follow with :func:`requeue` or :func:`fail`."""
    now = now or utcnow()
    _open(row)
    row.state = SiteState.LOST.value
    _event(session, row, SiteState.LOST, now, reason=reason, worker_id=row.worker_id)


def requeue(session: Session, row: TaskRow, reason: str, now: datetime | None = None) -> None:
    """A new attempt of the task, queued (its message is sent after the commit)."""
    now = now or utcnow()
    _open(row)
    row.attempt += 1
    row.state = SiteState.QUEUED.value
    row.sent_at = None
    row.last_seq = -1
    row.delivery_started_at = row.last_status_at = None
    row.worker_id = None
    _event(session, row, SiteState.QUEUED, now, reason=reason)


def fail(session: Session, row: TaskRow, reason: str, now: datetime | None = None) -> None:
    """The site gives up on the task (dead-lettered, or lost with no attempts left)."""
    now = now or utcnow()
    _open(row)
    row.state = SiteState.FAILED.value
    row.reason = reason
    row.finished_at = now
    _event(session, row, SiteState.FAILED, now, reason=reason)


def cancel(session: Session, row: TaskRow, reason: str, now: datetime | None = None) -> None:
    """Cancel a task no worker has yet (a running one is stopped through its control blob and
    reports ``cancelled`` itself)."""
    now = now or utcnow()
    _open(row)
    row.state = SiteState.CANCELLED.value
    row.finished_at = now
    row.reason = reason
    _event(session, row, SiteState.CANCELLED, now, reason=reason)

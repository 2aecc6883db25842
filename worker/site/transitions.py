"""Every change of a task's state on the site, in one place.

Each function changes the task row and writes exactly ONE history row (:class:`TaskEvent`), and refuses
(:class:`TaskFinished`) to change a task that already reached a final state: the callers decide *whether*
a transition applies (stale or duplicate statuses, silent workers, dead letters), this module *how*. No
other code writes ``TaskEvent`` rows (inserted with one statement each, not through the session's
unit of work).

A lost task takes two transitions: :func:`lose` (the silent attempt, ``lost``), then :func:`retry` (a new
attempt, ``queued``, after a back-off) or :func:`fail` (no retries left), so its history shows both steps.
Under a pool's admission limits a task is submitted ``waiting`` and :func:`admit` moves it to ``queued``.
Final rows (and ``lost`` / retry rows) carry the failure's class and code (worker.site.failures).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import insert, inspect
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


Failure = tuple[str, str]  # (failure_class, failure_code), see worker.site.failures


# History rows are only ever inserted, never read back in the transaction that writes them: one INSERT
# on the session's connection instead of an object for the unit of work to flush (its share of a
# flush cost more than the statement).
_INSERT_EVENT = insert(TaskEvent)


def _event(session: Session, row: TaskRow, state: SiteState | protocol.TaskState, now: datetime, *,
           reason: str | None, attempt: int | None = None, seq: int = -1, source: str = SITE,
           worker_id: str | None = None, reported_at: datetime | None = None, failure: Failure | None = None) -> None:
    if inspect(row).pending:
        session.flush()  # a new task's row before its first history row (foreign key)
    session.connection().execute(_INSERT_EVENT, {
        "task_id": row.id, "attempt": row.attempt if attempt is None else attempt, "seq": seq,
        "state": state.value, "source": source, "worker_id": worker_id, "reason": reason,
        "failure_class": failure[0] if failure else None, "failure_code": failure[1] if failure else None,
        "reported_at": reported_at or now, "recorded_at": now})


def _final(row: TaskRow, failure: Failure | None) -> None:
    if failure is not None:
        row.failure_class, row.failure_code = failure


def submit(session: Session, row: TaskRow, now: datetime | None = None, *, waiting: bool = False) -> None:
    """A new task: its row, queued for its first attempt (``waiting``: held for admission)."""
    now = now or utcnow()
    row.state, row.attempt = (SiteState.WAITING if waiting else SiteState.QUEUED).value, 1
    session.add(row)
    _event(session, row, SiteState.WAITING if waiting else SiteState.QUEUED, now, reason="submitted")


def admit(session: Session, row: TaskRow, now: datetime | None = None) -> None:
    """A waiting task let in under its pool's limits: queued (sent after the commit)."""
    now = now or utcnow()
    _open(row)
    row.state = SiteState.QUEUED.value
    row.not_before = now  # the monitor's resend clock starts now, not at submission
    _event(session, row, SiteState.QUEUED, now, reason="admitted")


def apply_worker_status(session: Session, row: TaskRow, status: protocol.Status, now: datetime | None = None,
                        failure: Failure | None = None) -> None:
    """A worker reported a new state of the current attempt (the caller has ruled out stale, duplicate
    and heartbeat statuses). ``failure``: the attribution of a final status."""
    now = now or utcnow()
    _open(row)
    _final(row, failure)
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
           source=WORKER, worker_id=status.worker_id, reported_at=status.timestamp, failure=failure)


def lose(session: Session, row: TaskRow, reason: str, now: datetime | None = None) -> None:
    """The worker of the current attempt went silent; follow with :func:`retry` or :func:`fail`."""
    now = now or utcnow()
    _open(row)
    row.state = SiteState.LOST.value
    _event(session, row, SiteState.LOST, now, reason=reason, worker_id=row.worker_id,
           failure=("infrastructure", "worker_lost"))


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


def retry(session: Session, row: TaskRow, failure: Failure, reason: str, delay_s: float,
          now: datetime | None = None, *, after_worker_failure: bool = False) -> None:
    """The next attempt after an infrastructure failure of this one, sent as a scheduled message
    ``delay_s`` from now (real time: the broker schedules by it). ``after_worker_failure``: the worker's
    own ``failed`` status of the attempt was applied in this transaction (the task is reopened)."""
    now = now or utcnow()
    if not (after_worker_failure and row.state == SiteState.FAILED.value):
        _open(row)
    row.attempt += 1
    row.infra_retries += 1
    row.state = SiteState.QUEUED.value
    row.sent_at = row.finished_at = None
    row.not_before = utcnow() + timedelta(seconds=delay_s)
    row.last_seq = -1
    row.delivery_started_at = row.last_status_at = None
    row.worker_id = None
    row.failure_class = row.failure_code = None
    row.exit_code = row.kill_reason = None
    _event(session, row, SiteState.QUEUED, now, reason=reason, failure=failure)


def fail(session: Session, row: TaskRow, reason: str, now: datetime | None = None,
         failure: Failure | None = None) -> None:
    """The site gives up on the task (dead-lettered, or lost with no retries left)."""
    now = now or utcnow()
    _open(row)
    _final(row, failure)
    row.state = SiteState.FAILED.value
    row.reason = reason
    row.finished_at = now
    _event(session, row, SiteState.FAILED, now, reason=reason, failure=failure)


def cancel(session: Session, row: TaskRow, reason: str, now: datetime | None = None) -> None:
    """Cancel a task no worker has yet (a running one is stopped through its control blob and
    reports ``cancelled`` itself)."""
    now = now or utcnow()
    _open(row)
    _final(row, ("none", "cancelled"))
    row.state = SiteState.CANCELLED.value
    row.finished_at = now
    row.reason = reason
    _event(session, row, SiteState.CANCELLED, now, reason=reason, failure=("none", "cancelled"))


def rerun(session: Session, row: TaskRow, reason: str, now: datetime | None = None, *,
          waiting: bool = False) -> None:
    """A new attempt of a task that reached a final state (any), queued again (``waiting``: held for
    admission, like a new task): the one transition out of a final state, asked for by an operator
    (API / dashboard ``rerun``, a dead letter's resubmit). The attempt ceiling grows by one and the
    infrastructure-retry budget starts afresh: the rerun is a new run, not a retry of the old one."""
    now = now or utcnow()
    if not row.site_state.terminal:
        raise TaskNotFinished(f"task {row.id} is {row.state}: only a task in a final state can be rerun "
                              "(cancel it first)")
    row.attempt += 1
    row.max_attempts = max(row.max_attempts, row.attempt) + 1
    row.state = (SiteState.WAITING if waiting else SiteState.QUEUED).value
    row.sent_at = row.started_at = row.finished_at = row.cancel_requested_at = None
    row.delivery_started_at = row.last_status_at = row.last_heard_at = None
    row.last_seq = -1
    row.worker_id = row.exit_code = row.kill_reason = row.reason = row.output_bytes = None
    row.failure_class = row.failure_code = None
    row.infra_retries = 0
    _event(session, row, SiteState.WAITING if waiting else SiteState.QUEUED, now, reason=reason)


class TaskNotFinished(PoolError, RuntimeError):
    """A rerun asked of a task that has not reached a final state yet."""

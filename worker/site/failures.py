"""Failure attribution and automatic infrastructure retries.

Every final state carries a class and a reason code (``tasks.failure_class`` / ``failure_code``):

- ``participant``: the program's own doing — non-zero exit or a signal (``exit_code``), the time limit
  (``time_limit``), memory (``memory``), an output flood (``output_flood``), disk (``disk``),
  processes (``processes``), an unusable submission (``bad_submission``). Never retried.
- ``infrastructure``: not the participant's fault — the worker went silent (``worker_lost``), was
  stopped or preempted on every delivery until Service Bus gave up (``max_deliveries``), storage
  (``storage_error``), Service Bus (``servicebus_error``), the agent itself (``agent_error``), a bundle
  that could not be downloaded (``bundle_download``), a message no worker could read
  (``invalid_message``), another dead letter (``dead_lettered``). Retried automatically as a new
  attempt, sent as a Service Bus *scheduled* message after an exponential back-off
  (``retry_backoff_s × 2^(n-1)``, at most ``retry_backoff_max_s``), while the task has used fewer than
  its pool's ``retry_budget`` retries (and fewer than its ``max_attempts`` attempts); an
  ``invalid_message`` is not retried (it would fail the same way).
- ``none``: finished (``ok``) or cancelled (``cancelled``).

Infrastructure retries never count as a participant attempt: the participant's program ran to a
verdict at most once (``attempt - infra_retries`` is always 1).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy.orm import Session

from worker import protocol
from worker.site import transitions
from worker.site.models import Pool
from worker.site.models import Task as TaskRow


class FailureClass(StrEnum):
    PARTICIPANT = "participant"
    INFRASTRUCTURE = "infrastructure"
    NONE = "none"  # finished, or cancelled by the site


class Code(StrEnum):
    OK = "ok"
    CANCELLED = "cancelled"
    # participant
    EXIT_CODE = "exit_code"
    TIME_LIMIT = "time_limit"
    MEMORY = "memory"
    OUTPUT_FLOOD = "output_flood"
    DISK = "disk"
    PROCESSES = "processes"
    BAD_SUBMISSION = "bad_submission"
    # infrastructure
    WORKER_LOST = "worker_lost"
    PREEMPTED = "preempted"
    MAX_DELIVERIES = "max_deliveries"
    STORAGE_ERROR = "storage_error"
    SERVICEBUS_ERROR = "servicebus_error"
    AGENT_ERROR = "agent_error"
    BUNDLE_DOWNLOAD = "bundle_download"
    INVALID_MESSAGE = "invalid_message"
    DEAD_LETTERED = "dead_lettered"


INFRASTRUCTURE = frozenset({Code.WORKER_LOST, Code.PREEMPTED, Code.MAX_DELIVERIES, Code.STORAGE_ERROR,
                            Code.SERVICEBUS_ERROR, Code.AGENT_ERROR, Code.BUNDLE_DOWNLOAD, Code.INVALID_MESSAGE,
                            Code.DEAD_LETTERED})
NOT_RETRIED = frozenset({Code.INVALID_MESSAGE})

_KILL_CODES = {
    protocol.KillReason.TIME: Code.TIME_LIMIT,
    protocol.KillReason.MEMORY: Code.MEMORY,
    protocol.KillReason.OUTPUT: Code.OUTPUT_FLOOD,
    protocol.KillReason.DISK: Code.DISK,
    protocol.KillReason.PROCESSES: Code.PROCESSES,
    protocol.KillReason.CANCELLED: Code.CANCELLED,
    protocol.KillReason.SHUTDOWN: Code.PREEMPTED,
}


def class_of(code: Code) -> FailureClass:
    if code in INFRASTRUCTURE:
        return FailureClass.INFRASTRUCTURE
    if code in (Code.OK, Code.CANCELLED):
        return FailureClass.NONE
    return FailureClass.PARTICIPANT


def classify_status(status: protocol.Status) -> Code:
    """The code of a worker's final status."""
    if status.failure:
        try:
            code = Code(status.failure)
        except ValueError:
            return Code.AGENT_ERROR  # a code this site does not know: still not the participant's
        return code if code in INFRASTRUCTURE else Code.AGENT_ERROR
    if status.state is protocol.TaskState.FINISHED:
        return Code.OK
    if status.state is protocol.TaskState.CANCELLED:
        return Code.CANCELLED
    if status.state is protocol.TaskState.TIMED_OUT:
        return Code.TIME_LIMIT
    if status.kill_reason is not None:
        return _KILL_CODES[status.kill_reason]
    if status.exit_code is None:  # refused before it ran: unsafe archive, a program that cannot start
        return Code.BAD_SUBMISSION
    return Code.EXIT_CODE


def classify_dead_letter(reason: str | None) -> Code:
    """A dead-lettered task message: Service Bus gave up delivering it, or a worker refused it."""
    if reason == "MaxDeliveryCountExceeded":
        return Code.MAX_DELIVERIES
    if reason in ("MalformedMessage", "InvalidTask", "UnsupportedSchemaVersion", "MessageTooLarge"):
        return Code.INVALID_MESSAGE
    return Code.DEAD_LETTERED


def backoff_s(retry: int, base_s: float, max_s: float) -> float:
    """Delay before infrastructure retry number ``retry`` (1, 2, ...): base, 2×base, 4×base ... capped."""
    return min(max_s, base_s * 2 ** max(0, retry - 1))


def record_final_code(row: TaskRow, code: Code) -> None:
    row.failure_code = code.value
    row.failure_class = class_of(code).value


def infrastructure_failure(session: Session, row: TaskRow, code: Code, reason: str, now: datetime,
                           *, reported_by_worker: bool = False) -> bool:
    """An infrastructure failure of ``row``'s current attempt (the row is locked by the caller). Queue
    the next attempt after a back-off when the pool's budget allows (True: the caller sends it once
    committed), else make the task ``failed`` for good. ``reported_by_worker``: the worker's own final
    ``failed`` status was applied in this transaction (its history row is the final one)."""
    pool = session.get(Pool, row.pool)
    budget = pool.retry_budget if pool is not None else 0
    failure = (FailureClass.INFRASTRUCTURE.value, code.value)
    if (pool is not None and code not in NOT_RETRIED and row.infra_retries < budget
            and row.attempt < row.max_attempts and row.cancel_requested_at is None):
        delay = backoff_s(row.infra_retries + 1, pool.retry_backoff_s, pool.retry_backoff_max_s)
        transitions.retry(session, row, failure, f"infrastructure retry {row.infra_retries + 1} of {budget} in "
                          f"{delay:g} s after {code.value}: {reason}", delay, now,
                          after_worker_failure=reported_by_worker)
        return True
    if code in NOT_RETRIED:  # it would fail the same way again
        final_reason = reason
    else:
        final_reason = (f"{reason} (not retried: {row.infra_retries} of {budget} infrastructure retries used, "
                        f"attempt {row.attempt} of {row.max_attempts})")
    if reported_by_worker:  # already failed by the worker's status: complete the task's story
        row.reason = final_reason
        record_final_code(row, code)
    else:
        transitions.fail(session, row, final_reason, now, failure)
    return False

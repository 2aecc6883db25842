"""Attribution of final statuses and dead letters, and the back-off schedule (pure functions; the
retries themselves are tested through the real stack in tests/e2e/test_reliability.py)."""

from __future__ import annotations

import pytest

from worker.protocol import KillReason, Status, TaskState
from worker.site.failures import (
    Code,
    FailureClass,
    backoff_s,
    class_of,
    classify_dead_letter,
    classify_status,
)


def final(state: TaskState, **kw) -> Status:
    return Status(task_id="t1", attempt=1, seq=9, state=state, worker_id="w", **kw)


@pytest.mark.parametrize(("status", "code", "klass"), [
    (final(TaskState.FINISHED, exit_code=0), Code.OK, FailureClass.NONE),
    (final(TaskState.CANCELLED, kill_reason=KillReason.CANCELLED), Code.CANCELLED, FailureClass.NONE),
    (final(TaskState.FAILED, exit_code=3), Code.EXIT_CODE, FailureClass.PARTICIPANT),
    (final(TaskState.TIMED_OUT, kill_reason=KillReason.TIME), Code.TIME_LIMIT, FailureClass.PARTICIPANT),
    (final(TaskState.FAILED, kill_reason=KillReason.MEMORY), Code.MEMORY, FailureClass.PARTICIPANT),
    (final(TaskState.FAILED, kill_reason=KillReason.OUTPUT), Code.OUTPUT_FLOOD, FailureClass.PARTICIPANT),
    (final(TaskState.FAILED, kill_reason=KillReason.DISK), Code.DISK, FailureClass.PARTICIPANT),
    (final(TaskState.FAILED, reason="bundle program: unsafe path"), Code.BAD_SUBMISSION, FailureClass.PARTICIPANT),
    (final(TaskState.FAILED, failure="storage_error"), Code.STORAGE_ERROR, FailureClass.INFRASTRUCTURE),
    (final(TaskState.FAILED, failure="bundle_download"), Code.BUNDLE_DOWNLOAD, FailureClass.INFRASTRUCTURE),
    # A code this site does not know, or a participant code claimed as `failure`: still the agent's.
    (final(TaskState.FAILED, failure="cosmic_ray"), Code.AGENT_ERROR, FailureClass.INFRASTRUCTURE),
    (final(TaskState.FAILED, failure="exit_code"), Code.AGENT_ERROR, FailureClass.INFRASTRUCTURE),
])
def test_final_statuses_are_attributed(status, code, klass):
    assert classify_status(status) is code
    assert class_of(code) is klass


def test_dead_letters_are_infrastructure():
    assert classify_dead_letter("MaxDeliveryCountExceeded") is Code.MAX_DELIVERIES
    assert classify_dead_letter("InvalidTask") is Code.INVALID_MESSAGE
    assert classify_dead_letter(None) is Code.DEAD_LETTERED
    assert {class_of(c) for c in (Code.MAX_DELIVERIES, Code.INVALID_MESSAGE)} == {FailureClass.INFRASTRUCTURE}


def test_backoff_doubles_up_to_the_cap():
    assert [backoff_s(n, 5, 30) for n in (1, 2, 3, 4, 5)] == [5, 10, 20, 30, 30]

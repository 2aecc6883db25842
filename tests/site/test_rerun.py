"""transitions.rerun: the one way out of a final state (an operator's rerun), on a real database."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from worker.site import transitions
from worker.site.db import transaction
from worker.site.models import Task, TaskEvent
from worker.site.pools import register_pool


@pytest.fixture
def task(sessions) -> None:
    with transaction(sessions) as s:
        register_pool(s, "demo")
        transitions.submit(s, Task(id="t1", pool="demo", task_type="evaluate_submission", command=["true"],
                                   time_limit_s=60, max_attempts=1))


def test_rerun_of_a_failed_task_queues_a_clean_new_attempt(sessions, task):
    with transaction(sessions) as s:
        row = s.get(Task, "t1")
        row.worker_id, row.exit_code, row.kill_reason = "w1", 3, "time"
        transitions.fail(s, row, "exit 3")
    with transaction(sessions) as s:
        transitions.rerun(s, s.get(Task, "t1"), "rerun requested")
    with sessions() as s:
        row = s.get(Task, "t1")
        events = [(e.attempt, e.state, e.reason) for e in s.scalars(select(TaskEvent).order_by(TaskEvent.id))]
    assert (row.state, row.attempt, row.max_attempts) == ("queued", 2, 3)
    assert row.worker_id is None and row.exit_code is None and row.kill_reason is None and row.reason is None
    assert row.sent_at is None and row.finished_at is None and row.last_seq == -1
    assert events == [(1, "queued", "submitted"), (1, "failed", "exit 3"), (2, "queued", "rerun requested")]


def test_rerun_refuses_a_task_that_is_not_final(sessions, task):
    with transaction(sessions) as s, pytest.raises(transitions.TaskNotFinished):
        transitions.rerun(s, s.get(Task, "t1"), "too early")
    with sessions() as s:
        assert s.get(Task, "t1").attempt == 1
        assert len(list(s.scalars(select(TaskEvent)))) == 1

"""worker.site.transitions on a real database: each transition writes the row and exactly one history
row, a finished task is never changed, and no other module writes history rows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import func, select

from worker.protocol import Status, TaskState
from worker.site import transitions
from worker.site.db import transaction
from worker.site.models import ACTIVE, TERMINAL, SiteState, Task, TaskEvent
from worker.site.pools import register_pool

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def row_id(sessions) -> str:
    with transaction(sessions) as s:
        register_pool(s, "demo")
        transitions.submit(s, Task(id="t1", pool="demo", task_type="evaluate_submission", command=["true"],
                                   time_limit_s=60))
    return "t1"


def change(sessions, step, *args) -> tuple[Task, list[tuple[int, str, str, str | None]]]:
    with transaction(sessions) as s:
        step(s, s.get(Task, "t1"), *args)
    with sessions() as s:
        events = [(e.attempt, e.state, e.source, e.reason)
                  for e in s.scalars(select(TaskEvent).order_by(TaskEvent.id))]
        return s.get(Task, "t1"), events


def test_submit_writes_the_row_and_one_queued_event(sessions, row_id):
    row, events = change(sessions, lambda s, r: None)
    assert (row.state, row.attempt) == ("queued", 1)
    assert events == [(1, "queued", "site", "submitted")]


def test_lost_then_requeued_is_two_transitions_with_one_event_each(sessions, row_id):
    status = Status(task_id="t1", attempt=1, seq=0, state=TaskState.RUNNING, worker_id="w1")
    row, events = change(sessions, transitions.apply_worker_status, status)
    assert row.state == "running" and len(events) == 2
    row, events = change(sessions, transitions.lose, "lost: silent")
    assert row.state == "lost" and events[-1] == (1, "lost", "site", "lost: silent") and len(events) == 3
    row, events = change(sessions, transitions.requeue, "resubmitted")
    assert (row.state, row.attempt, row.worker_id, row.last_seq) == ("queued", 2, None, -1)
    assert events[-1] == (2, "queued", "site", "resubmitted") and len(events) == 4


@pytest.mark.parametrize(("step", "state"), [(transitions.fail, "failed"), (transitions.cancel, "cancelled")])
def test_a_finished_task_is_never_changed(sessions, row_id, step, state):
    row, events = change(sessions, step, "why")
    assert (row.state, row.reason, len(events)) == (state, "why", 2) and row.finished_at is not None
    for again in (transitions.fail, transitions.cancel, transitions.lose, transitions.requeue):
        with pytest.raises(transitions.TaskFinished), transaction(sessions) as s:
            again(s, s.get(Task, "t1"), "again")
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(TaskEvent)) == 2
        assert s.get(Task, "t1").state == state


def test_active_is_derived_from_the_states():
    assert ACTIVE == {"received", "preparing", "running", "uploading"}
    assert {s.value for s in SiteState if s.active} == ACTIVE
    assert not (ACTIVE & TERMINAL) and not SiteState.LOST.active and not SiteState.LOST.terminal
    assert not SiteState.QUEUED.active


def test_only_transitions_writes_history_rows():
    writers = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "worker").rglob("*.py")
                     if re.search(r"\bTaskEvent\(|insert\(TaskEvent\b", p.read_text()) and p.name != "models.py")
    assert writers == ["worker/site/transitions.py"]

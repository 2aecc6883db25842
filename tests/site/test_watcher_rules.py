"""The watcher's rules, applied to a real database (SQLite and PostgreSQL): idempotent, ordered,
terminal states final, one history row per transition, redelivery to another worker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from worker.protocol import Activity, HostFacts, Presence, Status, TaskState
from worker.site.db import transaction
from worker.site.models import Task, TaskEvent, Worker
from worker.site.models import utcnow as utcnow_
from worker.site.pools import register_pool
from worker.site.queries import is_live
from worker.site.watcher import Outcome, apply_presence, apply_status

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def task_id(sessions) -> str:
    with transaction(sessions) as s:
        register_pool(s, "demo")
        s.add(Task(id="t1", pool="demo", task_type="evaluate_submission", command=["true"], time_limit_s=60))
    return "t1"


def st(seq: int, state: TaskState, *, attempt: int = 1, worker: str = "w1", at: int | None = None,
       heartbeat: bool = False, **kw) -> Status:
    return Status(task_id="t1", attempt=attempt, seq=seq, state=state, worker_id=worker, heartbeat=heartbeat,
                  timestamp=T0 + timedelta(seconds=at if at is not None else seq), **kw)


def apply(sessions, status: Status) -> Outcome:
    with transaction(sessions) as s:
        return apply_status(s, status)


def history(sessions) -> list[tuple[int, str, str]]:
    with sessions() as s:
        return [(e.seq, e.state, e.source) for e in s.scalars(select(TaskEvent).order_by(TaskEvent.id))]


def task(sessions) -> Task:
    with sessions() as s:
        return s.get(Task, "t1")


def test_lifecycle_one_row_per_transition(sessions, task_id):
    host = HostFacts(hostname="h", os="linux", cpu_count=2, memory_mb=100, driver="process", agent_version="0")
    assert apply(sessions, st(0, TaskState.RECEIVED, host=host)) is Outcome.APPLIED
    assert apply(sessions, st(1, TaskState.RUNNING)) is Outcome.APPLIED
    assert apply(sessions, st(2, TaskState.RUNNING, heartbeat=True)) is Outcome.HEARTBEAT
    assert apply(sessions, st(3, TaskState.FINISHED, exit_code=0, output_bytes=10)) is Outcome.APPLIED
    row = task(sessions)
    assert (row.state, row.exit_code, row.output_bytes, row.worker_id) == ("finished", 0, 10, "w1")
    assert row.started_at == T0 + timedelta(seconds=1) and row.finished_at is not None
    assert history(sessions) == [(0, "received", "worker"), (1, "running", "worker"), (3, "finished", "worker")]
    with sessions() as s:
        worker = s.get(Worker, "w1")
        assert worker.host["hostname"] == "h" and worker.current_task is None and worker.pool == "demo"


def test_duplicates_and_stale_sequence_numbers_are_ignored(sessions, task_id):
    statuses = [st(0, TaskState.RECEIVED), st(1, TaskState.RUNNING), st(2, TaskState.UPLOADING)]
    for status in statuses:
        apply(sessions, status)
    for status in statuses:  # at-least-once delivery: everything again, in any order
        assert apply(sessions, status) is Outcome.DUPLICATE
    assert apply(sessions, st(1, TaskState.FAILED, at=10)) is Outcome.DUPLICATE  # old seq, even if newer time
    assert task(sessions).state == "uploading"
    assert len(history(sessions)) == 3


def test_out_of_order_delivery_keeps_latest(sessions, task_id):
    apply(sessions, st(0, TaskState.RECEIVED))
    apply(sessions, st(2, TaskState.RUNNING))
    assert apply(sessions, st(1, TaskState.PREPARING)) is Outcome.DUPLICATE
    assert task(sessions).state == "running"


def test_terminal_state_is_final(sessions, task_id):
    apply(sessions, st(0, TaskState.RECEIVED))
    apply(sessions, st(1, TaskState.FAILED, exit_code=3, reason="exit code 3"))
    assert apply(sessions, st(2, TaskState.RUNNING)) is Outcome.TERMINAL
    assert apply(sessions, st(0, TaskState.RECEIVED, worker="w2", at=100)) is Outcome.TERMINAL
    row = task(sessions)
    assert (row.state, row.exit_code, row.reason) == ("failed", 3, "exit code 3")


def test_other_attempt_and_unknown_task(sessions, task_id):
    assert apply(sessions, st(0, TaskState.RECEIVED, attempt=2)) is Outcome.STALE_ATTEMPT
    unknown = Status(task_id="nope", attempt=1, seq=0, state=TaskState.RECEIVED, worker_id="w1")
    assert apply(sessions, unknown) is Outcome.UNKNOWN_TASK
    assert task(sessions).state == "queued"


def test_redelivery_to_another_worker_restarts_the_sequence(sessions, task_id):
    apply(sessions, st(0, TaskState.RECEIVED, worker="w1", at=0))
    apply(sessions, st(1, TaskState.RUNNING, worker="w1", at=1))
    apply(sessions, st(5, TaskState.RUNNING, worker="w1", at=5, heartbeat=True))
    # w1 was killed; its lock expired and Service Bus gave the same attempt to w2, whose seq restarts.
    assert apply(sessions, st(0, TaskState.RECEIVED, worker="w2", at=60)) is Outcome.APPLIED
    assert apply(sessions, st(1, TaskState.RUNNING, worker="w2", at=61)) is Outcome.APPLIED
    # A late duplicate of w1's statuses is older than the new delivery: ignored.
    assert apply(sessions, st(6, TaskState.UPLOADING, worker="w1", at=6)) is Outcome.DUPLICATE
    assert apply(sessions, st(2, TaskState.FINISHED, worker="w2", at=62, exit_code=0)) is Outcome.APPLIED
    row = task(sessions)
    assert (row.state, row.worker_id) == ("finished", "w2")
    assert [h[1] for h in history(sessions)] == ["received", "running", "received", "running", "finished"]


# -- presence reports ------------------------------------------------------------------------------
HOST = HostFacts(hostname="h", os="linux", cpu_count=2, memory_mb=100, driver="process", agent_version="0")


def pr(at: int, activity: Activity = Activity.IDLE, *, worker: str = "w1", seq: int = 0) -> Presence:
    return Presence(worker_id=worker, activity=activity, interval_s=10, seq=seq, host=HOST,
                    timestamp=T0 + timedelta(seconds=at))


def presence(sessions, report: Presence, pool: str = "demo", now: datetime | None = None) -> Outcome:
    with transaction(sessions) as s:
        return apply_presence(s, report, pool, now=now)


def live(sessions, now: datetime) -> tuple[int, int]:
    with sessions() as s:
        workers = list(s.scalars(select(Worker)))
        return (sum(is_live(w, now) for w in workers),
                sum(is_live(w, now) and w.activity == "idle" for w in workers))


def test_presence_upserts_the_worker_and_duplicates_or_older_ones_change_nothing(sessions, task_id):
    now = T0 + timedelta(seconds=100)
    assert presence(sessions, pr(1), now=now) is Outcome.PRESENCE
    assert presence(sessions, pr(1), now=now + timedelta(seconds=5)) is Outcome.DUPLICATE  # redelivered
    assert presence(sessions, pr(3, seq=2), now=now) is Outcome.PRESENCE
    assert presence(sessions, pr(2, seq=1), now=now + timedelta(seconds=9)) is Outcome.DUPLICATE  # out of order
    with sessions() as s:
        w = s.get(Worker, "w1")
        assert (w.pool, w.activity, w.interval_s, w.left_at, w.host["hostname"]) == ("demo", "idle", 10, None, "h")
        assert w.reported_at == T0 + timedelta(seconds=3) and w.last_seen_at == now
    assert live(sessions, now + timedelta(seconds=29)) == (1, 1)  # within 3 intervals of 10 s
    assert live(sessions, now + timedelta(seconds=31)) == (0, 0)  # silent for longer: not live


def test_left_is_final_until_a_newer_report(sessions, task_id):
    now = T0 + timedelta(seconds=100)
    presence(sessions, pr(1), now=now)
    assert presence(sessions, pr(2, Activity.LEFT), now=now) is Outcome.PRESENCE
    assert live(sessions, now) == (0, 0)
    assert presence(sessions, pr(1), now=now) is Outcome.DUPLICATE  # a late idle report: still left
    assert apply(sessions, st(0, TaskState.RECEIVED, at=1)) is Outcome.APPLIED  # an old status
    with sessions() as s:
        assert s.get(Worker, "w1").left_at is not None
    assert live(sessions, now) == (0, 0)
    assert presence(sessions, pr(5), now=now) is Outcome.PRESENCE  # the agent is back
    assert live(sessions, now) == (1, 1)


def test_statuses_make_a_worker_busy_and_a_final_one_idle(sessions, task_id):
    now = utcnow_()
    presence(sessions, pr(0), now=now)
    apply(sessions, st(0, TaskState.RECEIVED, at=1))
    with sessions() as s:
        assert (s.get(Worker, "w1").activity, s.get(Worker, "w1").current_task) == ("busy", "t1")
    assert presence(sessions, pr(0, seq=1), now=now) is Outcome.DUPLICATE  # built before the task arrived
    apply(sessions, st(1, TaskState.FINISHED, at=2, exit_code=0))
    with sessions() as s:
        assert (s.get(Worker, "w1").activity, s.get(Worker, "w1").current_task) == ("idle", None)

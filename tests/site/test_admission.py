"""Fair admission on a real database (SQLite and PostgreSQL): limits per pool and per participant
label, priority then FIFO, and two admitters at once (two site replicas) never exceed a limit or move
the same task twice."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from worker.site.admission import admit
from worker.site.db import retrying, transaction
from worker.site.models import Pool, Task, TaskEvent
from worker.site.pools import register_pool

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def setup(sessions, tasks: list[tuple[str, str | None, int]], **limits) -> None:
    """``tasks``: (id, label, priority), submitted in this order."""
    with transaction(sessions) as s:
        pool = register_pool(s, "demo")
        for key, value in limits.items():
            setattr(pool, key, value)
        for i, (task_id, label, priority) in enumerate(tasks):
            s.add(Task(id=task_id, pool="demo", task_type="evaluate_submission", command=["true"], time_limit_s=60,
                       state="waiting", label=label, priority=priority, created_at=T0 + timedelta(seconds=i)))


def run(sessions) -> list[str]:
    return retrying(sessions, lambda s: admit(s, "demo"))


def finish(sessions, *task_ids: str) -> None:
    with transaction(sessions) as s:
        for task_id in task_ids:
            s.get(Task, task_id).state = "finished"


def test_per_label_cap_passes_over_a_flooding_participant(sessions):
    flood = [(f"f{i}", "flooder", 0) for i in range(6)]
    setup(sessions, [*flood, ("other", "someone", 0), ("base", None, 0)], max_in_flight_per_label=2)
    assert run(sessions) == ["f0", "f1", "other", "base"]  # the flooder's third waits; the others do not
    assert run(sessions) == []
    finish(sessions, "f0")
    assert run(sessions) == ["f2"]
    with sessions() as s:
        assert [e.reason for e in s.scalars(select(TaskEvent).where(TaskEvent.task_id == "f2"))] == ["admitted"]


def test_pool_cap_with_priority_then_fifo(sessions):
    setup(sessions, [("p1", "a", 0), ("p2", "b", 0), ("baseline", None, 10), ("p3", "a", 0)], max_in_flight=2)
    assert run(sessions) == ["baseline", "p1"]
    finish(sessions, "baseline")
    assert run(sessions) == ["p2"]
    finish(sessions, "p1", "p2")
    assert run(sessions) == ["p3"]


def test_a_second_admitter_waits_for_the_first_ones_commit(sessions):
    """Deterministic interleaving: replica A has admitted but not committed when replica B runs."""
    setup(sessions, [(f"t{i}", None, 0) for i in range(20)], max_in_flight=5)
    second: list[list[str]] = []
    with sessions() as a, a.begin():
        assert len(admit(a, "demo")) == 5
        b = threading.Thread(target=lambda: second.append(run(sessions)))
        b.start()
        b.join(1.0)  # B blocks on the pool row (PostgreSQL) or the write lock (SQLite) meanwhile
    b.join(60)
    assert second == [[]]  # it saw A's five in flight: nothing more fits
    with sessions() as s:
        assert s.query(Task).filter_by(state="queued").count() == 5


def test_two_admitters_at_once_never_exceed_the_limit(sessions):
    setup(sessions, [(f"t{i}", f"l{i % 3}", 0) for i in range(40)], max_in_flight=7)
    results: list[list[str]] = []
    barrier = threading.Barrier(4)

    def replica() -> None:
        barrier.wait()
        results.append(run(sessions))

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    admitted = [task_id for result in results for task_id in result]
    assert len(admitted) == len(set(admitted)) == 7
    with sessions() as s:
        assert s.query(Task).filter_by(state="queued").count() == 7
        assert s.query(TaskEvent).filter_by(reason="admitted").count() == 7
        assert s.get(Pool, "demo").max_in_flight == 7

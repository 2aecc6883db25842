"""An idle agent reports its presence on the response queue (at start, every heartbeat interval, and
``left`` on a clean stop), and none while it has a task. Real emulator and Azurite, least-rights queues."""

from __future__ import annotations

import time

import pytest

from worker.protocol import Activity

pytestmark = pytest.mark.slow


def test_idle_agent_reports_presence_and_leaves(pool):
    config = pool.config()
    stop = pool.start_agent(worker_id=config.worker_id)
    first = pool.collector.wait_presence(lambda p: p.worker_id == config.worker_id, timeout=20)
    assert first.activity is Activity.IDLE and first.interval_s == 0.5
    assert first.host.hostname and first.host.cpu_count >= 1
    pool.collector.wait_presence(lambda p: p.worker_id == config.worker_id and p.seq >= 3, timeout=10)

    stop.set()
    left = pool.collector.wait_presence(lambda p: p.activity is Activity.LEFT, timeout=20)
    assert left.worker_id == config.worker_id
    mine = [p for p in pool.collector.presences if p.worker_id == config.worker_id]
    assert [p.seq for p in mine] == sorted({p.seq for p in mine})  # in order, no duplicates
    assert mine[-1].activity is Activity.LEFT and all(p.activity is Activity.IDLE for p in mine[:-1])
    assert pool.collector.statuses == []  # presence is not a status


def test_no_idle_presence_while_a_task_runs(pool):
    pool.start_agent()
    pool.collector.wait_presence(lambda p: True, timeout=20)
    task = pool.python("import time; time.sleep(2.5)")
    pool.send(task)
    pool.collector.wait_for(task.task_id, lambda s: s.state.value == "running")
    running_since = time.monotonic()
    with pool.collector._cond:
        before = len(pool.collector.presences)
    final = pool.collector.wait_terminal(task.task_id)
    assert final.state.value == "finished"
    assert time.monotonic() - running_since > 1.5  # several presence intervals (0.5 s) went by
    with pool.collector._cond:
        during = pool.collector.presences[before:]
    # At most one report built just before the task was in hand; the heartbeats say it is alive.
    assert len(during) <= 1, during
    assert any(s.heartbeat for s in pool.collector.of(task.task_id))
    pool.collector.wait_presence(lambda p: p.seq > max(x.seq for x in pool.collector.presences[:before]) + 1,
                                 timeout=10)  # idle again: reports resume

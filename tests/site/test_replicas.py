"""Site replicas on one PostgreSQL database and one namespace: the local stack's own site service plus
two `pool site serve` processes. Every status is applied exactly once, no task is sent twice
(the emulator counts enqueued messages and sends dropped as duplicates), and the monitor's work
moves to another replica when the lease holder dies."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select

from tests.fixtures.azurite import require_azurite
from tests.fixtures.local_stack import supervised
from tests.fixtures.site_service import ADMIN_TOKEN, serve, site_yaml, stop_served
from worker.site.leases import holder_of
from worker.site.models import SiteState, Task, TaskEvent, utcnow

pytestmark = pytest.mark.slow


def queue_counters(stack) -> dict[str, float]:  # type: ignore[no-untyped-def]
    return stack.admin.metrics()["default-tasks"]


def wait_all_final(api: httpx.Client, ids: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        for task_id in list(pending):
            if api.get(f"/api/v1/tasks/{task_id}").json()["terminal"]:
                pending.discard(task_id)
        time.sleep(0.2)
    assert not pending, f"not final: {sorted(pending)}"


def assert_applied_once(stack, ids: list[str]) -> None:  # type: ignore[no-untyped-def]
    with stack.site.sessions() as session:
        for task_id in ids:
            task = session.get(Task, task_id)
            assert task.state == "finished" and task.attempt == 1, (task_id, task.state, task.attempt)
            events = [(e.attempt, e.state) for e in session.scalars(
                select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id))]
            assert len(events) == len(set(events)), (task_id, events)  # no status applied twice
            # An intermediate status that a peer's watcher overtook with a later one is skipped (the
            # watcher's seq rule, as for any reordering); the final one is applied exactly once.
            assert events[0] == (1, "queued") and events[-1] == (1, "finished"), (task_id, events)


def insert_unsent(stack, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    """Tasks recorded whose send 'failed' (sent_at empty, created 10 s ago): the monitor's to send."""
    ids = []
    with stack.site.sessions() as session, session.begin():
        for i in range(n):
            task_id = f"unsent-{os.getpid()}-{time.monotonic_ns()}-{i}"
            created = utcnow() - timedelta(seconds=10)
            session.add(Task(id=task_id, pool="default", task_type="evaluate_submission", command=["true"], env={},
                             bundles=[], time_limit_s=60, resources={}, max_attempts=1,
                             state=SiteState.QUEUED.value, attempt=1, created_at=created))
            session.flush()
            session.add(TaskEvent(task_id=task_id, attempt=1, seq=-1, state="queued", source="site",
                                  reason="submitted", reported_at=created))
            ids.append(task_id)
    return ids


def test_two_replicas_apply_each_status_once_send_each_task_once_and_take_over_the_monitor(
        tmp_path, postgres_database):
    require_azurite()
    from worker.local.stack import LocalStack

    stack = LocalStack(tmp_path / "pool", workers=3, database_url=postgres_database,
                       on_output=lambda _l: None).start()
    with supervised(stack):
        replicas = [serve(site_yaml(stack, tmp_path / f"site-{i}.yaml", monitor_lease_s=4)) for i in (1, 2)]
        clients = [httpx.Client(base_url=r.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
                   for r in replicas]
        try:
            # Submits through both replicas at once.
            before = queue_counters(stack)

            def submit(i: int) -> str:
                answer = clients[i % 2].post("/api/v1/tasks", json={"pool": "default", "command": ["true"]})
                assert answer.status_code == 201, answer.text
                return answer.json()["id"]

            with ThreadPoolExecutor(4) as pool:
                ids = list(pool.map(submit, range(30)))
            wait_all_final(clients[0], ids)
            assert_applied_once(stack, ids)

            # Unsent tasks: only the monitor lease holder sends them, once each.
            unsent = insert_unsent(stack, 10)
            wait_all_final(clients[1], unsent)
            assert_applied_once(stack, unsent)
            after = queue_counters(stack)
            assert after["enqueued_total"] - before["enqueued_total"] == 40
            assert after["duplicates_total"] == before["duplicates_total"]  # nothing was sent twice

            # The lease holder dies: another replica takes the monitor over.
            leader = holder_of(stack.site.sessions, "monitor")
            assert leader is not None
            leader_pid = int(leader.split(":")[1])
            killed = next((r for r in replicas if r.process.pid == leader_pid), None)
            if killed is not None:
                os.kill(killed.process.pid, signal.SIGKILL)  # a crash: the lease is not released
            else:  # the stack's own service leads: its monitor stops renewing, as if it had died
                stack.service.site.monitor.stop()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and holder_of(stack.site.sessions, "monitor") in (None, leader):
                time.sleep(0.2)
            new_leader = holder_of(stack.site.sessions, "monitor")
            assert new_leader not in (None, leader)
            survivor = next(c for c, r in zip(clients, replicas, strict=True) if r is not killed)
            late = insert_unsent(stack, 3)
            wait_all_final(survivor, late)
            assert_applied_once(stack, late)
        finally:
            for c in clients:
                c.close()
            for r in replicas:
                if r.process.poll() is None:
                    assert stop_served(r) == 0

"""Tenant isolation on the real emulator: two pools, each with its own worker Send key on its own
response queue. Statuses and presence reports forged across pools, attempts and workers are refused
(dead-lettered with the reason, counted) — and each forgery has a positive control: the same report,
sent where it belongs, is applied."""

from __future__ import annotations

import time
import uuid
from functools import partial

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusSubQueue

from tests.fixtures import waiting
from worker import protocol
from worker.config import competition_queues
from worker.emulator.launcher import generate_key
from worker.site.db import transaction
from worker.site.models import Pool, Task, Worker
from worker.site.pools import register_pool
from worker.site.producer import Submission
from worker.site.service import Site, SiteSettings
from worker.wire import report_messages

pytestmark = pytest.mark.slow
S = protocol.TaskState
HOST = protocol.HostFacts(hostname="h", os="linux", cpu_count=2, memory_mb=100, driver="process", agent_version="0")


class TwoPools:
    def __init__(self, emulator, site: Site, names: tuple[str, str]) -> None:
        self.emulator, self.site, self.names = emulator, site, names
        self.clients: dict[str, ServiceBusClient] = {}

    def _send(self, pool: str, messages: list[ServiceBusMessage]) -> None:
        """Through ``pool``'s response queue with ``pool``'s worker Send key (what its workers hold)."""
        _, responses = competition_queues(pool)
        client = self.clients.get(pool) or ServiceBusClient.from_connection_string(
            self.emulator.connection_string("worker", responses))
        self.clients[pool] = client
        with client.get_queue_sender(responses) as sender:
            for message in messages:
                sender.send_messages(message)

    def send(self, pool: str, *reports: protocol.Status | protocol.Presence) -> None:
        """Each report as a message of its own."""
        self._send(pool, [ServiceBusMessage(protocol.encode(report), message_id=uuid.uuid4().hex, subject=(
            protocol.SUBJECT_PRESENCE if isinstance(report, protocol.Presence) else protocol.SUBJECT_STATUS))
            for report in reports])

    def send_batch(self, pool: str, *statuses: protocol.Status, body: bytes | None = None) -> None:
        """One ``statuses`` message, as an agent sends a task's coalesced statuses (``body``: forged)."""
        [message] = report_messages(list(statuses))
        if body is not None:
            message = ServiceBusMessage(body, subject=protocol.SUBJECT_STATUSES, message_id=uuid.uuid4().hex)
        self._send(pool, [message])

    def task(self, task_id: str) -> Task:
        with self.site.sessions() as s:
            return s.get(Task, task_id)

    def dead_letters(self, pool: str, count: int, timeout: float = 15) -> list:
        _, responses = competition_queues(pool)
        found: list = []
        with ServiceBusClient.from_connection_string(self.emulator.connection_string()) as root, \
                root.get_queue_receiver(responses, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
            deadline = time.monotonic() + timeout
            while len(found) < count and time.monotonic() < deadline:
                for message in dlq.receive_messages(max_message_count=10, max_wait_time=1):
                    found.append(message)
                    dlq.complete_message(message)
        return found

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


@pytest.fixture
def pools(emulator, azurite, db_url):
    names = (f"a{uuid.uuid4().hex[:10]}", f"b{uuid.uuid4().hex[:10]}")
    site = Site(SiteSettings(database_url=db_url, storage_connection_string=azurite.connection_string))
    for name in names:
        task_queue, response_queue = competition_queues(name)
        keys = {k: generate_key() for k in ("wl", "st", "ws", "sr")}
        emulator.create_queue(task_queue, lock_duration="PT5S", requires_duplicate_detection=True,
                              policies=[{"name": "worker", "key": keys["wl"], "rights": ["Listen"]},
                                        {"name": "site", "key": keys["st"], "rights": ["Send", "Listen"]}])
        emulator.create_queue(response_queue, policies=[{"name": "worker", "key": keys["ws"], "rights": ["Send"]},
                                                        {"name": "site", "key": keys["sr"], "rights": ["Listen"]}])
        with transaction(site.sessions) as s:
            register_pool(s, name, task_queue_connection_string=emulator.connection_string("site", task_queue),
                          response_queue_connection_string=emulator.connection_string("site", response_queue))
    site.start_background()
    env = TwoPools(emulator, site, names)
    yield env
    env.close()
    site.close()


wait_until = partial(waiting.wait_until, timeout=15)


def status(task_id: str, seq: int, state: S, *, worker: str = "w-a", attempt: int = 1, **kw) -> protocol.Status:
    return protocol.Status(task_id=task_id, attempt=attempt, seq=seq, state=state, worker_id=worker, **kw)


def test_a_status_for_another_pools_task_is_refused_and_counted(pools):
    a, b = pools.names
    task_id = pools.site.producer.submit(Submission(pool=a, command=["true"])).id
    pools.send(a, status(task_id, 0, S.RECEIVED), status(task_id, 1, S.RUNNING))
    wait_until(lambda: pools.task(task_id).state == "running", what="the control statuses")  # positive control
    # Pool b's worker (its own, real Send key) claims pool a's task is finished.
    pools.send(b, status(task_id, 2, S.FINISHED, worker="w-a", exit_code=0))
    dead = pools.dead_letters(b, 1)
    assert [m.dead_letter_reason for m in dead] == ["WrongPool"]
    assert task_id in dead[0].dead_letter_error_description
    assert pools.task(task_id).state == "running"
    with pools.site.sessions() as s:
        assert (s.get(Pool, b).wrong_pool_reports, s.get(Pool, a).wrong_pool_reports) == (1, 0)
    assert pools.site.watcher.stats.wrong_pool == 1
    # The same status, through the pool it belongs to: applied.
    pools.send(a, status(task_id, 2, S.FINISHED, worker="w-a", exit_code=0))
    wait_until(lambda: pools.task(task_id).state == "finished", what="the real final status")
    assert (pools.task(task_id).failure_class, pools.task(task_id).failure_code) == ("none", "ok")


def test_a_presence_report_cannot_claim_another_pools_live_worker(pools):
    a, b = pools.names
    presence = protocol.Presence(worker_id="w-shared", interval_s=30, seq=0, host=HOST)
    pools.send(a, presence)
    wait_until(lambda: pools.site.watcher.stats.applied >= 1, what="pool a's presence")
    pools.send(b, protocol.Presence(worker_id="w-shared", interval_s=30, seq=1, host=HOST))  # claimed from b
    assert [m.dead_letter_reason for m in pools.dead_letters(b, 1)] == ["WrongPool"]
    pools.send(b, protocol.Presence(worker_id="w-b", interval_s=30, seq=0, host=HOST))  # positive control
    wait_until(lambda: pools.site.watcher.stats.applied >= 2, what="pool b's own presence")
    with pools.site.sessions() as s:
        assert {w.id: w.pool for w in s.query(Worker)} == {"w-shared": a, "w-b": b}
    # A status naming pool a's live worker, through b for a task of b, is refused too.
    task_id = pools.site.producer.submit(Submission(pool=b, command=["true"])).id
    pools.send(b, status(task_id, 0, S.RECEIVED, worker="w-shared"))
    assert [m.dead_letter_reason for m in pools.dead_letters(b, 1)] == ["WrongPool"]
    pools.send(b, status(task_id, 0, S.RECEIVED, worker="w-b"))  # positive control
    wait_until(lambda: pools.task(task_id).state == "received", what="pool b's worker's status")


def test_statuses_forged_across_attempts_and_workers_change_nothing(pools):
    a, _ = pools.names
    task_id = pools.site.producer.submit(Submission(pool=a, command=["true"])).id
    pools.send(a, status(task_id, 0, S.RECEIVED, worker="w1"), status(task_id, 1, S.RUNNING, worker="w1"))
    wait_until(lambda: pools.task(task_id).state == "running", what="w1's statuses")
    # Another worker of the same pool claims the task it does not hold; another attempt is claimed.
    pools.send(a, status(task_id, 5, S.FINISHED, worker="w2", exit_code=0))
    assert [m.dead_letter_reason for m in pools.dead_letters(a, 1)] == ["WrongWorker"]
    ignored = pools.site.watcher.stats.ignored
    pools.send(a, status(task_id, 6, S.FINISHED, worker="w1", attempt=2, exit_code=0))
    wait_until(lambda: pools.site.watcher.stats.ignored > ignored, what="the other attempt's status")
    assert pools.task(task_id).state == "running"
    # Positive control: the holder's own final status.
    pools.send(a, status(task_id, 7, S.FINISHED, worker="w1", exit_code=0))
    wait_until(lambda: pools.task(task_id).state == "finished", what="w1's final status")
    assert pools.task(task_id).worker_id == "w1"


def test_a_batch_of_statuses_for_another_pools_task_is_refused_as_a_whole(pools):
    a, b = pools.names
    task_id = pools.site.producer.submit(Submission(pool=a, command=["true"])).id
    other = pools.site.producer.submit(Submission(pool=b, command=["true"])).id
    batch = [status(task_id, 0, S.RECEIVED), status(task_id, 1, S.RUNNING), status(task_id, 2, S.FINISHED, exit_code=0)]
    pools.send_batch(b, *batch)  # pool b's worker key, pool a's task
    dead = pools.dead_letters(b, 1)
    assert [m.dead_letter_reason for m in dead] == ["WrongPool"] and task_id in dead[0].dead_letter_error_description
    assert "0 of the message's 3 statuses applied" in dead[0].dead_letter_error_description
    assert pools.task(task_id).state == "queued"
    # Two tasks' statuses in one message: malformed, nothing applied (the message is settled as one).
    mixed = protocol.encode_statuses([status(other, 0, S.RECEIVED, worker="w-b")]).rstrip(b"]") + b"," + \
        protocol.encode_statuses([status(task_id, 1, S.RUNNING, worker="w-b")]).lstrip(b"[")
    pools.send_batch(b, *batch, body=mixed)
    assert [m.dead_letter_reason for m in pools.dead_letters(b, 1)] == ["InvalidStatus"]
    assert (pools.task(other).state, pools.task(task_id).state) == ("queued", "queued")
    # Positive controls: the same batch through pool a's own queue, and pool b's task's own statuses.
    pools.send_batch(a, *batch)
    wait_until(lambda: pools.task(task_id).state == "finished", what="the batch through its own pool")
    with pools.site.sessions() as s:
        assert [e.state for e in s.get(Task, task_id).events][-3:] == ["received", "running", "finished"]
    pools.send_batch(b, status(other, 0, S.RECEIVED, worker="w-b"), status(other, 1, S.RUNNING, worker="w-b"))
    wait_until(lambda: pools.task(other).state == "running", what="pool b's task's batch")

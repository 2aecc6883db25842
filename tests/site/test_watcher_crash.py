"""The watcher settles a status message only after the transaction that applied it committed.

A crash is simulated at the two dangerous points of :meth:`Watcher.handle` on the real emulator and a
real database: between applying and committing (nothing was written, so the message must come back
and be applied by the next watcher — completing it before the commit loses the status), and between
committing and completing (the message comes back and must change nothing: no status applied twice).
"""

from __future__ import annotations

import time
import uuid

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusReceiveMode
from sqlalchemy import event, select

from worker import protocol
from worker.config import competition_queues
from worker.emulator.launcher import generate_key
from worker.site.db import make_engine, make_sessionmaker, migrate, transaction
from worker.site.models import Task, TaskEvent
from worker.site.pools import register_pool
from worker.site.queues import SiteQueues
from worker.site.watcher import Watcher

pytestmark = pytest.mark.slow


class Crash(BaseException):
    pass


@pytest.fixture
def setup(emulator, db_url):
    name = f"w{uuid.uuid4().hex[:10]}"
    _, responses = competition_queues(name)
    emulator.create_queue(responses, lock_duration="PT2S", policies=[
        {"name": "worker", "key": generate_key(), "rights": ["Send"]},
        {"name": "site", "key": generate_key(), "rights": ["Listen"]}])
    engine = make_engine(db_url)
    migrate(engine)
    sessions = make_sessionmaker(engine)
    with transaction(sessions) as s:
        register_pool(s, name, response_queue_connection_string=emulator.connection_string("site", responses))
        s.add(Task(id="t1", pool=name, task_type="evaluate_submission", command=["true"], time_limit_s=60))
    queues = SiteQueues()
    yield emulator, name, responses, engine, sessions, queues
    queues.close()
    engine.dispose()


def crash_at(engine, point: str):
    """A session factory whose every commit 'crashes' at ``point`` (before_commit / after_commit)."""
    crashing = make_sessionmaker(engine)

    @event.listens_for(crashing, point)
    def _die(_session):  # type: ignore[no-untyped-def]
        raise Crash(point)

    return crashing


def send_status(emulator, responses: str, status: protocol.Status) -> None:
    with ServiceBusClient.from_connection_string(emulator.connection_string("worker", responses)) as client, \
            client.get_queue_sender(responses) as sender:
        sender.send_messages(ServiceBusMessage(protocol.encode(status), subject=protocol.SUBJECT_STATUS,
                                               message_id=uuid.uuid4().hex))


def handle_once(emulator, responses: str, watcher: Watcher, pool: str) -> None:
    """One watcher process's life: receive the status, handle it, 'die' (the link closes unsettled)."""
    with ServiceBusClient.from_connection_string(emulator.connection_string("site", responses)) as client, \
            client.get_queue_receiver(responses, receive_mode=ServiceBusReceiveMode.PEEK_LOCK) as receiver:
        messages = receiver.receive_messages(max_message_count=1, max_wait_time=10)
        assert messages, "the status message is not (back) on the queue"
        with pytest.raises(Crash):
            watcher.handle(receiver, messages, pool)


def recover(emulator, responses: str, sessions, pool: str, timeout: float = 20) -> Watcher:
    """A fresh watcher on the same queue, until the queue is drained."""
    watcher = Watcher(sessions, SiteQueues())
    with ServiceBusClient.from_connection_string(emulator.connection_string("site", responses)) as client, \
            client.get_queue_receiver(responses, receive_mode=ServiceBusReceiveMode.PEEK_LOCK) as receiver:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            messages = receiver.receive_messages(max_message_count=10, max_wait_time=1)
            if messages:
                watcher.handle(receiver, messages, pool)
            elif watcher.stats.received:
                break
    watcher.queues.close()
    return watcher


def trail(sessions) -> list[tuple[int, str]]:
    with sessions() as s:
        return [(e.seq, e.state) for e in s.scalars(select(TaskEvent).where(TaskEvent.task_id == "t1"))]


def test_a_crash_before_the_commit_loses_no_status(setup):
    emulator, pool, responses, engine, sessions, queues = setup
    send_status(emulator, responses, protocol.Status(task_id="t1", attempt=1, seq=0, state=protocol.TaskState.RUNNING,
                                                     worker_id="w1"))
    handle_once(emulator, responses, Watcher(crash_at(engine, "before_commit"), queues), pool)
    assert trail(sessions) == []  # rolled back: nothing applied
    recovered = recover(emulator, responses, sessions, pool)
    assert recovered.stats.applied == 1, "the status was settled before its transaction committed: lost"
    assert trail(sessions) == [(0, "running")]
    with sessions() as s:
        assert s.get(Task, "t1").state == "running"


def test_a_crash_after_the_commit_applies_the_status_once(setup):
    emulator, pool, responses, engine, sessions, queues = setup
    send_status(emulator, responses, protocol.Status(task_id="t1", attempt=1, seq=0, state=protocol.TaskState.RUNNING,
                                                     worker_id="w1"))
    handle_once(emulator, responses, Watcher(crash_at(engine, "after_commit"), queues), pool)
    assert trail(sessions) == [(0, "running")]  # committed, but the message was never completed
    recovered = recover(emulator, responses, sessions, pool)
    assert (recovered.stats.received, recovered.stats.applied) == (1, 0)  # it came back: a duplicate
    assert trail(sessions) == [(0, "running")]

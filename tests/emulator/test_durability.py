"""kill -9 durability: every acknowledged send survives, locks are released, numbering continues."""

from __future__ import annotations

import threading
import time

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusReceiveMode

pytestmark = pytest.mark.slow


def _drain(conn: str, queue: str, expect: int, timeout: float = 20) -> list:
    got: list = []
    deadline = time.monotonic() + timeout
    with ServiceBusClient.from_connection_string(conn) as c, c.get_queue_receiver(
            queue, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE, prefetch_count=100) as r:
        while len(got) < expect and time.monotonic() < deadline:
            got += r.receive_messages(max_message_count=100, max_wait_time=1)
        got += r.receive_messages(max_message_count=100, max_wait_time=0.5)  # nothing extra may appear
    return got


def test_kill9_keeps_acknowledged_messages_and_releases_locks(emulator_factory):
    emu = emulator_factory(queues=[{"name": "durable", "lock_duration": "PT1M"}])
    with ServiceBusClient.from_connection_string(emu.connection_string()) as c:
        with c.get_queue_sender("durable") as s:
            for i in range(30):
                s.send_messages(ServiceBusMessage(f"single-{i}", message_id=f"single-{i}"))
            s.send_messages([ServiceBusMessage(f"batch-{i}", message_id=f"batch-{i}") for i in range(20)])
        with c.get_queue_receiver("durable", prefetch_count=0) as r:
            done = r.receive_messages(max_message_count=3, max_wait_time=5)
            for m in done:
                r.complete_message(m)
            locked = r.receive_messages(max_message_count=5, max_wait_time=5)
            assert len(done) == 3 and len(locked) == 5
            last_seq = max(m.sequence_number for m in done + locked)
            emu.kill()  # while 5 messages are locked (1 minute lock)
    emu.start()
    m = emu.metrics()["durable"]
    assert m["active_messages"] == 47 and m["locked_messages"] == 0
    got = _drain(emu.connection_string(), "durable", 47, timeout=10)  # well inside the old lock duration
    ids = [x.message_id for x in got]
    assert len(ids) == 47 and len(set(ids)) == 47
    assert {x.message_id for x in locked} <= set(ids)
    assert not {x.message_id for x in done} & set(ids)
    with ServiceBusClient.from_connection_string(emu.connection_string()) as c:
        with c.get_queue_sender("durable") as s:
            s.send_messages(ServiceBusMessage("after restart"))
        (fresh,) = _drain(emu.connection_string(), "durable", 1)
    assert fresh.sequence_number > last_seq


@pytest.mark.parametrize("group_commit", ["0", "1"], ids=["inline-commit", "group-commit"])
def test_kill9_during_a_send_stream_loses_no_acknowledged_message(emulator_factory, monkeypatch, group_commit):
    monkeypatch.setenv("POOL_EMULATOR_GROUP_COMMIT", group_commit)  # inherited by the emulator process
    emu = emulator_factory(queues=[{"name": "stream"}])
    acked: list[str] = []
    errors: list[Exception] = []
    stop = threading.Event()

    def produce() -> None:
        with ServiceBusClient.from_connection_string(emu.connection_string(), retry_total=0) as c:
            try:
                with c.get_queue_sender("stream") as s:
                    i = 0
                    while not stop.is_set():
                        s.send_messages(ServiceBusMessage(f"{i}", message_id=f"{i}"))
                        acked.append(f"{i}")
                        i += 1
            except Exception as exc:  # noqa: BLE001  (the broker died under us: expected)
                errors.append(exc)

    thread = threading.Thread(target=produce)
    thread.start()
    deadline = time.monotonic() + 10
    while len(acked) < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    emu.kill()
    stop.set()
    thread.join(30)
    assert len(acked) >= 200 and errors, "the stream should have been cut by the kill"
    emu.start()
    got = {m.message_id for m in _drain(emu.connection_string(), "stream", len(acked), timeout=30)}
    missing = [i for i in acked if i not in got]
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:5]}"
    assert len(got) - len(acked) <= 1  # at most the one in flight when killed (stored, not yet acked)


def test_runtime_queue_and_dead_letters_survive_restart(emulator_factory):
    emu = emulator_factory()
    emu.create_queue("made-at-runtime", max_delivery_count=1)
    with ServiceBusClient.from_connection_string(emu.connection_string()) as c:
        with c.get_queue_sender("made-at-runtime") as s:
            s.send_messages(ServiceBusMessage("poison"))
        with c.get_queue_receiver("made-at-runtime") as r:
            (m,) = r.receive_messages(max_wait_time=5)
            r.abandon_message(m)  # max_delivery_count=1 -> dead-lettered
    emu.stop()  # a clean SIGTERM this time
    emu.start()
    assert emu.metrics()["made-at-runtime"]["dead_lettered_messages"] == 1
    dlq = _drain(emu.connection_string(), "made-at-runtime/$deadletterqueue", 1)
    assert [d.dead_letter_reason for d in dlq] == ["MaxDeliveryCountExceeded"]

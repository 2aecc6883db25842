"""Send / receive semantics through the unchanged azure-servicebus SDK (sync)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode, ServiceBusSubQueue
from azure.servicebus.exceptions import MessageLockLostError


def test_all_message_fields_round_trip(client, queue_factory):
    q = queue_factory()
    sent = ServiceBusMessage(
        b"\x00\x01binary body",
        application_properties={"attempt": 3, "kind": "task", "ratio": 0.5, "ok": True},
        correlation_id="corr-1", subject="subj", content_type="application/json", reply_to="replies",
        time_to_live=timedelta(minutes=5), message_id="msg-1", to="someone", reply_to_session_id="rs",
    )
    with client.get_queue_sender(q) as sender:
        sender.send_messages(sent)
    with client.get_queue_receiver(q, max_wait_time=5) as receiver:
        (got,) = receiver.receive_messages(max_message_count=1, max_wait_time=5)
        assert b"".join(got.body) == b"\x00\x01binary body"
        assert got.application_properties == {b"attempt": 3, b"kind": b"task", b"ratio": 0.5, b"ok": True}
        assert (got.correlation_id, got.subject, got.content_type, got.reply_to, got.message_id) == (
            "corr-1", "subj", "application/json", "replies", "msg-1")
        assert got.to == "someone" and got.reply_to_session_id == "rs"
        assert got.time_to_live == timedelta(minutes=5)
        assert got.delivery_count == 0
        assert got.sequence_number >= 1
        assert got.enqueued_time_utc is not None and got.locked_until_utc > got.enqueued_time_utc
        assert got.lock_token
        receiver.complete_message(got)


def test_fifo_and_monotonic_sequence_numbers(client, queue_factory):
    q = queue_factory()
    with client.get_queue_sender(q) as sender:
        for i in range(10):
            sender.send_messages(ServiceBusMessage(f"m{i}"))
    with client.get_queue_receiver(q) as receiver:
        got = []
        while len(got) < 10:
            batch = receiver.receive_messages(max_message_count=10, max_wait_time=3)
            assert batch, "queue ran dry before all messages arrived"
            for m in batch:
                receiver.complete_message(m)
            got += batch
    assert [str(m) for m in got] == [f"m{i}" for i in range(10)]
    seqs = [m.sequence_number for m in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == 10


def test_batch_send(client, queue_factory):
    q = queue_factory()
    with client.get_queue_sender(q) as sender:
        batch = sender.create_message_batch()
        for i in range(5):
            batch.add_message(ServiceBusMessage(f"b{i}", application_properties={"i": i}))
        sender.send_messages(batch)
        sender.send_messages([ServiceBusMessage("l0"), ServiceBusMessage("l1")])  # a list is a batch too
    with client.get_queue_receiver(q, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as receiver:
        got = []
        while len(got) < 7:
            more = receiver.receive_messages(max_message_count=10, max_wait_time=3)
            assert more
            got += more
    assert [str(m) for m in got] == ["b0", "b1", "b2", "b3", "b4", "l0", "l1"]
    assert [m.application_properties[b"i"] for m in got[:5]] == list(range(5))


def test_receive_and_delete_removes_message(client, queue_factory, emulator):
    q = queue_factory()
    with client.get_queue_sender(q) as sender:
        sender.send_messages(ServiceBusMessage("once"))
    with client.get_queue_receiver(q, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as receiver:
        (m,) = receiver.receive_messages(max_wait_time=5)
        assert str(m) == "once"
        assert receiver.receive_messages(max_wait_time=1) == []
    assert emulator.metrics()[q]["active_messages"] == 0


def test_empty_receive_returns_after_max_wait(client, queue_factory):
    q = queue_factory()
    with client.get_queue_receiver(q) as receiver:
        start = time.monotonic()
        assert receiver.receive_messages(max_wait_time=1) == []
        assert time.monotonic() - start < 3


def test_abandon_redelivers_with_incremented_count(client, queue_factory):
    q = queue_factory()
    with client.get_queue_sender(q) as sender:
        sender.send_messages(ServiceBusMessage("again"))
    with client.get_queue_receiver(q) as receiver:
        (m,) = receiver.receive_messages(max_wait_time=5)
        assert m.delivery_count == 0
        receiver.abandon_message(m)
        (m2,) = receiver.receive_messages(max_wait_time=5)
        assert m2.sequence_number == m.sequence_number and m2.delivery_count == 1
        assert m2.lock_token != m.lock_token
        receiver.complete_message(m2)


@pytest.mark.slow
def test_dead_letter_with_reason(client, queue_factory):
    q = queue_factory()
    with client.get_queue_sender(q) as sender:
        sender.send_messages(ServiceBusMessage("poison", application_properties={"k": "v"}))
    with client.get_queue_receiver(q) as receiver:
        (m,) = receiver.receive_messages(max_wait_time=5)
        receiver.dead_letter_message(m, reason="BadInput", error_description="could not parse")
        assert receiver.receive_messages(max_wait_time=1) == []
    with client.get_queue_receiver(q, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        (d,) = dlq.receive_messages(max_wait_time=5)
        assert str(d) == "poison" and d.sequence_number == m.sequence_number
        assert d.dead_letter_reason == "BadInput"
        assert d.dead_letter_error_description == "could not parse"
        assert d.application_properties[b"k"] == b"v"
        dlq.complete_message(d)


@pytest.mark.slow
def test_renew_lock_extends_and_expired_lock_is_lost(client, queue_factory):
    q = queue_factory(lock_duration="PT2S")
    with client.get_queue_sender(q) as sender:
        sender.send_messages(ServiceBusMessage("slow"))
    with client.get_queue_receiver(q) as receiver:
        (m,) = receiver.receive_messages(max_wait_time=5)
        first = m.locked_until_utc
        time.sleep(1.2)
        new_until = receiver.renew_message_lock(m)
        assert new_until > first
        time.sleep(1.2)  # past the original lock, inside the renewed one
        receiver.complete_message(m)

    with client.get_queue_sender(q) as sender:
        sender.send_messages(ServiceBusMessage("late"))
    with client.get_queue_receiver(q) as receiver:
        (m,) = receiver.receive_messages(max_wait_time=5)
        time.sleep(2.5)
        with pytest.raises(MessageLockLostError):
            receiver.renew_message_lock(m)
        (again,) = receiver.receive_messages(max_wait_time=5)  # lock expiry redelivers
        assert again.sequence_number == m.sequence_number and again.delivery_count == 1
        receiver.complete_message(again)


def test_competing_consumers_share_the_queue(client, queue_factory):
    q = queue_factory()
    with client.get_queue_sender(q) as sender:
        sender.send_messages([ServiceBusMessage(f"c{i}") for i in range(6)])
    with client.get_queue_receiver(q, prefetch_count=0) as r1, client.get_queue_receiver(q, prefetch_count=0) as r2:
        a = r1.receive_messages(max_message_count=3, max_wait_time=3)
        b = r2.receive_messages(max_message_count=3, max_wait_time=3)
        seen = {str(m) for m in a} | {str(m) for m in b}
        assert len(a) + len(b) == len(seen), "a message was delivered to two receivers at once"
        for r, ms in ((r1, a), (r2, b)):
            for m in ms:
                r.complete_message(m)

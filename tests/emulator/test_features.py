"""Defer, max delivery count, TTL, scheduling, peek and duplicate detection through the sync SDK."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode, ServiceBusSubQueue
from azure.servicebus.exceptions import MessageNotFoundError


def _dlq(client, q):
    return client.get_queue_receiver(q, sub_queue=ServiceBusSubQueue.DEAD_LETTER,
                                     receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE)


def test_defer_then_receive_deferred_and_complete(quick_client, queue_factory, emulator):
    client = quick_client
    q = queue_factory()
    with client.get_queue_sender(q) as sender:
        sender.send_messages([ServiceBusMessage("later"), ServiceBusMessage("now")])
    with client.get_queue_receiver(q) as receiver:
        first = receiver.receive_messages(max_wait_time=5)[0]
        assert str(first) == "later"
        receiver.defer_message(first)
        (second,) = receiver.receive_messages(max_wait_time=5)
        assert str(second) == "now"  # the deferred one is skipped
        receiver.complete_message(second)
        assert emulator.metrics()[q]["deferred_messages"] == 1
        (back,) = receiver.receive_deferred_messages([first.sequence_number])
        assert str(back) == "later" and back.lock_token
        receiver.complete_message(back)  # settled through $management (update-disposition)
        with pytest.raises(MessageNotFoundError):  # completed: gone for good
            receiver.receive_deferred_messages([first.sequence_number])
    m = emulator.metrics()[q]
    assert m["deferred_messages"] == 0 and m["active_messages"] == 0 and m["completed_total"] == 2


def test_unknown_deferred_sequence_number_is_an_error(quick_client, queue_factory):
    q = queue_factory()
    with quick_client.get_queue_receiver(q) as receiver, pytest.raises(MessageNotFoundError):
        receiver.receive_deferred_messages([12345])


@pytest.mark.slow
def test_max_delivery_count_dead_letters(client, queue_factory):
    q = queue_factory(max_delivery_count=2)
    with client.get_queue_sender(q) as sender:
        sender.send_messages(ServiceBusMessage("crashy"))
    with client.get_queue_receiver(q) as receiver:
        for expected_count in (0, 1):
            (m,) = receiver.receive_messages(max_wait_time=5)
            assert m.delivery_count == expected_count
            receiver.abandon_message(m)
        assert receiver.receive_messages(max_wait_time=1) == []
    with _dlq(client, q) as dlq:
        (d,) = dlq.receive_messages(max_wait_time=5)
        assert str(d) == "crashy"
        assert d.dead_letter_reason == "MaxDeliveryCountExceeded"
        assert d.delivery_count == 2


@pytest.mark.slow
def test_ttl_expiry_dead_letters_when_configured(client, queue_factory, emulator):
    q = queue_factory(dead_lettering_on_message_expiration=True)
    with client.get_queue_sender(q) as sender:
        sender.send_messages(ServiceBusMessage("short", time_to_live=timedelta(seconds=1)))
        sender.send_messages(ServiceBusMessage("long"))
    time.sleep(1.6)
    with client.get_queue_receiver(q, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as receiver:
        got = receiver.receive_messages(max_message_count=5, max_wait_time=2)
        assert [str(m) for m in got] == ["long"]
    with _dlq(client, q) as dlq:
        (d,) = dlq.receive_messages(max_wait_time=5)
        assert str(d) == "short" and d.dead_letter_reason == "TTLExpiredException"
    assert emulator.metrics()[q]["expired_total"] == 1


@pytest.mark.slow
def test_ttl_expiry_drops_without_dead_lettering(client, queue_factory, emulator):
    q = queue_factory(default_message_ttl="PT1S")  # the queue default applies when the message sets none
    with client.get_queue_sender(q) as sender:
        sender.send_messages(ServiceBusMessage("gone"))
    time.sleep(1.6)
    with client.get_queue_receiver(q) as receiver:
        assert receiver.receive_messages(max_wait_time=1) == []
    m = emulator.metrics()[q]
    assert m["expired_total"] == 1 and m["dead_lettered_messages"] == 0


@pytest.mark.slow
def test_scheduled_enqueue_time_and_cancel(client, queue_factory, emulator):
    q = queue_factory()
    soon = datetime.now(UTC) + timedelta(seconds=4)
    with client.get_queue_sender(q) as sender:
        sender.send_messages(ServiceBusMessage("via-property", scheduled_enqueue_time_utc=soon))
        (seq_keep,) = sender.schedule_messages(ServiceBusMessage("via-schedule"), soon)
        seq_cancel = sender.schedule_messages([ServiceBusMessage("cancelled")], soon)
        sender.cancel_scheduled_messages(seq_cancel)
    assert emulator.metrics()[q]["scheduled_messages"] == 2
    with client.get_queue_receiver(q) as receiver:
        assert receiver.receive_messages(max_wait_time=0.5) == []  # not yet visible
        got = []
        deadline = time.monotonic() + 8
        while len(got) < 2 and time.monotonic() < deadline:
            for m in receiver.receive_messages(max_message_count=5, max_wait_time=1):
                receiver.complete_message(m)
                got.append(m)
    assert sorted(str(m) for m in got) == ["via-property", "via-schedule"]
    assert seq_keep in [m.sequence_number for m in got]
    assert all(m.scheduled_enqueue_time_utc is not None for m in got)
    assert emulator.metrics()[q]["scheduled_messages"] == 0


def test_peek_does_not_lock_or_remove(client, queue_factory):
    q = queue_factory()
    with client.get_queue_sender(q) as sender:
        sender.send_messages([ServiceBusMessage(f"p{i}") for i in range(3)])
    with client.get_queue_receiver(q) as receiver:
        peeked = receiver.peek_messages(max_message_count=10)
        assert [str(m) for m in peeked] == ["p0", "p1", "p2"]
        later = receiver.peek_messages(max_message_count=1, sequence_number=peeked[1].sequence_number)
        assert [str(m) for m in later] == ["p1"]
        got = receiver.receive_messages(max_message_count=3, max_wait_time=3)
        assert len(got) == 3
        for m in got:
            receiver.complete_message(m)
        assert receiver.peek_messages(max_message_count=10) == []


def test_duplicate_detection_on_message_id(client, queue_factory, emulator):
    q = queue_factory(requires_duplicate_detection=True, duplicate_detection_history_time_window="PT1M")
    with client.get_queue_sender(q) as sender:
        sender.send_messages(ServiceBusMessage("first", message_id="same"))
        sender.send_messages(ServiceBusMessage("second", message_id="same"))  # accepted, then dropped
        sender.send_messages(ServiceBusMessage("other", message_id="different"))
    with client.get_queue_receiver(q, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as receiver:
        got = receiver.receive_messages(max_message_count=5, max_wait_time=2)
    assert [str(m) for m in got] == ["first", "other"]
    assert emulator.metrics()[q]["duplicates_total"] == 1


def test_without_duplicate_detection_same_id_is_kept(client, queue_factory):
    q = queue_factory()
    with client.get_queue_sender(q) as sender:
        sender.send_messages([ServiceBusMessage("a", message_id="x"), ServiceBusMessage("b", message_id="x")])
    with client.get_queue_receiver(q, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as receiver:
        got = receiver.receive_messages(max_message_count=5, max_wait_time=2)
    assert [str(m) for m in got] == ["a", "b"]

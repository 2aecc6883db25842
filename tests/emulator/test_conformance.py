"""Wire conformance with Azure Service Bus beyond the SDK's happy paths (sync SDK).

Delivery annotations after the body, message state on peeked messages, a message id assigned by the
broker, the broker annotations on every received and peeked message, and AutoLockRenewer on several
messages of one receiver.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from azure.servicebus import (
    AutoLockRenewer,
    ServiceBusMessage,
    ServiceBusMessageState,
    ServiceBusReceiveMode,
)
from azure.servicebus.amqp import AmqpAnnotatedMessage, AmqpMessageHeader, AmqpMessageProperties
from proton import Message

from worker.emulator import codec


def test_delivery_annotations_after_the_body_are_accepted_and_not_stored(client, queue_factory):
    """The Python SDK writes delivery annotations after the body; they are per-hop, never stored."""
    q = queue_factory()
    sent = AmqpAnnotatedMessage(
        data_body=b"payload", delivery_annotations={"hop": "one"},
        application_properties={"k": "v"}, properties=AmqpMessageProperties(message_id="da-1"),
        header=AmqpMessageHeader(durable=True))
    with client.get_queue_sender(q) as sender:
        sender.send_messages(sent)
    with client.get_queue_receiver(q) as receiver:
        (got,) = receiver.receive_messages(max_wait_time=5)
        assert b"".join(got.body) == b"payload"
        assert got.message_id == "da-1" and got.application_properties == {b"k": b"v"}
        raw = got.raw_amqp_message
        assert not raw.delivery_annotations  # the sender's hop annotations did not come back
        assert raw.footer in (None, {})
        receiver.complete_message(got)


def test_codec_moves_trailing_delivery_annotations_out_of_the_bare_message():
    body = codec.encode_section(codec.DATA, b"payload")
    props = codec.encode_section(codec.PROPERTIES, ["id-1"])
    delivery = codec.encode_section(codec.DELIVERY_ANNOTATIONS, {codec.symbol("hop"): "one"})
    (msg,) = codec.parse_incoming(props + body + delivery)
    assert msg.bare == props + body
    with pytest.raises(codec.CodecError):  # two bodies of different kinds are still malformed
        codec.parse_incoming(body + codec.encode_section(codec.AMQP_VALUE, "x"))


def test_peeked_messages_carry_their_state(quick_client, queue_factory):
    q = queue_factory()
    with quick_client.get_queue_sender(q) as sender:
        sender.send_messages([ServiceBusMessage("active"), ServiceBusMessage("deferred")])
        (scheduled_seq,) = sender.schedule_messages(ServiceBusMessage("scheduled"),
                                                    datetime.now(UTC) + timedelta(minutes=5))
    with quick_client.get_queue_receiver(q) as receiver:
        msgs = receiver.receive_messages(max_message_count=2, max_wait_time=5)
        while len(msgs) < 2:
            msgs += receiver.receive_messages(max_message_count=2 - len(msgs), max_wait_time=5)
        by_body = {str(m): m for m in msgs}
        receiver.defer_message(by_body["deferred"])
        receiver.abandon_message(by_body["active"])
        peeked = receiver.peek_messages(max_message_count=10, sequence_number=1)
        states = {str(m): m.state for m in peeked}
        assert states == {"active": ServiceBusMessageState.ACTIVE, "deferred": ServiceBusMessageState.DEFERRED,
                          "scheduled": ServiceBusMessageState.SCHEDULED}
        (deferred,) = receiver.receive_deferred_messages([by_body["deferred"].sequence_number])
        assert deferred.state == ServiceBusMessageState.DEFERRED
        receiver.complete_message(deferred)
        assert {m.sequence_number for m in peeked} >= {scheduled_seq}


def _send_raw_without_id(emulator, queue: str) -> None:
    """A sender that gives no message id (the Python SDK always sets one, the JS SDK does not)."""
    from proton.utils import BlockingConnection

    from worker.emulator.auth import make_token

    url = emulator.connection_string().split(";")[0].removeprefix("Endpoint=sb://")
    conn = BlockingConnection(url, sasl_enabled=True, allowed_mechs="ANONYMOUS", timeout=10)
    try:
        policy = next(p for p in emulator.config.policies if p.name == "RootManageSharedAccessKey")
        token = make_token(f"sb://{url}/{queue}", policy.name, policy.key)
        cbs_reply = conn.create_receiver("$cbs", dynamic=False, name="cbs-reply")
        cbs = conn.create_sender("$cbs")
        cbs.send(Message(body=token, id="put-1", properties={"operation": "put-token",
                                                             "type": "servicebus.windows.net:sastoken",
                                                             "name": f"sb://{url}/{queue}"}))
        reply = cbs_reply.receive(timeout=10)
        assert reply.properties["status-code"] == 202, reply.properties
        sender = conn.create_sender(queue)
        sender.send(Message(body=b"no id"))
    finally:
        conn.close()


def test_a_message_id_is_assigned_when_the_sender_gives_none(client, queue_factory, emulator):
    q = queue_factory()
    _send_raw_without_id(emulator, q)
    with client.get_queue_receiver(q) as receiver:
        (got,) = receiver.receive_messages(max_wait_time=5)
        assert got.message_id
        uuid.UUID(got.message_id)  # Azure assigns a GUID
        peeked = receiver.peek_messages(sequence_number=got.sequence_number)
        receiver.complete_message(got)
    assert peeked[0].message_id == got.message_id  # stored, not made up per delivery


def test_broker_annotations_on_every_received_and_peeked_message(client, queue_factory):
    q = queue_factory()
    before = datetime.now(UTC) - timedelta(seconds=5)
    with client.get_queue_sender(q) as sender:
        sender.send_messages([ServiceBusMessage(f"m{i}") for i in range(3)])
    with client.get_queue_receiver(q) as receiver:
        peeked = receiver.peek_messages(max_message_count=3, sequence_number=1)
        got = []
        while len(got) < 3:
            got += receiver.receive_messages(max_message_count=3, max_wait_time=5)
        for m in peeked + got:
            ann = {k.decode() if isinstance(k, bytes) else k for k in m.raw_amqp_message.annotations}
            assert {"x-opt-sequence-number", "x-opt-enqueued-time"} <= ann, ann
            assert m.sequence_number >= 1 and m.enqueued_time_utc > before
        for m in got:
            ann = {k.decode() if isinstance(k, bytes) else k for k in m.raw_amqp_message.annotations}
            assert "x-opt-locked-until" in ann
            assert m.locked_until_utc > datetime.now(UTC)
            receiver.complete_message(m)


@pytest.mark.slow
def test_auto_lock_renewer_on_several_messages(client, queue_factory, emulator):
    """AutoLockRenewer renewing several messages of one receiver at once keeps all their locks: its
    threads' out-of-order delivery-ids no longer close the connection (see worker/emulator/frames.py;
    tests/emulator/test_frames.py provokes the disorder deterministically)."""
    q = queue_factory(lock_duration="PT4S")
    with client.get_queue_sender(q) as sender:
        sender.send_messages([ServiceBusMessage(f"m{i}") for i in range(6)])
    renewer = AutoLockRenewer(max_lock_renewal_duration=30, max_workers=6)
    try:
        with client.get_queue_receiver(q, receive_mode=ServiceBusReceiveMode.PEEK_LOCK) as receiver:
            got = []
            while len(got) < 6:
                got += receiver.receive_messages(max_message_count=6, max_wait_time=5)
            for m in got:
                renewer.register(receiver, m, max_lock_renewal_duration=30)
            time.sleep(10)  # 2.5 lock durations: every lock renewed many times, from 6 threads at once
            for m in got:
                receiver.complete_message(m)
    finally:
        renewer.close()
    m = emulator.metrics()[q]
    assert m["completed_total"] == 6 and m["active_messages"] == 0 and m["abandoned_total"] == 0

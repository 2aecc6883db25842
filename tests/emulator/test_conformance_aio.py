"""The wire-conformance checks of test_conformance.py through ``azure.servicebus.aio``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusMessageState
from azure.servicebus.aio import AutoLockRenewer, ServiceBusClient
from azure.servicebus.amqp import AmqpAnnotatedMessage, AmqpMessageProperties

from tests.emulator.test_conformance import _send_raw_without_id


@pytest.fixture
async def aclient(emulator):
    async with ServiceBusClient.from_connection_string(emulator.connection_string(), retry_total=0) as c:
        yield c


def _keys(message) -> set[str]:
    return {k.decode() if isinstance(k, bytes) else k for k in message.raw_amqp_message.annotations}


async def test_delivery_annotations_state_and_broker_annotations(aclient, queue_factory, emulator):
    q = queue_factory()
    async with aclient.get_queue_sender(q) as s:
        await s.send_messages(AmqpAnnotatedMessage(data_body=b"da", delivery_annotations={"hop": "one"},
                                                   properties=AmqpMessageProperties(message_id="da")))
        await s.send_messages(ServiceBusMessage("deferred"))
        await s.schedule_messages(ServiceBusMessage("scheduled"), datetime.now(UTC) + timedelta(minutes=5))
    await asyncio.to_thread(_send_raw_without_id, emulator, q)
    async with aclient.get_queue_receiver(q) as r:
        got = []
        while len(got) < 3:
            batch = await r.receive_messages(max_message_count=3, max_wait_time=5)
            assert batch
            got += batch
        by = {str(m): m for m in got}
        by["no id"] = next(m for m in got if str(m) not in ("da", "deferred"))  # an amqp-value body
        assert not by["da"].raw_amqp_message.delivery_annotations and by["da"].message_id == "da"
        assert by["no id"].message_id  # assigned by the broker
        for m in got:
            assert {"x-opt-sequence-number", "x-opt-enqueued-time", "x-opt-locked-until"} <= _keys(m)
        await r.defer_message(by["deferred"])
        peeked = await r.peek_messages(max_message_count=10, sequence_number=1)
        states = {str(m): m.state for m in peeked}
        assert states["deferred"] == ServiceBusMessageState.DEFERRED
        assert states["scheduled"] == ServiceBusMessageState.SCHEDULED
        for m in peeked:
            assert {"x-opt-sequence-number", "x-opt-enqueued-time"} <= _keys(m)
        await r.complete_message(by["da"])
        await r.complete_message(by["no id"])


@pytest.mark.slow
async def test_auto_lock_renewer_on_several_messages(aclient, queue_factory, emulator):
    q = queue_factory(lock_duration="PT4S")
    async with aclient.get_queue_sender(q) as s:
        await s.send_messages([ServiceBusMessage(f"m{i}") for i in range(6)])
    renewer = AutoLockRenewer(max_lock_renewal_duration=30)
    try:
        async with aclient.get_queue_receiver(q) as r:
            got = []
            while len(got) < 6:
                got += await r.receive_messages(max_message_count=6, max_wait_time=5)
            for m in got:
                renewer.register(r, m)
            await asyncio.sleep(10)
            for m in got:
                await r.complete_message(m)
    finally:
        await renewer.close()
    assert emulator.metrics()[q]["completed_total"] == 6

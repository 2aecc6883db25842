"""The same semantics through ``azure.servicebus.aio`` (the async SDK shares the wire, not the code)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import MessageLockLostError, ServiceBusAuthorizationError

from worker.emulator.auth import generate_key


@pytest.fixture
async def aclient(emulator):
    async with ServiceBusClient.from_connection_string(emulator.connection_string(), retry_total=0) as c:
        yield c


async def test_round_trip_and_every_settlement(aclient, queue_factory):
    q = queue_factory(max_delivery_count=5)
    async with aclient.get_queue_sender(q) as s:
        batch = await s.create_message_batch()
        for name in ("complete", "abandon", "dead-letter", "defer"):
            batch.add_message(ServiceBusMessage(name, subject=name, application_properties={"n": name}))
        await s.send_messages(batch)
    async with aclient.get_queue_receiver(q) as r:
        got = await r.receive_messages(max_message_count=4, max_wait_time=5)
        by = {str(m): m for m in got}
        assert set(by) == {"complete", "abandon", "dead-letter", "defer"}
        assert all(m.delivery_count == 0 for m in got)
        await r.complete_message(by["complete"])
        await r.abandon_message(by["abandon"])
        await r.dead_letter_message(by["dead-letter"], reason="why", error_description="because")
        await r.defer_message(by["defer"])
        (again,) = await r.receive_messages(max_wait_time=5)
        assert str(again) == "abandon" and again.delivery_count == 1
        await r.complete_message(again)
        (deferred,) = await r.receive_deferred_messages([by["defer"].sequence_number])
        assert deferred.subject == "defer"
        await r.complete_message(deferred)
    async with aclient.get_queue_receiver(q, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        (d,) = await dlq.receive_messages(max_wait_time=5)
        assert (str(d), d.dead_letter_reason, d.dead_letter_error_description) == ("dead-letter", "why", "because")
        await dlq.complete_message(d)


@pytest.mark.slow
async def test_renew_and_lock_lost(aclient, queue_factory):
    q = queue_factory(lock_duration="PT2S")
    async with aclient.get_queue_sender(q) as s:
        await s.send_messages(ServiceBusMessage("x"))
    async with aclient.get_queue_receiver(q) as r:
        (m,) = await r.receive_messages(max_wait_time=5)
        before = m.locked_until_utc
        await asyncio.sleep(1)
        assert await r.renew_message_lock(m) > before
        await asyncio.sleep(2.6)  # renewed lock expired too
        with pytest.raises(MessageLockLostError):
            await r.complete_message(m)
        (again,) = await r.receive_messages(max_wait_time=5)
        assert again.delivery_count == 1
        await r.complete_message(again)


async def test_schedule_peek_and_receive_and_delete(aclient, queue_factory):
    q = queue_factory()
    async with aclient.get_queue_sender(q) as s:
        await s.send_messages([ServiceBusMessage("now-1"), ServiceBusMessage("now-2")])
        (seq,) = await s.schedule_messages(ServiceBusMessage("later"),
                                           datetime.now(UTC) + timedelta(seconds=2))
        await s.cancel_scheduled_messages(seq)
        await s.schedule_messages(ServiceBusMessage("later-kept"), datetime.now(UTC) + timedelta(seconds=2))
    async with aclient.get_queue_receiver(q, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as r:
        peeked = await r.peek_messages(max_message_count=10)
        assert [str(m) for m in peeked] == ["now-1", "now-2", "later-kept"]
        first = await r.receive_messages(max_message_count=5, max_wait_time=1)
        assert [str(m) for m in first] == ["now-1", "now-2"]
        later = []
        for _ in range(6):
            later += await r.receive_messages(max_message_count=5, max_wait_time=1)
            if later:
                break
        assert [str(m) for m in later] == ["later-kept"]


async def test_listen_only_cannot_send(emulator, queue_factory):
    key = generate_key()
    q = queue_factory(policies=[{"name": "listener", "key": key, "rights": ["Listen"]}])
    async with ServiceBusClient.from_connection_string(emulator.connection_string("listener", q),
                                                       retry_total=0) as c:
        with pytest.raises(ServiceBusAuthorizationError):
            async with c.get_queue_sender(q) as s:
                await s.send_messages(ServiceBusMessage("no"))


@pytest.mark.slow
async def test_max_delivery_ttl_and_duplicates(aclient, queue_factory):
    q = queue_factory(max_delivery_count=1, dead_lettering_on_message_expiration=True,
                      requires_duplicate_detection=True)
    async with aclient.get_queue_sender(q) as s:
        await s.send_messages(ServiceBusMessage("poison", message_id="p"))
        await s.send_messages(ServiceBusMessage("poison again", message_id="p"))  # dropped duplicate
        await s.send_messages(ServiceBusMessage("stale", message_id="s", time_to_live=timedelta(seconds=1)))
    async with aclient.get_queue_receiver(q, prefetch_count=0) as r:
        (m,) = await r.receive_messages(max_message_count=1, max_wait_time=5)
        assert str(m) == "poison"
        await r.abandon_message(m)  # max_delivery_count=1: straight to the dead-letter queue
        await asyncio.sleep(1.5)  # "stale" expires meanwhile
        assert await r.receive_messages(max_wait_time=1) == []
    async with aclient.get_queue_receiver(q, sub_queue=ServiceBusSubQueue.DEAD_LETTER,
                                          receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as dlq:
        got = await dlq.receive_messages(max_message_count=5, max_wait_time=3)
    assert sorted((str(d), d.dead_letter_reason) for d in got) == [
        ("poison", "MaxDeliveryCountExceeded"), ("stale", "TTLExpiredException")]


async def test_fifo_sequence_numbers_and_competing_receivers(aclient, queue_factory):
    q = queue_factory()
    async with aclient.get_queue_sender(q) as s:
        for i in range(8):
            await s.send_messages(ServiceBusMessage(f"m{i}", correlation_id=f"c{i}", content_type="text/plain"))
    async with aclient.get_queue_receiver(q, prefetch_count=0) as r1, \
            aclient.get_queue_receiver(q, prefetch_count=0) as r2:
        a, b = await asyncio.gather(r1.receive_messages(max_message_count=4, max_wait_time=3),
                                    r2.receive_messages(max_message_count=4, max_wait_time=3))
        for r, batch in ((r1, a), (r2, b)):
            for m in batch:
                await r.complete_message(m)
    got = sorted(a + b, key=lambda m: m.sequence_number)
    assert [str(m) for m in got] == [f"m{i}" for i in range(len(got))]
    assert len({m.sequence_number for m in got}) == len(got) == len({str(m) for m in got})
    assert all(m.correlation_id == f"c{str(m)[1:]}" and m.content_type == "text/plain" for m in got)

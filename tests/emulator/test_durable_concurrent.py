"""The emulator acknowledges a send only once the message is durable, in the DEFAULT commit mode (no
POOL_EMULATOR_GROUP_COMMIT set): several concurrent senders stream messages, the emulator is
SIGKILLed right after a batch of the SDK's sends returned, restarted on the same store, and every
acknowledged message must be there (at most one unacknowledged extra per sender: stored while its
acknowledgement was in flight)."""

from __future__ import annotations

import threading
import time

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusReceiveMode

pytestmark = pytest.mark.slow

SENDERS = 4


def _drain(conn: str, queue: str, expect: int, timeout: float = 30) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    with ServiceBusClient.from_connection_string(conn) as c, c.get_queue_receiver(
            queue, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE, prefetch_count=200) as r:
        while len(got) < expect and time.monotonic() < deadline:
            got += [m.message_id for m in r.receive_messages(max_message_count=200, max_wait_time=1)]
        got += [m.message_id for m in r.receive_messages(max_message_count=200, max_wait_time=0.5)]
    return got


def test_kill9_under_concurrent_senders_loses_no_acknowledged_message(emulator_factory, monkeypatch):
    monkeypatch.delenv("POOL_EMULATOR_GROUP_COMMIT", raising=False)  # the default mode, as shipped
    emu = emulator_factory(queues=[{"name": "many"}])
    acked: list[list[str]] = [[] for _ in range(SENDERS)]
    stop = threading.Event()
    cut = [False] * SENDERS

    def produce(n: int) -> None:
        with ServiceBusClient.from_connection_string(emu.connection_string(), retry_total=0) as c:
            try:
                with c.get_queue_sender("many") as s:
                    i = 0
                    while not stop.is_set():
                        mid = f"s{n}-{i}"
                        s.send_messages(ServiceBusMessage(mid, message_id=mid))
                        acked[n].append(mid)  # the SDK returned: the broker acknowledged it
                        i += 1
            except Exception:  # noqa: BLE001 - the broker died under us: expected
                cut[n] = True

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(SENDERS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while sum(map(len, acked)) < 400 and time.monotonic() < deadline:
        time.sleep(0.01)
    emu.kill()  # SIGKILL while all senders are mid-stream
    stop.set()
    for t in threads:
        t.join(30)
    total = sum(map(len, acked))
    assert total >= 400 and all(cut), "every stream should have been cut by the kill"
    emu.start()
    got = set(_drain(emu.connection_string(), "many", total))
    missing = [mid for sent in acked for mid in sent if mid not in got]
    assert not missing, f"{len(missing)} of {total} acknowledged messages lost, e.g. {missing[:5]}"
    assert len(got) - total <= SENDERS  # at most the one in flight per sender

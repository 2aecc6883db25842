"""One broker per store: a second emulator on the same data dir refuses to start, saying why; the
lock dies with its holder (even by SIGKILL), so a restart after a crash is never blocked."""

from __future__ import annotations

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage

from worker.emulator.launcher import EmulatorError, EmulatorProcess
from worker.emulator.storelock import StoreLock, StoreLocked

pytestmark = pytest.mark.slow


def test_a_second_emulator_on_the_same_store_refuses_to_start(emulator_factory, tmp_path):
    first = emulator_factory(queues=[{"name": "q"}])
    second = EmulatorProcess(first.config_path, first.data_dir, exit_with_parent=True)
    with pytest.raises(EmulatorError) as refused:
        second.start(timeout=20)
    assert "already using the store" in str(refused.value) and str(first.proc.pid) in str(refused.value)
    assert not second.running
    # The first one is untouched and still serves.
    with ServiceBusClient.from_connection_string(first.connection_string()) as c, c.get_queue_sender("q") as s:
        s.send_messages(ServiceBusMessage("still here"))
    assert first.metrics()["q"]["active_messages"] == 1
    # SIGKILL releases the lock: the next start on the same store works and keeps the message.
    first.kill()
    first.start()
    assert first.metrics()["q"]["active_messages"] == 1


def test_store_lock_is_exclusive_and_released(tmp_path):
    lock = StoreLock(tmp_path).acquire()
    with pytest.raises(StoreLocked, match="already using the store"):
        StoreLock(tmp_path).acquire()  # a second open file description: flock refuses it
    lock.release()
    StoreLock(tmp_path).acquire().release()

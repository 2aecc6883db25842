"""benchmarks/emulator.py against a real emulator (and a real rabbitmq-server where installed): both
receiver modes move every message and settle it, and the whole benchmark prints its comparison."""

from __future__ import annotations

import shutil

import pytest

from benchmarks import emulator as bench

MESSAGES = 200


@pytest.mark.slow
@pytest.mark.parametrize("receiver", [bench._sb_receiver, bench._sb_batch_receiver], ids=["stream", "batch"])
def test_each_receiver_mode_completes_every_message_once(emulator_factory, receiver):
    emu = emulator_factory(queues=[{"name": bench.QUEUE}])
    assert emu.proc is not None
    conn = emu.connection_string()
    pid = emu.proc.pid

    result = bench.throughput(bench._sb_sender, receiver, conn, MESSAGES, lambda: [pid])

    assert result.msg_per_s > 0 and result.broker_cpu_ms > 0 and result.client_cpu_ms > 0
    from azure.servicebus import ServiceBusClient

    # counted completions are real ones: nothing is left in the queue, not even locked
    with ServiceBusClient.from_connection_string(conn) as client, \
            client.get_queue_receiver(bench.QUEUE) as receiver_:
        assert receiver_.peek_messages(max_message_count=10) == []


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("rabbitmq-server") is None, reason="rabbitmq-server is not installed")
def test_the_benchmark_compares_with_rabbitmq_in_one_run(capsys):
    bench.main([f"--messages={MESSAGES}", "--latency-runs=10"])

    out = capsys.readouterr().out
    assert "azure-servicebus SDK" in out and "stream" in out  # the table's rows (rich may wrap a name)
    assert "RabbitMQ 3" in out
    assert "x RabbitMQ (goal >= 0.7)" in out  # the ratio: both throughput runs finished

"""The agent's fast path for short tasks: statuses queued and sent in the background (one batch for a
short task, the final one waited for), nothing uploaded for an empty output, and a status that cannot
be sent still hands the task back. Real emulator and Azurite."""

from __future__ import annotations

import time

import pytest
from azure.servicebus import ServiceBusSubQueue

from tests.agent.harness import Pool, least_rights_queues, states
from worker.emulator.launcher import generate_key
from worker.protocol import TaskState

pytestmark = pytest.mark.slow
S = TaskState


def test_short_task_statuses_in_order_and_empty_output_not_uploaded(pool):
    tasks = [pool.task(["true"]) for _ in range(3)]
    pool.start_agent()
    for task in tasks:
        pool.send(task)
    for task in tasks:
        final = pool.collector.wait_terminal(task.task_id)
        assert final.state is S.FINISHED and final.exit_code == 0, final
        assert final.output_bytes == 0  # output/ was empty: no archive
        statuses = pool.collector.of(task.task_id)
        assert states(statuses) == [S.RECEIVED, S.PREPARING, S.RUNNING, S.FINISHED]
        seqs = [s.seq for s in statuses]
        assert seqs == sorted(set(seqs)), seqs
        assert statuses[0].host is not None and all(s.host is None for s in statuses[1:])
        assert pool.storage.read_output(pool.competition, task.task_id, 1) is None
        assert pool.log(task) == b"" and pool.log(task, "stderr") == b""  # nothing printed: no log blob, read as empty
    assert pool.task_messages() == []  # all completed


def test_output_is_uploaded_when_there_is_one(pool):
    task = pool.python("import pathlib; pathlib.Path('../output/r.txt').write_text('x')")
    pool.start_agent()
    pool.send(task)
    final = pool.collector.wait_terminal(task.task_id)
    assert final.state is S.FINISHED and final.output_bytes and final.output_bytes > 0
    assert S.UPLOADING in states(pool.collector.of(task.task_id))
    assert len(pool.storage.read_output(pool.competition, task.task_id, 1) or b"") == final.output_bytes


def test_status_that_cannot_be_sent_hands_the_task_back(emulator, queue_factory, storage, competition, tmp_path):
    tasks, _ = least_rights_queues(queue_factory, lock_duration="PT10S", max_delivery_count=2)
    # The agent's response-queue key has Listen only: every status send is refused.
    responses = queue_factory(prefix="resp", policies=[{"name": "worker", "key": generate_key(), "rights": ["Listen"]}])
    pool = Pool(emulator, storage, competition, tasks, responses, tmp_path)
    try:
        marker = tmp_path / "ran-to-the-end"
        task = pool.python(f"import pathlib, time; time.sleep(20); pathlib.Path({str(marker)!r}).write_text('x')")
        pool.start_agent()
        pool.send(task)
        deadline = time.monotonic() + 40
        while not (dead := pool.task_messages(wait=1, sub_queue=ServiceBusSubQueue.DEAD_LETTER)):
            assert time.monotonic() < deadline, "never handed back until dead-lettered"
        assert dead[0].message_id == task.message_id  # abandoned on each delivery, then dead-lettered
        assert not marker.exists()  # the program was stopped, not left to finish
        assert pool.collector.of(task.task_id) == []
    finally:
        pool.close()

"""The agent's whole loop against the real emulator and Azurite: one agent per test, in-process."""

from __future__ import annotations

import io
import tarfile
import time

import pytest
from azure.servicebus import ServiceBusSubQueue

from tests.agent.harness import Pool, least_rights_queues, states
from worker.protocol import KillReason, TaskState

pytestmark = pytest.mark.slow
S = TaskState


def assert_ordered(statuses):
    seqs = [s.seq for s in statuses]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs


def test_success_statuses_logs_while_running_inputs_and_output(pool, tmp_path):
    program = tmp_path / "program"
    program.mkdir()
    (program / "main.py").write_text(
        "import pathlib, time\n"
        "print('tick', flush=True)\n"
        "time.sleep(2.5)\n"
        "data = pathlib.Path('../inputs/data.txt').read_text()\n"
        "pathlib.Path('../output/result.txt').write_text(data.upper())\n"
        "print('done')\n"
    )
    prog = pool.storage.bundle_for_task(pool.storage.upload_bundle(pool.competition, program), "program", 60)
    data = pool.storage.bundle_for_task(pool.storage.upload_bundle(pool.competition, b"some data", suffix=".txt"),
                                        "data.txt", 60)
    task = pool.task(["python3", "../program/main.py"], program=prog, inputs=[data])
    pool.start_agent()
    pool.send(task)

    pool.collector.wait_for(task.task_id, lambda s: s.state is S.RUNNING)
    deadline = time.monotonic() + 5
    while b"tick" not in (seen := pool.log(task)):
        assert time.monotonic() < deadline, "stdout not readable in the blob while running"
        time.sleep(0.1)
    assert b"done" not in seen  # read while the program was still sleeping: streamed, not uploaded at exit

    final = pool.collector.wait_terminal(task.task_id)
    assert final.state is S.FINISHED and final.exit_code == 0, final
    statuses = pool.collector.of(task.task_id)
    assert states(statuses) == [S.RECEIVED, S.PREPARING, S.RUNNING, S.UPLOADING, S.FINISHED]
    assert any(s.heartbeat and s.state is S.RUNNING for s in statuses), "no heartbeat in 2.5 s at 0.5 s"
    assert_ordered(statuses)
    first = statuses[0]
    assert first.host is not None and first.host.driver == "process" and "wall_time" in first.host.enforced_limits
    assert all(s.host is None for s in statuses[1:])
    assert pool.log(task) == b"tick\ndone\n"
    archive = pool.storage.read_output(pool.competition, task.task_id, 1)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert tar.extractfile("result.txt").read() == b"SOME DATA"
    assert final.output_bytes == len(archive)
    assert pool.task_messages() == []  # completed, not redelivered


def test_failure_is_final_and_not_retried(pool):
    task = pool.python("import sys; print('bad', file=sys.stderr); sys.exit(3)")
    pool.start_agent()
    pool.send(task)
    final = pool.collector.wait_terminal(task.task_id)
    assert final.state is S.FAILED and final.exit_code == 3 and "code 3" in final.reason
    assert pool.log(task, "stderr") == b"bad\n"
    time.sleep(0.5)
    assert pool.task_messages() == []
    assert len([s for s in pool.collector.of(task.task_id) if s.state is S.RECEIVED]) == 1


def test_timeout(pool):
    task = pool.python("import time; print('start', flush=True); time.sleep(60)", time_limit_s=1)
    pool.start_agent()
    pool.send(task)
    running = pool.collector.wait_for(task.task_id, lambda s: s.state is S.RUNNING)
    final = pool.collector.wait_terminal(task.task_id, timeout=15)
    assert final.state is S.TIMED_OUT and final.kill_reason is KillReason.TIME
    assert (final.timestamp - running.timestamp).total_seconds() < 4
    assert pool.log(task) == b"start\n"


def test_cancellation_stops_within_5s(pool):
    task = pool.python("import time; time.sleep(120)")
    pool.start_agent()
    pool.send(task)
    pool.collector.wait_for(task.task_id, lambda s: s.state is S.RUNNING)
    asked = time.monotonic()
    pool.storage.cancel(pool.competition, task.task_id, 1, reason="user asked")
    final = pool.collector.wait_terminal(task.task_id, timeout=10)
    assert time.monotonic() - asked < 5
    assert final.state is S.CANCELLED and final.reason == "user asked"
    assert final.kill_reason is KillReason.CANCELLED
    assert pool.task_messages() == []


def test_cancelled_before_start_never_runs(pool):
    task = pool.python("print('should not run')")
    pool.storage.cancel(pool.competition, task.task_id, 1)
    pool.start_agent()
    pool.send(task)
    final = pool.collector.wait_terminal(task.task_id)
    assert final.state is S.CANCELLED
    assert states(pool.collector.of(task.task_id)) == [S.RECEIVED, S.PREPARING, S.CANCELLED]
    assert pool.log(task) == b""


def test_invalid_tasks_dead_lettered_and_worker_continues(pool):
    pool.start_agent()
    pool.send(b"this is not json")
    pool.send(b'{"schema_version": 99, "task_id": "x"}')
    pool.send(b'{"schema_version": 1, "task_id": "x"}')
    good = pool.python("print('ok')")
    pool.send(good)
    assert pool.collector.wait_terminal(good.task_id).state is S.FINISHED
    dead = pool.task_messages(wait=2, sub_queue=ServiceBusSubQueue.DEAD_LETTER)
    reasons = sorted((m.dead_letter_reason, m.dead_letter_error_description) for m in dead)
    assert [r for r, _ in reasons] == ["InvalidTask", "MalformedMessage", "UnsupportedSchemaVersion"]
    assert "99" in dict(reasons)["UnsupportedSchemaVersion"]
    assert "competition" in dict(reasons)["InvalidTask"]  # names the missing field


def test_unusable_bundle_fails_the_task(pool, tmp_path):
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    stored = pool.storage.upload_bundle(pool.competition, bad.read_bytes(), suffix=".tar")
    bundle = pool.storage.bundle_for_task(stored, "program", 60).model_copy(update={"kind": "archive"})
    task = pool.python("print('never')", program=bundle)
    pool.start_agent()
    pool.send(task)
    final = pool.collector.wait_terminal(task.task_id)
    assert final.state is S.FAILED and "traversal" in final.reason
    assert b"traversal" in pool.log(task, "stderr")


def test_storage_unreachable_is_reported_as_an_infrastructure_failure(pool, fast_storage_retries):
    task = pool.python("print('x')")
    dead_port = "127.0.0.1:1"
    host = task.stdout_url.split("/")[2]
    # The whole account (one storage account holds logs and control): the check before the start
    # finds it, so the program never runs.
    task = task.model_copy(update={key: getattr(task, key).replace(host, dead_port)
                                   for key in ("stdout_url", "stderr_url", "control_url")})
    pool.start_agent()
    pool.send(task)
    final = pool.collector.wait_terminal(task.task_id, timeout=30)
    # Not the program's fault, and the status channel works: a final status says so (the site retries
    # it after a back-off), the message is settled rather than redelivered at once.
    assert final.state is S.FAILED and final.failure == "storage_error" and final.exit_code is None
    assert "cannot read the control blob" in final.reason
    assert "sig=" not in final.reason and "?" not in final.reason  # the blob is named, its SAS is not
    statuses = pool.collector.of(task.task_id)
    assert states(statuses) == [S.RECEIVED, S.PREPARING, S.FAILED]  # one delivery
    assert pool.task_messages(wait=1) == []
    assert pool.task_messages(wait=1, sub_queue=ServiceBusSubQueue.DEAD_LETTER) == []


def test_lock_renewed_beyond_lock_duration(emulator, queue_factory, storage, competition, tmp_path):
    tasks, responses = least_rights_queues(queue_factory, lock_duration="PT3S", max_delivery_count=5)
    pool = Pool(emulator, storage, competition, tasks, responses, tmp_path)
    try:
        task = pool.python("import time; time.sleep(7)")  # more than twice the lock duration
        pool.start_agent()
        pool.send(task)
        final = pool.collector.wait_terminal(task.task_id, timeout=30)
        assert final.state is S.FINISHED
        time.sleep(3)  # a lost lock would show up as a redelivery by now
        assert [s.state for s in pool.collector.of(task.task_id)].count(S.RECEIVED) == 1
        assert pool.task_messages() == []
    finally:
        pool.close()


def test_stop_event_hands_back_a_task_past_the_grace(pool):
    task = pool.python("import time; time.sleep(60)")
    stop = pool.start_agent(shutdown_grace_s=0.5)
    pool.send(task)
    pool.collector.wait_for(task.task_id, lambda s: s.state is S.RUNNING)
    stop.set()
    thread = pool._agents[-1][0]
    thread.join(20)
    assert not thread.is_alive()
    assert not any(s.state.terminal for s in pool.collector.of(task.task_id))
    back = pool.task_messages(wait=3)
    assert [m.message_id for m in back] == [task.message_id]


def test_log_cap_marker_and_flood_kill(pool):
    task = pool.python("import sys\nwhile True: sys.stdout.write('x' * 4096)")
    pool.start_agent(execution={"limits": {"log_bytes": 10_000}})
    pool.send(task)
    final = pool.collector.wait_terminal(task.task_id, timeout=20)
    assert final.state is S.FAILED and final.kill_reason is KillReason.OUTPUT
    log = pool.log(task)
    assert log.startswith(b"x" * 10_000) and log[10_000:].startswith(b"\n[pool-agent] stdout truncated")
    assert len(log) < 10_200

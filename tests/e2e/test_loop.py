"""The whole loop with real agents: site -> task queue -> agent -> blobs + response queue -> watcher
-> database. Each test asserts what the database, the blobs and the queues say afterwards."""

from __future__ import annotations

import io
import os
import signal
import tarfile
import time

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage
from sqlalchemy import select
from typer.testing import CliRunner

from worker import protocol
from worker.cli import app
from worker.local.client import get_task, wait_for
from worker.local.stack import LocalStack
from worker.site.db import transaction
from worker.site.models import Task, TaskEvent, utcnow
from worker.site.producer import Submission

pytestmark = pytest.mark.slow
POOL = "default"


def submit(stack: LocalStack, command: list[str], **kw) -> str:
    return stack.site.producer.submit(Submission(pool=POOL, command=command, **kw)).id


def history(stack: LocalStack, task_id: str) -> list[tuple[int, str, str, str | None]]:
    with stack.site.sessions() as s:
        rows = s.scalars(select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id))
        return [(e.attempt, e.state, e.source, e.worker_id) for e in rows]


def states(stack: LocalStack, task_id: str) -> list[str]:
    return [h[1] for h in history(stack, task_id)]


def wait_state(stack: LocalStack, task_id: str, state: str, timeout: float = 20) -> Task:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = get_task(stack.site, task_id)
        if task.state == state:
            return task
        time.sleep(0.05)
    raise AssertionError(f"{task_id} is {get_task(stack.site, task_id).state}, not {state}, after {timeout} s")


def test_pool_status_counts_the_idle_agents_as_live_workers(stack):
    def workers_column() -> str:
        result = CliRunner().invoke(app, ["status", "--data-dir", str(stack.data_dir)], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        row = next(line for line in result.output.splitlines() if line.startswith(f"│ {POOL} "))
        return row.split("│")[4].strip()  # pool, depth, DLQ, workers

    deadline = time.monotonic() + 30
    while (seen := workers_column()) != "2" and time.monotonic() < deadline:  # no task yet: only presence
        time.sleep(0.2)
    assert seen == "2"


def test_cli_submit_bundle_with_input_output_and_logs(stack, tmp_path):
    program = tmp_path / "prog"
    program.mkdir()
    (program / "main.py").write_text(
        "import pathlib, sys\n"
        "words = pathlib.Path('../inputs/words.txt').read_text().split()\n"
        "print('counted', len(words), 'words')\n"
        "print('a warning', file=sys.stderr)\n"
        "pathlib.Path('../output/count.txt').write_text(str(len(words)))\n")
    (tmp_path / "words.txt").write_text("one two three four")
    result = CliRunner().invoke(app, ["submit", "--data-dir", str(stack.data_dir), "--bundle", str(program),
                                      "--input", f"words.txt={tmp_path / 'words.txt'}", "--wait", "--timeout", "60"])
    assert result.exit_code == 0, result.output
    task_id = result.output.split()[1]
    assert f"{task_id}: finished, exit code 0" in result.output and "pool logs" in result.output
    task = get_task(stack.site, task_id)
    assert (task.exit_code, task.attempt) == (0, 1)
    assert stack.site.storage.read_log(POOL, task_id, 1, "stdout") == b"counted 4 words\n"
    assert stack.site.storage.read_log(POOL, task_id, 1, "stderr") == b"a warning\n"
    with tarfile.open(fileobj=io.BytesIO(stack.site.storage.read_output(POOL, task_id, 1))) as tar:
        assert tar.extractfile("count.txt").read() == b"4"
    assert states(stack, task_id) == ["queued", "received", "preparing", "running", "uploading", "finished"]
    logs = CliRunner().invoke(app, ["logs", "--data-dir", str(stack.data_dir), task_id])
    assert logs.exit_code == 0 and "counted 4 words" in logs.stdout and "a warning" in logs.stderr


def test_user_program_failure_is_final_and_not_retried(stack):
    task_id = submit(stack, ["sh", "-c", "echo about to fail; exit 3"])
    task = wait_for(stack.site, task_id, timeout=30)
    assert (task.state, task.exit_code, task.attempt) == ("failed", 3, 1)
    assert "3" in task.reason
    assert states(stack, task_id).count("received") == 1
    assert stack.site.storage.read_log(POOL, task_id, 1, "stdout") == b"about to fail\n"


def test_time_limit_kills_the_program(stack):
    started = time.monotonic()
    task_id = submit(stack, ["sh", "-c", "echo start; sleep 60"], time_limit_s=2)
    task = wait_for(stack.site, task_id, timeout=30)
    assert (task.state, task.kill_reason) == ("timed_out", "time")
    assert time.monotonic() - started < 15
    assert stack.site.storage.read_log(POOL, task_id, 1, "stdout") == b"start\n"


def test_cancelling_a_running_task_stops_it_within_5_s(stack):
    task_id = submit(stack, ["sh", "-c", "echo running; sleep 60"])
    wait_state(stack, task_id, "running")
    asked = time.monotonic()
    result = CliRunner().invoke(app, ["cancel", "--data-dir", str(stack.data_dir), task_id])
    assert result.exit_code == 0, result.output
    task = wait_for(stack.site, task_id, timeout=10)
    assert task.state == "cancelled" and task.kill_reason == "cancelled"
    assert time.monotonic() - asked < 5


def test_logs_are_readable_while_the_program_runs(stack):
    task_id = submit(stack, ["python3", "-u", "-c",
                             "import time\nprint('first line', flush=True)\ntime.sleep(8)\nprint('last')"])
    wait_state(stack, task_id, "running")
    deadline = time.monotonic() + 3
    while stack.site.storage.read_log(POOL, task_id, 1, "stdout") != b"first line\n":
        assert time.monotonic() < deadline, "the first line did not reach the blob while the task ran"
        time.sleep(0.1)
    assert get_task(stack.site, task_id).state == "running"
    stack.site.producer.cancel(task_id)
    wait_for(stack.site, task_id, timeout=10)


@pytest.mark.parametrize("body", [b"{definitely not json", b'{"schema_version": 99, "task_id": "x"}',
                                  b'{"schema_version": 1, "task_id": "x"}'])
def test_malformed_task_is_dead_lettered_and_failed_with_the_reason(stack, body):
    # A task row whose message on the queue is unusable (a bug, or a newer site speaking schema 99).
    task_id = f"bad-{os.urandom(4).hex()}"
    with transaction(stack.site.sessions) as s:
        s.add(Task(id=task_id, pool=POOL, task_type="evaluate_submission", command=["true"], time_limit_s=60,
                   sent_at=utcnow()))
    pool = stack.profile.pools[POOL]
    with ServiceBusClient.from_connection_string(stack.profile.emulator.root_connection_string) as client, \
            client.get_queue_sender(pool.task_queue) as sender:
        sender.send_messages(ServiceBusMessage(body, message_id=f"{task_id}:1"))
    task = wait_for(stack.site, task_id, timeout=20)
    assert task.state == "failed"
    assert task.reason.startswith("dead-lettered: ")
    assert any(word in task.reason for word in ("MalformedMessage", "UnsupportedSchemaVersion", "InvalidTask"))
    # The agents survived it.
    assert all(a.alive for a in stack.agents[POOL])
    assert wait_for(stack.site, submit(stack, ["true"]), timeout=20).state == "finished"


def test_duplicate_status_messages_change_nothing(stack):
    task_id = submit(stack, ["echo", "hi"])
    task = wait_for(stack.site, task_id, timeout=20)
    before = history(stack, task_id)
    applied = stack.site.watcher.stats.received
    with stack.site.sessions() as s:
        events = list(s.scalars(select(TaskEvent).where(TaskEvent.task_id == task_id, TaskEvent.source == "worker")))
    # Replay every status the worker sent (same seq, state, timestamp), twice, with fresh message ids
    # so that Service Bus duplicate detection does not hide them from the watcher.
    replay = [protocol.Status(task_id=task_id, attempt=e.attempt, seq=e.seq, state=e.state, worker_id=e.worker_id,
                              timestamp=e.reported_at, exit_code=0 if e.state == "finished" else None)
              for e in events] * 2
    replay.append(protocol.Status(task_id=task_id, attempt=1, seq=events[-1].seq + 1, state="running",
                                  worker_id="late-worker"))  # after a terminal state
    pool = stack.profile.pools[POOL]
    with ServiceBusClient.from_connection_string(pool.worker_send_connection_string) as client, \
            client.get_queue_sender(pool.response_queue) as sender:
        for i, status in enumerate(replay):
            sender.send_messages(ServiceBusMessage(protocol.encode(status), message_id=f"replay-{task_id}-{i}"))
    deadline = time.monotonic() + 15
    while stack.site.watcher.stats.received < applied + len(replay):
        assert time.monotonic() < deadline, "the watcher did not consume the replayed statuses"
        time.sleep(0.1)
    assert history(stack, task_id) == before
    after = get_task(stack.site, task_id)
    assert (after.state, after.exit_code, after.worker_id) == ("finished", 0, task.worker_id)


def test_agent_killed_mid_task_the_task_is_redelivered_and_finished_once(stack):
    task_id = submit(stack, ["sh", "-c", "echo attempt; sleep 4; echo done"], time_limit_s=60)
    task = wait_state(stack, task_id, "running")
    victim = next(a for a in stack.agents[POOL] if a.worker_id == task.worker_id)
    os.kill(victim.process.pid, signal.SIGKILL)  # the agent only: no chance to hand the task back
    final = wait_for(stack.site, task_id, timeout=60)
    assert (final.state, final.exit_code, final.attempt) == ("finished", 0, 1)
    trail = history(stack, task_id)
    assert [h[1] for h in trail].count("finished") == 1
    assert [h[1] for h in trail].count("received") == 2  # the same attempt, delivered twice
    assert stack.site.storage.read_log(POOL, task_id, 1, "stdout").endswith(b"done\n")
    # The supervisor restarted the killed agent; the pool keeps working.
    deadline = time.monotonic() + 20
    while not all(a.alive for a in stack.agents[POOL]):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert wait_for(stack.site, submit(stack, ["true"]), timeout=30).state == "finished"


def test_logs_follow_tails_until_the_task_ends(stack):
    from worker.local.client import stream_logs

    task_id = submit(stack, ["sh", "-c", "for i in 1 2 3 4; do echo line $i; sleep 0.5; done; echo oops >&2"])
    wait_state(stack, task_id, "running")
    seen: list[tuple[str, bytes, float]] = []
    final = stream_logs(stack.site, task_id, follow=True, poll_s=0.1,
                        write=lambda stream, data: seen.append((stream, data, time.monotonic())))
    assert final.state == "finished"
    stdout = b"".join(d for s, d, _ in seen if s == "stdout")
    assert stdout == b"line 1\nline 2\nline 3\nline 4\n"
    assert b"".join(d for s, d, _ in seen if s == "stderr") == b"oops\n"
    assert len([1 for s, _, _ in seen if s == "stdout"]) >= 2  # arrived in pieces, while it ran

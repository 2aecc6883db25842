"""Producer, watcher and monitor against the real emulator, Azurite and a database — with the test
playing the worker through the azure-servicebus SDK (the real agent is exercised in tests/e2e)."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusSubQueue

from tests.fixtures import waiting
from worker import protocol
from worker.agent import blobs  # the worker's side of the SAS URLs
from worker.config import competition_queues
from worker.emulator.launcher import generate_key
from worker.site.db import transaction
from worker.site.models import Task, TaskEvent, Worker, utcnow
from worker.site.pools import UnknownPool, register_pool
from worker.site.producer import Submission
from worker.site.queries import pool_summaries
from worker.site.service import Site, SiteSettings

pytestmark = pytest.mark.slow


class Env:
    def __init__(self, emulator, site: Site, competition: str, keys: dict[str, str]) -> None:
        self.emulator, self.site, self.competition = emulator, site, competition
        self.task_queue, self.response_queue = competition_queues(competition)
        self.worker = ServiceBusClient.from_connection_string(
            emulator.connection_string("worker", self.task_queue))
        self.reporter = ServiceBusClient.from_connection_string(
            emulator.connection_string("worker", self.response_queue))
        self.root = ServiceBusClient.from_connection_string(emulator.connection_string())

    def take_task(self, timeout: float = 10) -> tuple[protocol.Task, object, object]:
        receiver = self.worker.get_queue_receiver(self.task_queue, prefetch_count=0)
        messages = receiver.receive_messages(max_message_count=1, max_wait_time=timeout)
        assert messages, "no task arrived"
        return protocol.decode_task(b"".join(messages[0].body)), messages[0], receiver

    def report(self, *statuses: protocol.Status, message_id_suffix: str = "") -> None:
        with self.reporter.get_queue_sender(self.response_queue) as sender:
            for status in statuses:
                sender.send_messages(ServiceBusMessage(
                    protocol.encode(status), message_id=f"{status.task_id}:{status.seq}{message_id_suffix}"))

    def close(self) -> None:
        for client in (self.worker, self.reporter, self.root):
            client.close()


@pytest.fixture
def env(emulator, azurite, db_url):  # db_url: SQLite and PostgreSQL (tests/site/conftest.py)
    competition = f"c{uuid.uuid4().hex[:10]}"
    task_queue, response_queue = competition_queues(competition)
    keys = {k: generate_key() for k in ("wl", "st", "ws", "sr")}
    emulator.create_queue(task_queue, lock_duration="PT5S", max_delivery_count=3, requires_duplicate_detection=True,
                          policies=[{"name": "worker", "key": keys["wl"], "rights": ["Listen"]},
                                    {"name": "site", "key": keys["st"], "rights": ["Send", "Listen"]}])
    emulator.create_queue(response_queue, policies=[{"name": "worker", "key": keys["ws"], "rights": ["Send"]},
                                                    {"name": "site", "key": keys["sr"], "rights": ["Listen"]}])
    settings = SiteSettings(database_url=db_url,
                            storage_connection_string=azurite.connection_string, lost_after_s=30)
    site = Site(settings)
    with transaction(site.sessions) as s:
        register_pool(s, competition,
                      task_queue_connection_string=emulator.connection_string("site", task_queue),
                      response_queue_connection_string=emulator.connection_string("site", response_queue))
    e = Env(emulator, site, competition, keys)
    yield e
    e.close()
    site.close()


def row(env: Env, task_id: str) -> Task:
    with env.site.sessions() as s:
        return s.get(Task, task_id)


def events(env: Env, task_id: str) -> list[tuple[int, str, str]]:
    with env.site.sessions() as s:
        return [(e.attempt, e.state, e.source) for e in
                s.query(TaskEvent).filter_by(task_id=task_id).order_by(TaskEvent.id)]


wait_until = partial(waiting.wait_until, timeout=10.0)


def test_submit_sends_a_small_task_with_least_rights_urls(env, tmp_path):
    (tmp_path / "prog").mkdir()
    (tmp_path / "prog" / "main.py").write_text("print(1)\n")
    submitted = env.site.producer.submit(Submission(pool=env.competition, command=["python3", "../program/main.py"],
                                                    program=tmp_path / "prog", time_limit_s=30))
    task, message, receiver = env.take_task()
    assert message.message_id == f"{submitted.id}:1" == task.message_id
    assert len(b"".join(message.body)) < 8 * 1024
    assert (task.competition, task.reply_to, task.time_limit_s) == (env.competition, env.response_queue, 30)
    assert task.program is not None and task.program.sha256
    log = blobs.AppendBlob(task.stdout_url)
    log.create()
    log.append(b"line\n")
    assert env.site.storage.read_log(env.competition, task.task_id, 1, "stdout") == b"line\n"
    assert blobs.read_control(task.control_url) is None
    assert blobs.client(task.program.url).download_blob().readall()
    receiver.complete_message(message)
    receiver.close()
    assert row(env, submitted.id).sent_at is not None


def test_unknown_pool_is_a_clear_error(env):
    with pytest.raises(UnknownPool, match="pool competition create"):
        env.site.producer.submit(Submission(pool="nope-nope", command=["true"]))


def test_watcher_applies_statuses_once_and_dead_letters_garbage(env):
    env.site.start_background()
    submitted = env.site.producer.submit(Submission(pool=env.competition, command=["true"]))
    task, message, receiver = env.take_task()
    def st(seq, state, **kw):
        return protocol.Status(task_id=task.task_id, attempt=1, seq=seq, state=state, worker_id="w", **kw)
    statuses = [st(0, protocol.TaskState.RECEIVED), st(1, protocol.TaskState.RUNNING),
                st(2, protocol.TaskState.RUNNING, heartbeat=True), st(3, protocol.TaskState.FINISHED, exit_code=0)]
    woken = env.site.finals.generation  # the API's long polls: woken by the final status, no task waiting
    env.report(*statuses)
    env.report(*statuses, message_id_suffix="-again")  # duplicates that pass duplicate detection
    with env.reporter.get_queue_sender(env.response_queue) as sender:
        sender.send_messages(ServiceBusMessage(b"{not json", message_id="garbage"))
    receiver.complete_message(message)
    receiver.close()
    wait_until(lambda: row(env, submitted.id).state == "finished", what="finished")
    wait_until(lambda: env.site.watcher.stats.received >= 8, what="all statuses handled")
    assert events(env, submitted.id) == [(1, "queued", "site"), (1, "received", "worker"), (1, "running", "worker"),
                                         (1, "finished", "worker")]
    assert env.site.watcher.stats.applied == 4 and env.site.watcher.stats.ignored == 4
    assert env.site.finals.generation > woken
    with env.root.get_queue_receiver(env.response_queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        dead = wait_until(lambda: dlq.receive_messages(max_wait_time=1), what="dead letter")
        assert dead[0].dead_letter_reason == "MalformedMessage"
        dlq.complete_message(dead[0])


def test_monitor_fails_dead_lettered_tasks_with_the_reason(env):
    submitted = env.site.producer.submit(Submission(pool=env.competition, command=["true"]))
    _task, message, receiver = env.take_task()
    receiver.dead_letter_message(message, reason="UnsupportedSchemaVersion", error_description="schema_version 9")
    receiver.close()
    monitor = _monitor(env)
    wait_until(lambda: monitor.drain_dead_letters(_pool(env)) or row(env, submitted.id).state == "failed",
               what="dead letter drained")
    task = row(env, submitted.id)
    assert task.state == "failed"
    assert task.reason == "dead-lettered: UnsupportedSchemaVersion: schema_version 9"
    assert (task.failure_class, task.failure_code) == ("infrastructure", "invalid_message")  # not retried


def _set_pool(env: Env, **columns) -> None:
    from worker.site.models import Pool

    with transaction(env.site.sessions) as s:
        pool = s.get(Pool, env.competition)
        for key, value in columns.items():
            setattr(pool, key, value)


def test_monitor_retries_a_lost_task_after_a_back_off_and_stops_the_old_attempt(env):
    _set_pool(env, retry_budget=1, retry_backoff_s=3)
    submitted = env.site.producer.submit(Submission(pool=env.competition, command=["true"]))
    task, message, receiver = env.take_task()
    receiver.complete_message(message)  # a worker took it for good, then went silent
    receiver.close()
    with transaction(env.site.sessions) as s:
        from worker.site.watcher import apply_status

        apply_status(s, protocol.Status(task_id=task.task_id, attempt=1, seq=0, state=protocol.TaskState.RUNNING,
                                        worker_id="w-silent"))
    monitor = _monitor(env)
    assert monitor.handle_lost(utcnow() + timedelta(seconds=10)) == []  # not silent long enough
    assert monitor.handle_lost(utcnow() + timedelta(seconds=31)) == [submitted.id]
    retry = row(env, submitted.id)
    assert (retry.state, retry.attempt, retry.infra_retries) == ("queued", 2, 1)
    assert retry.sent_at is not None and retry.not_before > utcnow()  # sent as a scheduled message
    # Nothing to take before the back-off has passed: the broker holds the scheduled message.
    with env.worker.get_queue_receiver(env.task_queue, prefetch_count=0) as early:  # attached before the wait
        assert early.receive_messages(max_message_count=1, max_wait_time=0.5) == []
    second, message2, receiver2 = env.take_task()
    assert utcnow() >= retry.not_before - timedelta(seconds=0.2)
    assert (second.task_id, second.attempt, message2.message_id) == (submitted.id, 2, f"{submitted.id}:2")
    assert second.stdout_url != task.stdout_url and f"/tasks/{submitted.id}/2/" in second.stdout_url
    receiver2.complete_message(message2)
    receiver2.close()
    assert blobs.read_control(task.control_url).reason == "lost: superseded by the site"
    # Lost again with the budget used up: failed, attributed to the infrastructure, not resubmitted.
    with transaction(env.site.sessions) as s:
        from worker.site.watcher import apply_status

        apply_status(s, protocol.Status(task_id=task.task_id, attempt=2, seq=0, state=protocol.TaskState.RUNNING,
                                        worker_id="w2"))
    assert monitor.handle_lost(utcnow() + timedelta(seconds=31)) == [submitted.id]
    final = row(env, submitted.id)
    assert final.state == "failed" and "1 of 1 infrastructure retries used" in final.reason
    assert (final.failure_class, final.failure_code) == ("infrastructure", "worker_lost")
    assert final.attempt - final.infra_retries == 1  # never counted as a participant attempt
    assert [e[1] for e in events(env, submitted.id)] == ["queued", "running", "lost", "queued", "running", "lost",
                                                         "failed"]


def test_monitor_sends_tasks_whose_send_failed(env):
    with transaction(env.site.sessions) as s:
        s.add(Task(id="unsent-1", pool=env.competition, task_type="evaluate_submission", command=["true"],
                   time_limit_s=60, created_at=utcnow() - timedelta(seconds=60)))
    assert _monitor(env).resend_unsent() == 1
    task, message, receiver = env.take_task()
    assert task.task_id == "unsent-1"
    receiver.complete_message(message)
    receiver.close()
    assert _monitor(env).resend_unsent() == 0


def test_cancel_queued_task_is_immediate_and_signals_workers(env):
    submitted = env.site.producer.submit(Submission(pool=env.competition, command=["sleep", "60"]))
    env.site.producer.cancel(submitted.id, "changed my mind")
    task = row(env, submitted.id)
    assert (task.state, task.reason) == ("cancelled", "changed my mind")
    queued, message, receiver = env.take_task()
    assert json.loads(blobs.client(queued.control_url).download_blob().readall())["action"] == "cancel"
    receiver.complete_message(message)
    receiver.close()


def _monitor(env: Env):
    from worker.site.monitor import Monitor

    return Monitor(env.site.sessions, env.site.producer, env.site.queues, lost_after_s=30)


def _pool(env: Env):
    from worker.site.pools import get_pool

    with env.site.sessions() as s:
        return get_pool(s, env.competition)


@pytest.mark.parametrize(("submission", "message"), [
    ({"env": {"BIG": "x" * 300_000}}, "limit"),
    ({"time_limit_s": 30 * 24 * 3600}, "time_limit_s"),
    ({"inputs": {"../escape": Path("/etc/hostname")}}, "name"),
    ({"task_id": "bad id with spaces"}, "task_id"),
])
def test_unsendable_submissions_are_refused_before_anything_is_recorded(env, submission, message):
    from worker.site.producer import SubmitError

    with pytest.raises(SubmitError, match=message):
        env.site.producer.submit(Submission(pool=env.competition, command=["true"], **submission))
    with env.site.sessions() as s:
        assert s.query(Task).count() == 0


def test_presence_reports_upsert_workers_and_unknown_kinds_are_dead_lettered(env):
    env.site.start_background()
    host = protocol.HostFacts(hostname="h", os="linux", cpu_count=2, memory_mb=100, driver="process",
                              agent_version="0")

    def presence(worker: str, seq: int, activity=protocol.Activity.IDLE) -> bytes:
        return protocol.encode(protocol.Presence(worker_id=worker, activity=activity, interval_s=5, seq=seq,
                                                 host=host))

    def message(body: bytes, message_id: str) -> ServiceBusMessage:
        return ServiceBusMessage(body, subject=protocol.SUBJECT_PRESENCE, message_id=message_id)

    a0, b0, a1 = presence("a", 0), presence("b", 0), presence("a", 1)  # in this order on the workers' clock
    with env.reporter.get_queue_sender(env.response_queue) as sender:
        sender.send_messages([message(a0, "a0"), message(b0, "b0"), message(a1, "a1")])
        sender.send_messages(message(a1, "a1-again"))  # the same report again (not deduplicated by its id)
        sender.send_messages(ServiceBusMessage(b"{}", subject="gossip", message_id="odd"))
        sender.send_messages(ServiceBusMessage(b"{\"schema_version\": 1}", subject=protocol.SUBJECT_PRESENCE,
                                               message_id="bad"))
    stats = env.site.watcher.stats
    wait_until(lambda: stats.received >= 4 and stats.dead_lettered >= 2, what="handled")
    with env.site.sessions() as s:
        summary = next(p for p in pool_summaries(s) if p.name == env.competition)
        assert (summary.live_workers, summary.idle_workers) == (2, 2)
        assert env.site.watcher.stats.ignored == 1  # the repeated report changed nothing
        assert {w.id: w.pool for w in s.query(Worker)} == {"a": env.competition, "b": env.competition}
    with env.reporter.get_queue_sender(env.response_queue) as sender:
        sender.send_messages(message(presence("b", 1, protocol.Activity.LEFT), "b1"))
    wait_until(lambda: env.site.watcher.stats.received >= 5, what="left handled")
    with env.site.sessions() as s:
        summary = next(p for p in pool_summaries(s) if p.name == env.competition)
        assert summary.live_workers == 1 and s.get(Worker, "b").left_at is not None
    with env.root.get_queue_receiver(env.response_queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        dead = []
        wait_until(lambda: dead.extend(dlq.receive_messages(max_message_count=5, max_wait_time=1)) or len(dead) >= 2,
                   what="dead letters")
        assert sorted(m.dead_letter_reason for m in dead) == ["InvalidPresence", "UnknownMessageKind"]
        for m in dead:
            dlq.complete_message(m)

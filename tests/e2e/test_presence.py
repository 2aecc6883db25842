"""Idle agents are visible to the site: real agents (in-process) on least-rights queues of the real
emulator, the site's real watcher and database. Two idle agents -> two live workers; a stopped agent
is marked left and no longer counted."""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from rich.console import Console

from tests.fixtures import waiting
from worker.agent import run_agent
from worker.config import competition_queues, parse_agent_config
from worker.emulator.launcher import generate_key
from worker.local import views
from worker.site.db import sqlite_url, transaction
from worker.site.models import Worker
from worker.site.pools import register_pool
from worker.site.queries import pool_summaries
from worker.site.service import Site, SiteSettings

pytestmark = pytest.mark.slow
INTERVAL_S = 0.5


class Agents:
    def __init__(self, emulator, site: Site, pool: str, tmp: Path) -> None:
        self.emulator, self.site, self.pool, self.tmp = emulator, site, pool, tmp
        self.task_queue, self.response_queue = competition_queues(pool)
        self.running: dict[str, tuple[threading.Thread, threading.Event]] = {}

    def start(self, worker_id: str) -> None:
        config = parse_agent_config({
            "worker_id": worker_id,
            "servicebus": {
                "task_queue": self.task_queue, "response_queue": self.response_queue,
                "task_queue_connection_string": self.emulator.connection_string("worker", self.task_queue),
                "response_queue_connection_string": self.emulator.connection_string("worker", self.response_queue),
            },
            "work_dir": str(self.tmp / worker_id / "work"),
            "cache": {"dir": str(self.tmp / worker_id / "cache"), "max_bytes": "10MiB"},
            "heartbeat_interval_s": INTERVAL_S, "receive_wait_s": 5,
        })
        stop = threading.Event()
        thread = threading.Thread(target=run_agent, args=(config, stop), daemon=True)
        thread.start()
        self.running[worker_id] = (thread, stop)

    def stop(self, worker_id: str) -> None:
        thread, stop = self.running.pop(worker_id)
        stop.set()
        thread.join(30)
        assert not thread.is_alive()

    def summary(self):
        with self.site.sessions() as s:
            return next(p for p in pool_summaries(s) if p.name == self.pool)

    def worker(self, worker_id: str) -> Worker | None:
        with self.site.sessions() as s:
            return s.get(Worker, worker_id)


@pytest.fixture
def agents(emulator, azurite, tmp_path) -> Iterator[Agents]:
    pool = f"p{uuid.uuid4().hex[:10]}"
    task_queue, response_queue = competition_queues(pool)
    emulator.create_queue(task_queue, policies=[{"name": "worker", "key": generate_key(), "rights": ["Listen"]},
                                                {"name": "site", "key": generate_key(), "rights": ["Send", "Listen"]}])
    emulator.create_queue(response_queue, policies=[{"name": "worker", "key": generate_key(), "rights": ["Send"]},
                                                    {"name": "site", "key": generate_key(), "rights": ["Listen"]}])
    site = Site(SiteSettings(database_url=sqlite_url(tmp_path / "site.db"), storage_connection_string=azurite.connection_string))
    with transaction(site.sessions) as s:
        register_pool(s, pool, task_queue_connection_string=emulator.connection_string("site", task_queue),
                      response_queue_connection_string=emulator.connection_string("site", response_queue))
    site.start_background()
    a = Agents(emulator, site, pool, tmp_path)
    yield a
    for worker_id in list(a.running):
        a.stop(worker_id)
    site.close()


wait_until = partial(waiting.wait_until, timeout=20.0, interval=0.1)


def test_idle_agents_are_live_workers_and_a_stopped_one_is_left(agents):
    agents.start("idle-1")
    agents.start("idle-2")
    wait_until(lambda: agents.summary().live_workers == 2, what="2 live workers")
    summary = agents.summary()
    assert summary.idle_workers == 2 and sum(summary.counts.values()) == 0  # no task ever ran
    first = agents.worker("idle-1")
    assert first.activity == "idle" and first.interval_s == INTERVAL_S and first.host["cpu_count"] >= 1
    seen = first.last_seen_at
    wait_until(lambda: agents.worker("idle-1").last_seen_at > seen, what="a later presence")  # repeated
    assert agents.site.watcher.stats.dead_lettered == 0

    out = io.StringIO()  # the site's pool view (`pool status`)
    Console(file=out, width=200).print(views.pools_table(agents.site))
    row = next(line for line in out.getvalue().splitlines() if agents.pool in line)
    assert row.split("│")[4].strip() == "2", row  # pool, depth, DLQ, workers

    agents.stop("idle-2")
    gone = wait_until(lambda: (w := agents.worker("idle-2")) is not None and w.left_at is not None and w,
                      what="idle-2 marked left")
    assert gone.activity == "left"
    assert agents.summary().live_workers == 1
    time.sleep(3 * INTERVAL_S)  # idle-1 still reports; idle-2 stays out
    assert agents.summary().live_workers == 1 and agents.worker("idle-2").left_at is not None

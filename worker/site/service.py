"""The site as one object: settings -> database, storage, queues, producer, watcher and monitor."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from worker.site import admission
from worker.site.db import make_engine, make_read_sessionmaker, make_sessionmaker, migrate, when_reachable
from worker.site.finals import FinalStates
from worker.site.monitor import DepthProbe, Monitor
from worker.site.producer import Producer, SubmitError
from worker.site.queues import SiteQueues
from worker.site.watcher import Watcher
from worker.storage import DEFAULT_SAS_MARGIN_S, Storage

log = logging.getLogger(__name__)


class SiteSettings(BaseModel):
    """What the site needs. The Service Bus connection string is namespace-level with Send + Listen
    (no Manage); a pool row may carry its own queue-level ones instead."""

    model_config = ConfigDict(extra="forbid")

    database_url: str
    storage_connection_string: str
    servicebus_connection_string: str | None = None
    sas_margin_s: float = Field(default=DEFAULT_SAS_MARGIN_S, gt=0)
    lost_after_s: float = Field(default=180.0, gt=0)
    resend_after_s: float = Field(default=5.0, gt=0)
    monitor_interval_s: float = Field(default=1.0, gt=0)
    # How long opening the site waits for a database that refuses connections (0: fail at once).
    database_wait_s: float = Field(default=0.0, ge=0)


class Site:
    def __init__(self, settings: SiteSettings, *, run_migrations: bool = True, storage: Storage | None = None) -> None:
        """``storage``: reached some other way than ``settings.storage_connection_string`` (an identity)."""
        self.settings = settings
        self.engine = make_engine(settings.database_url)
        # A database server may still be starting or recovering; a SQLite file has no server to wait for.
        wait_s = 0.0 if self.engine.dialect.name == "sqlite" else settings.database_wait_s
        if run_migrations:
            when_reachable(lambda: migrate(self.engine), wait_s)
        elif wait_s:
            when_reachable(lambda: self.engine.connect().close(), wait_s)
        self.sessions = make_sessionmaker(self.engine)
        self.read_sessions = make_read_sessionmaker(self.engine)  # reads only: no write lock on SQLite
        self.storage = storage if storage is not None else Storage.from_connection_string(
            settings.storage_connection_string, sas_margin_s=settings.sas_margin_s)
        self.queues = SiteQueues(settings.servicebus_connection_string)
        self.producer = Producer(self.sessions, self.storage, self.queues, self.read_sessions)
        self.watcher: Watcher | None = None
        self.monitor: Monitor | None = None
        self.finals = FinalStates()  # wakes the API's long polls
        self._stop = threading.Event()
        self._sync_thread: threading.Thread | None = None

    def start_background(self, depth_probe: DepthProbe | None = None, pool_sync_s: float = 1.0,
                         monitor_gate: Callable[[], bool] | None = None) -> None:
        """Start the watcher (one receiver per pool, new pools picked up within ``pool_sync_s``)
        and the monitor."""
        self.watcher = Watcher(self.sessions, self.queues, after_commit=self.after_final)
        self.monitor = Monitor(self.sessions, self.producer, self.queues, lost_after_s=self.settings.lost_after_s,
                               resend_after_s=self.settings.resend_after_s,
                               interval_s=self.settings.monitor_interval_s, depth_probe=depth_probe,
                               gate=monitor_gate)
        self.watcher.sync_pools()
        self.monitor.start()

        def sync() -> None:
            while not self._stop.wait(pool_sync_s):
                try:
                    self.watcher.sync_pools()  # type: ignore[union-attr]
                except Exception:  # noqa: BLE001, S112 - retried on the next round
                    continue

        self._sync_thread = threading.Thread(target=sync, name="pool-sync", daemon=True)
        self._sync_thread.start()

    def after_final(self, ended: bool, pools: set[str], retried: list[str]) -> None:
        """After the watcher committed final states: first of all the API's long polls learn that
        tasks ended; then send the infrastructure retries it queued (as scheduled messages) and let
        waiting tasks into the pools whose slots were freed."""
        if ended:
            self.finals.notify()
        for task_id in retried:
            try:
                self.producer.send(task_id)
            except SubmitError as exc:
                log.warning("%s", exc)
        for pool in pools:
            admission.admit_and_send(self.sessions, pool, self.producer.send)

    def close(self) -> None:
        self._stop.set()
        if self.monitor:
            self.monitor.stop()
        if self.watcher:
            self.watcher.stop()
        if self._sync_thread:
            self._sync_thread.join(5)
        self.queues.close()
        self.storage.close()
        self.engine.dispose()

    def __enter__(self) -> Site:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_sqlite_url(data_dir: Path) -> str:
    from worker.site.db import sqlite_url

    return sqlite_url(data_dir / "site.db")

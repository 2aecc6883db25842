"""Periodic "still alive" statuses (the current state again, ``heartbeat: true``) from ``received`` to the
final status — long downloads and uploads included — so the site's monitor can tell a live task from
a lost one."""

from __future__ import annotations

import logging
import threading
from typing import Self

from worker.agent.errors import InfrastructureError
from worker.agent.reporter import TaskReporter

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, reporter: TaskReporter, interval_s: float) -> None:
        self.reporter = reporter
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.reporter.heartbeat()
            except InfrastructureError as exc:  # a missed heartbeat is not fatal; the final status is
                log.warning("heartbeat not sent: %s", exc)

"""Wakes the API's long polls (``GET /api/v1/tasks/{id}?wait_s=``) when a task may have reached a
final state in this process: the watcher committed a final status, or the API cancelled a task.

A waiter also re-reads the database every :data:`RECHECK_S`, for what it is not told about: final
states applied by another replica's watcher or set by the monitor (time-outs, lost workers)."""

from __future__ import annotations

import threading

RECHECK_S = 0.1  # at most this late for a final state another replica applied; one query per waiter


class FinalStates:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._generation = 0

    @property
    def generation(self) -> int:
        """Read BEFORE looking at the database; :meth:`wait` on it then misses nothing."""
        return self._generation

    def notify(self) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def wait(self, generation: int, timeout: float) -> bool:
        """Until something changed after ``generation`` was read (True), or ``timeout`` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: self._generation != generation, max(0.0, timeout))

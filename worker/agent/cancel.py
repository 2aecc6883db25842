"""Cancellation: the site writes the task's control blob; the agent polls it through a read-only SAS.

Polling every ``cancel_poll_interval_s`` (≤ 2 s by default) stops a cancelled task well within 5 s
and needs no extra rights: no Service Bus entity to listen on, no storage write access.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Self

from azure.core.exceptions import AzureError

from worker.agent import blobs
from worker.agent.errors import InfrastructureError
from worker.protocol import ControlSignal
from worker.util.threads import Job, spawn

log = logging.getLogger(__name__)


def cancel_requested(control_url: str | None) -> ControlSignal | None:
    """One poll; errors count as "no signal" (a storage outage shows up in the log streaming)."""
    if not control_url:
        return None
    try:
        signal = blobs.read_control(control_url)
    except AzureError as exc:
        log.debug("control blob not readable: %s", exc)
        return None
    return signal if signal is not None and signal.action == "cancel" else None


def cancelled_before_run(control_url: str | None) -> ControlSignal | None:
    """The check before a program starts. Unlike a poll while it runs, a storage error here fails the
    task as an infrastructure failure: the log blobs (same account) could not be written either, and
    the program has not spent anything yet."""
    if not control_url:
        return None
    try:
        signal = blobs.read_control(control_url)
    except AzureError as exc:
        raise InfrastructureError(f"cannot read the control blob {blobs.describe(control_url)}: {exc}") from exc
    return signal if signal is not None and signal.action == "cancel" else None


class CancelWatcher:
    def __init__(self, control_url: str | None, interval_s: float, on_cancel: Callable[[ControlSignal], None]) -> None:
        self.control_url = control_url
        self.interval_s = interval_s
        self.on_cancel = on_cancel
        self.signal: ControlSignal | None = None
        self._stop = threading.Event()
        self._thread: Job | None = None

    def __enter__(self) -> Self:
        if self.control_url:
            self._thread = spawn("cancel-watch", self._run)  # a reused thread (worker.util.threads)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            signal = cancel_requested(self.control_url)
            if signal is not None:
                log.info("task cancelled by the site: %s", signal.reason)
                self.signal = signal
                self.on_cancel(signal)
                return

"""SIGTERM / SIGINT -> stop taking tasks (only the command installs this; run_agent takes an event)."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


def stop_on_signals(stop_event: threading.Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        if stop_event.is_set():
            return
        log.info("received %s: finishing the current task, taking no new ones", signal.Signals(signum).name)
        stop_event.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)

"""One way to keep a connection-owning loop alive: run it again after a failure, with exponential
back-off and jitter (tenacity), the back-off starting afresh once a session had been healthy for a
while (a connection that broke after an hour is retried at once, not after the last outage's wait).

Used by the agent's receive loop, the site's watcher (one per pool) and the site's monitor.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_when_event_set,
    wait_exponential_jitter,
)

log = logging.getLogger(__name__)

HEALTHY_SESSION_S = 30.0  # a session that lasted this long resets the back-off
INITIAL_WAIT_S = 0.5
MAX_WAIT_S = 30.0
JITTER_S = 0.5


def run_with_reconnect(
    session: Callable[[], None],
    stop: threading.Event,
    *,
    what: str,
    transient: tuple[type[BaseException], ...] = (Exception,),
    healthy_s: float = HEALTHY_SESSION_S,
    initial_s: float = INITIAL_WAIT_S,
    max_s: float = MAX_WAIT_S,
    on_reconnect: Callable[[], None] | None = None,
) -> None:
    """Call ``session()`` until ``stop`` is set. A ``transient`` error starts it again after a back-off
    wait (``stop`` cuts the wait short); any other error propagates. ``what`` names the loop in the
    log lines; ``on_reconnect`` is called before each new session after a failure (e.g. a counter)."""

    def before_sleep(state: RetryCallState) -> None:
        if on_reconnect is not None:
            on_reconnect()
        exc = state.outcome.exception() if state.outcome else None
        log.warning("%s: connection failed (%s); reconnecting in %.1f s", what, exc,
                    state.next_action.sleep if state.next_action else 0)

    def guarded() -> None:
        started = time.monotonic()
        try:
            session()
        except transient:
            if time.monotonic() - started < healthy_s or stop.is_set():
                raise  # tenacity waits, longer each time
            log.warning("%s: connection lost; reconnecting", what, exc_info=True)
            if on_reconnect is not None:
                on_reconnect()
            # returns: this Retrying is done, the next one starts with a fresh back-off

    while not stop.is_set():
        retrying = Retrying(
            retry=retry_if_exception_type(transient),
            wait=wait_exponential_jitter(initial=initial_s, max=max_s, jitter=JITTER_S),
            stop=stop_when_event_set(stop),
            sleep=stop.wait,
            before_sleep=before_sleep,
            reraise=False,
        )
        try:
            for attempt in retrying:
                with attempt:
                    guarded()
        except Exception as exc:
            if not stop.is_set():
                raise
            log.debug("%s ended: %r", what, exc)

"""worker.reconnect: back-off between failed sessions, a fresh back-off after a healthy one, stop."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from worker.reconnect import run_with_reconnect


def test_failed_sessions_are_retried_with_growing_waits_until_stopped():
    stop, starts = threading.Event(), []

    def session() -> None:
        starts.append(time.monotonic())
        if len(starts) == 4:
            stop.set()
            return
        raise ConnectionError("down")

    reconnects = []
    run_with_reconnect(session, stop, what="test", initial_s=0.05, max_s=1.0, on_reconnect=lambda: reconnects.append(1))
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) == 4 and len(reconnects) == 3
    assert gaps[0] >= 0.05 and gaps[2] >= 0.2  # 0.05, 0.1, 0.2 (+ jitter)


def test_a_healthy_session_resets_the_back_off():
    stop, starts = threading.Event(), []

    def session() -> None:
        starts.append(time.monotonic())
        if len(starts) == 3:
            stop.set()
            return
        time.sleep(0.2)  # healthy for longer than healthy_s, then the connection breaks
        raise ConnectionError("broke")

    run_with_reconnect(session, stop, what="test", healthy_s=0.1, initial_s=5.0)
    assert len(starts) == 3 and starts[2] - starts[0] < 2.0  # no 5 s back-off wait in between


def test_stop_cuts_the_wait_short_and_other_errors_propagate():
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    began = time.monotonic()
    run_with_reconnect(lambda: (_ for _ in ()).throw(ConnectionError("down")), stop, what="test", initial_s=30.0)
    assert time.monotonic() - began < 5.0

    with pytest.raises(KeyError):
        run_with_reconnect(lambda: (_ for _ in ()).throw(KeyError("bug")), threading.Event(), what="test",
                           transient=(ConnectionError,))

"""worker.agent.heartbeat.Timers: when heartbeats and presence reports are due (pure schedule logic;
the sender thread that acts on it is exercised by the agent loop tests)."""

from __future__ import annotations

import math

from worker.agent.heartbeat import Timers


def test_nothing_is_due_until_something_is_scheduled():
    timers = Timers()
    assert timers.next_due() == math.inf
    assert timers.take_due(1e9) == (None, None)


def test_heartbeats_are_due_every_interval_and_stop():
    timers, reporter = Timers(), object()
    timers.heartbeats(reporter, 5.0, now=100.0)  # type: ignore[arg-type]
    assert timers.next_due() == 105.0
    assert timers.take_due(104.9) == (None, None)
    assert timers.take_due(105.0) == (reporter, None)
    assert timers.next_due() == 110.0
    timers.heartbeats(None, 0.0, now=106.0)
    assert timers.next_due() == math.inf and timers.take_due(1e9) == (None, None)


def test_presence_is_due_at_once_then_every_interval():
    timers = Timers()

    def source():
        return None

    timers.presence_reports("q", source, 2.0, now=10.0)
    assert timers.take_due(10.0) == (None, ("q", source))
    assert timers.next_due() == 12.0
    timers.presence_reports("q", None, 0.0, now=11.0)
    assert timers.next_due() == math.inf

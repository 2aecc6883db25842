"""When the agent says it is alive, and the context that ticks a task's heartbeats.

- **Heartbeats**: the current state of the task in hand again (``heartbeat: true``) every
  ``heartbeat_interval_s`` from ``received`` until the final status — long downloads and uploads
  included — so the site's monitor can tell a live task from a lost one.
- **Presence** reports: while the agent has no task, "I am here" every ``heartbeat_interval_s``.

:class:`Timers` keeps both schedules; the agent's status-sender thread (:mod:`worker.agent.sender`) asks
it what is due and how long it may sleep, so neither costs a thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Self

from worker.protocol import Presence

if TYPE_CHECKING:
    from worker.agent.reporter import TaskReporter
    from worker.agent.sender import StatusSender

PresenceSource = Callable[[], Presence | None]  # the report to send now; None: busy, nothing to send


class Timers:
    """The heartbeat and presence schedules (not thread-safe: the sender guards it with its lock)."""

    def __init__(self) -> None:
        self.beat: tuple[TaskReporter, float] | None = None  # (reporter, interval)
        self.next_beat = math.inf
        self.presence: tuple[str, PresenceSource, float] | None = None  # (queue, source, interval)
        self.next_presence = math.inf

    def heartbeats(self, reporter: TaskReporter | None, interval_s: float, now: float) -> None:
        self.beat = (reporter, interval_s) if reporter is not None else None
        self.next_beat = now + interval_s if reporter is not None else math.inf

    def presence_reports(self, queue: str, source: PresenceSource | None, interval_s: float, now: float) -> None:
        """Due at once, then every ``interval_s``; ``source`` None stops them."""
        if source is None:
            self.presence, self.next_presence = None, math.inf
        else:
            self.presence, self.next_presence = (queue, source, interval_s), now

    def next_due(self) -> float:
        return min(self.next_beat, self.next_presence)

    def take_due(self, now: float) -> tuple[TaskReporter | None, tuple[str, PresenceSource] | None]:
        """What is due at ``now`` (the reporter to beat, the presence to send), and schedule the next."""
        beat = presence = None
        if self.beat is not None and now >= self.next_beat:
            beat, interval = self.beat
            self.next_beat = now + interval
        if self.presence is not None and now >= self.next_presence:
            queue, source, interval = self.presence
            presence = (queue, source)
            self.next_presence = now + interval
        return beat, presence


class Heartbeat:
    """Ticks ``reporter.heartbeat()`` on the sender thread while the context is open."""

    def __init__(self, sender: StatusSender, reporter: TaskReporter, interval_s: float) -> None:
        self.sender = sender
        self.reporter = reporter
        self.interval_s = interval_s

    def __enter__(self) -> Self:
        self.sender.heartbeats(self.reporter, self.interval_s)
        return self

    def __exit__(self, *exc: object) -> None:
        self.sender.heartbeats(None)

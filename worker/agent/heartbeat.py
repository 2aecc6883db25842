"""Periodic "still alive" statuses (the current state again, ``heartbeat: true``) from ``received`` to the
final status — long downloads and uploads included — so the site's monitor can tell a live task from
a lost one. They are ticked by the agent's status-sender thread (no thread per task)."""

from __future__ import annotations

from typing import Self

from worker.agent.reporter import StatusSender, TaskReporter


class Heartbeat:
    def __init__(self, sender: StatusSender, reporter: TaskReporter, interval_s: float) -> None:
        self.sender = sender
        self.reporter = reporter
        self.interval_s = interval_s

    def __enter__(self) -> Self:
        self.sender.heartbeats(self.reporter, self.interval_s)
        return self

    def __exit__(self, *exc: object) -> None:
        self.sender.heartbeats(None)

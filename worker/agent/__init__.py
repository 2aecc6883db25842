"""The worker agent: takes one task at a time from its pool's queue and runs it.

Small modules, one concern each (in the spirit of dramatiq's middleware): ``worker`` (receive loop,
reconnects, settlement), ``lock`` (lock renewal), ``lifecycle`` (one task's statuses and steps),
``reporter`` / ``heartbeat`` (statuses), ``logs`` (append-blob streaming), ``cancel`` (control-blob
polling), ``cache`` / ``workspace`` (inputs), ``outputs`` (output archive), ``signals`` (SIGTERM).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.config import AgentConfig


def run_agent(config: AgentConfig, stop_event: threading.Event | None = None) -> int:
    """Run until ``stop_event`` is set; then finish (or hand back) the current task. Returns 0, or 2
    when the configured execution driver cannot run on this host."""
    import logging

    from worker.agent.worker import Agent
    from worker.execution.base import DriverUnavailable

    try:
        agent = Agent(config, stop_event)
    except DriverUnavailable as exc:
        logging.getLogger(__name__).error("execution driver unavailable: %s", exc)
        return 2
    return agent.run()


__all__ = ["run_agent"]

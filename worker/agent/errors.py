"""The two kinds of failure the agent tells apart, because they are settled differently."""

from __future__ import annotations

from worker.errors import PoolError, TaskRejected

__all__ = ["InfrastructureError", "TaskRejected"]


class InfrastructureError(PoolError, RuntimeError):
    """Storage or Service Bus failed us (not the program): hand the message back (abandon) so
    Service Bus retries it, and dead-letters it after the queue's max delivery count."""


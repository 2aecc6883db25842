"""The two kinds of failure the agent tells apart, because they are settled differently."""

from __future__ import annotations


class InfrastructureError(RuntimeError):
    """Storage or Service Bus failed us (not the program): hand the message back (abandon) so
    Service Bus retries it, and dead-letters it after the queue's max delivery count."""


class TaskRejected(RuntimeError):
    """The task's own inputs are unusable (unsafe archive, program that cannot start): a final
    ``failed`` status with this message, the message completed, no retry."""

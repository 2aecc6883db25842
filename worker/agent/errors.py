"""The two kinds of failure the agent tells apart, because they are settled differently."""

from __future__ import annotations

from worker.errors import PoolError, TaskRejected

__all__ = ["InfrastructureError", "TaskRejected"]


class InfrastructureError(PoolError, RuntimeError):
    """Storage or Service Bus failed us (not the program). While statuses can still be sent, the
    agent reports a final ``failed`` status carrying ``code`` (``Status.failure``) and the site retries
    the task after a back-off; when they cannot, the message is handed back (abandoned) so Service Bus
    redelivers it, and dead-letters it after the queue's max delivery count."""

    def __init__(self, message: str, code: str = "storage_error") -> None:
        super().__init__(message)
        self.code = code  # a worker.site.failures code: storage_error, bundle_download, servicebus_error


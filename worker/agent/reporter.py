"""The statuses of one delivery of one task attempt: sequence numbers, order, the final status.

``send`` queues a status on the agent's :class:`~worker.agent.sender.StatusSender` and returns; the
**final** status is sent at once and waited for (:meth:`TaskReporter.finish`), so a message is still
completed only after its final status — and every status before it — was sent. A status that cannot be
sent stops the task (it is handed back); a heartbeat that cannot be sent is only logged.

Sequence numbers are strictly increasing per attempt, also across redeliveries of the same attempt
(a worker crashed, or a task was handed back): ``seq = delivery_count * SEQ_PER_DELIVERY + n``, so the
watcher's "ignore stale seq" rule never drops the statuses of a redelivered run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from worker.agent.errors import InfrastructureError
from worker.agent.sender import Pending, StatusSender
from worker.protocol import HostFacts, Status, Task, TaskState

log = logging.getLogger(__name__)

SEQ_PER_DELIVERY = 1_000_000  # heartbeats every second for 11 days still fit in one delivery's range
FLUSH_TIMEOUT_S = 120.0  # the SDK's own retries end long before this; a guard against a wedged link


class TaskReporter:
    """The statuses of one delivery of one task attempt."""

    def __init__(self, sender: StatusSender, task: Task | None, worker_id: str, host: HostFacts | None,
                 delivery_count: int | None, on_failure: Callable[[InfrastructureError], None] | None = None) -> None:
        self._sender = sender
        self.task = task
        self.worker_id = worker_id
        self.host = host
        self.delivery_count = delivery_count or 0
        self.on_failure = on_failure
        self._seq = self.delivery_count * SEQ_PER_DELIVERY
        self._lock = threading.Lock()
        self.state: TaskState | None = None
        self.sent: list[Status] = []  # queued statuses (the first 1000), for tests and debugging
        self.error: InfrastructureError | None = None
        self._last: Pending | None = None

    @property
    def sender(self) -> StatusSender:
        return self._sender

    def heartbeat(self) -> Status | None:
        """Repeat the current state as a heartbeat; nothing before the first or after the final status."""
        with self._lock:
            if self.state is None or self.state.terminal or self.error is not None:
                return None
            return self._queue(self.state, heartbeat=True)

    def send(self, state: TaskState, **fields: Any) -> Status:
        """Queue a status (sent in the background); raises the error of an earlier status that failed."""
        with self._lock:  # seq order == queue order == send order, heartbeats included
            if self.error is not None:
                raise self.error
            return self._queue(state, **fields)

    def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> None:
        """Send what is queued now and wait for it; InfrastructureError if a status could not be sent."""
        with self._lock:
            last = self._last
        if last is not None and not last.done.is_set():
            self._sender.expedite()
        if last is not None and not last.done.wait(timeout):
            self.failed(last.status, InfrastructureError(f"status not sent within {timeout:.0f} s"))
        if self.error is not None:
            raise self.error

    def finish(self, state: TaskState, **fields: Any) -> Status:
        """The final status: queued after everything before it, and waited for."""
        with self._lock:
            if self.error is not None:
                raise self.error
            status = self._queue(state, urgent=True, **fields)
        self.flush()
        return status

    def failed(self, status: Status, error: InfrastructureError) -> None:
        """Called by the sender thread for a status that could not be sent."""
        if status.heartbeat:  # a missed heartbeat is not fatal; the next one or the final status is
            log.warning("heartbeat not sent: %s", error)
            return
        with self._lock:
            first = self.error is None
            self.error = self.error or error
        if first:
            log.warning("status %s not sent: %s", status.state.value, error)
            if self.on_failure is not None:
                self.on_failure(error)

    def _queue(self, state: TaskState, *, heartbeat: bool = False, urgent: bool = False, **fields: Any) -> Status:
        assert self.task is not None
        status = Status(
            task_id=self.task.task_id,
            attempt=self.task.attempt,
            seq=self._seq,
            state=state,
            heartbeat=heartbeat,
            worker_id=self.worker_id,
            host=self.host if not self.sent else None,
            **fields,
        )
        item = Pending(self.task.reply_to, status, self, urgent=urgent)
        self._sender.enqueue(item)
        self._last = item
        self._seq += 1
        self.state = state
        if len(self.sent) < 1000:  # heartbeats are endless
            self.sent.append(status)
        log.debug("status %s seq=%d%s queued", state.value, status.seq, " (heartbeat)" if heartbeat else "")
        return status

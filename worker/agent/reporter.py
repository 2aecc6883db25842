"""Status reports on the response queue: one sender, shared by the task thread and the heartbeat.

Sequence numbers are strictly increasing per attempt, also across redeliveries of the same attempt
(a worker crashed, or a task was handed back): ``seq = delivery_count * SEQ_PER_DELIVERY + n``, so the
watcher's "ignore stale seq" rule never drops the statuses of a redelivered run.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusSender
from azure.servicebus.exceptions import ServiceBusError

from worker.agent.errors import InfrastructureError
from worker.protocol import CONTENT_TYPE, HostFacts, Status, Task, TaskState, encode
from worker.servicebus import status_sender

log = logging.getLogger(__name__)

SEQ_PER_DELIVERY = 1_000_000  # heartbeats every second for 11 days still fit in one delivery's range


class StatusSender:
    """Sends statuses to a response queue; thread-safe; reopens its sender after a failure."""

    def __init__(self, client: ServiceBusClient) -> None:
        self._client = client
        self._senders: dict[str, ServiceBusSender] = {}
        self._lock = threading.Lock()

    def send(self, queue: str, status: Status) -> None:
        message = ServiceBusMessage(
            encode(status),
            content_type=CONTENT_TYPE,
            message_id=f"{status.task_id}:{status.attempt}:{status.seq}",
            application_properties={"task_id": status.task_id, "state": status.state.value},
        )
        with self._lock:
            sender = self._senders.get(queue)
            try:
                if sender is None:
                    sender = self._senders[queue] = status_sender(self._client, queue)
                sender.send_messages(message)
            except (ServiceBusError, OSError) as exc:
                self._drop(queue)
                raise InfrastructureError(f"cannot send status to {queue}: {exc}") from exc

    def _drop(self, queue: str) -> None:
        sender = self._senders.pop(queue, None)
        if sender is not None:
            try:
                sender.close()
            except Exception as exc:  # noqa: BLE001 - already broken; closing is best effort
                log.debug("closing a broken sender: %r", exc)

    def close(self) -> None:
        with self._lock:
            for queue in list(self._senders):
                self._drop(queue)


class TaskReporter:
    """The statuses of one delivery of one task attempt."""

    def __init__(self, sender: StatusSender, task: Task, worker_id: str, host: HostFacts,
                 delivery_count: int | None) -> None:
        self._sender = sender
        self.task = task
        self.worker_id = worker_id
        self.host = host
        self._seq = (delivery_count or 0) * SEQ_PER_DELIVERY
        self._lock = threading.Lock()
        self.state: TaskState | None = None
        self.sent: list[Status] = []

    def heartbeat(self) -> Status | None:
        """Repeat the current state as a heartbeat; nothing before the first or after the final status."""
        with self._lock:
            if self.state is None or self.state.terminal:
                return None
            return self._send(self.state, heartbeat=True)

    def send(self, state: TaskState, **fields: Any) -> Status:
        with self._lock:  # seq order == send order, even with the heartbeat thread racing
            return self._send(state, **fields)

    def _send(self, state: TaskState, *, heartbeat: bool = False, **fields: Any) -> Status:
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
        self._sender.send(self.task.reply_to, status)
        self._seq += 1
        self.state = state
        if len(self.sent) < 1000:  # the first statuses, for tests and debugging; heartbeats are endless
            self.sent.append(status)
        log.debug("status %s seq=%d%s", state.value, status.seq, " (heartbeat)" if heartbeat else "")
        return status

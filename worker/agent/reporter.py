"""Status reports on the response queue, sent in the background, in order, batched when they queue up.

A task's steps do not wait for each status to reach Service Bus (a round trip each): ``send``
queues the status and returns; one sender thread per agent sends whatever has queued up, in
sequence order, as one batch. A status waits at most :data:`COALESCE_S` for the ones that follow
it, so a short task's ``received`` ... ``finished`` travel as ONE message batch (one round trip,
one transaction on the site) instead of each costing the broker and the site work while the task
is still being prepared. The **final** status is sent at once and waited for
(:meth:`TaskReporter.finish`), so a message is still completed only after its final status — and
every status before it — was sent. A status that cannot be sent stops the task (it is handed back,
as before); a heartbeat that cannot be sent is only logged.

The same thread sends the heartbeats of the task in hand (the current state again, ``heartbeat:
true``, every ``heartbeat_interval_s`` from ``received`` until the final status, never after), and,
while the agent has no task, its presence reports (:meth:`StatusSender.presence`): the receive loop
never waits for them, and they cost no thread.

Sequence numbers are strictly increasing per attempt, also across redeliveries of the same attempt
(a worker crashed, or a task was handed back): ``seq = delivery_count * SEQ_PER_DELIVERY + n``, so the
watcher's "ignore stale seq" rule never drops the statuses of a redelivered run.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusSender
from azure.servicebus.exceptions import ServiceBusError

from worker.agent.errors import InfrastructureError
from worker.protocol import (
    CONTENT_TYPE,
    SUBJECT_PRESENCE,
    SUBJECT_STATUS,
    HostFacts,
    Presence,
    Status,
    Task,
    TaskState,
    encode,
)
from worker.servicebus import status_sender

log = logging.getLogger(__name__)

SEQ_PER_DELIVERY = 1_000_000  # heartbeats every second for 11 days still fit in one delivery's range
BATCH_REST = "batch_rest"
MAX_BATCH = 50  # statuses are ~1 KB; a batch stays far below the 256 KB message limit
COALESCE_S = 0.05  # how long a non-final status may wait for the next ones (never the final status)
FLUSH_TIMEOUT_S = 120.0  # the SDK's own retries end long before this; a guard against a wedged link


@dataclass
class _Pending:
    queue: str
    status: Status | Presence
    reporter: TaskReporter | None  # None: a presence report (its failure is only logged)
    urgent: bool = False  # send it (and everything queued before it) now
    due: float = field(default_factory=lambda: time.monotonic() + COALESCE_S)
    done: threading.Event = field(default_factory=threading.Event)
    failed: bool = False  # set before ``done`` when it could not be sent


def _message(status: Status | Presence, rest: int) -> ServiceBusMessage:
    """``batch_rest``: how many messages of the same batch follow this one (a hint that lets the
    site's watcher take the whole batch into one transaction instead of waiting to learn of them)."""
    if isinstance(status, Presence):
        return ServiceBusMessage(
            encode(status),
            content_type=CONTENT_TYPE,
            subject=SUBJECT_PRESENCE,
            message_id=f"presence:{status.worker_id}:{status.timestamp.timestamp():.6f}:{status.seq}",
            application_properties={"worker_id": status.worker_id, "activity": status.activity.value,
                                    BATCH_REST: rest},
        )
    return ServiceBusMessage(
        encode(status),
        content_type=CONTENT_TYPE,
        subject=SUBJECT_STATUS,
        message_id=f"{status.task_id}:{status.attempt}:{status.seq}",
        application_properties={"task_id": status.task_id, "state": status.state.value, BATCH_REST: rest},
    )


PresenceSource = Callable[[], Presence | None]  # the report to send now; None: busy, nothing to send


class StatusSender:
    """Sends statuses to response queues from one background thread (thread-safe; one per agent).

    The thread also ticks the heartbeats of the reporter registered with :meth:`heartbeats`. It
    reopens its AMQP sender after a failure.
    """

    def __init__(self, client: ServiceBusClient) -> None:
        self._client = client
        self._senders: dict[str, ServiceBusSender] = {}
        self._queue: collections.deque[_Pending] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._beat: tuple[TaskReporter, float] | None = None  # (reporter, interval)
        self._next_beat = float("inf")
        self._urgent = 0  # urgent items in the queue
        self._to_open: list[str] = []  # response queues whose link to attach ahead of the first status
        self._presence: tuple[str, PresenceSource, float] | None = None  # (queue, source, interval)
        self._next_presence = float("inf")
        self.on_sent: Callable[[], None] | None = None  # after each batch sent (the agent's metrics)

    def warm(self, queue: str) -> None:
        """Attach the link to ``queue`` now, in the background: attaching costs ~0.5 s, which the
        first task's statuses would otherwise wait for. Best effort (a failure shows on the first send)."""
        with self._cond:
            self._start()
            self._to_open.append(queue)
            self._cond.notify()

    def _start(self) -> None:  # with self._cond held
        if self._closed:
            raise InfrastructureError("the status sender is closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="status-sender", daemon=True)
            self._thread.start()

    # -- called by reporters -----------------------------------------------------------------------
    def enqueue(self, item: _Pending) -> None:
        with self._cond:
            self._start()
            self._queue.append(item)
            self._urgent += item.urgent
            self._cond.notify()

    def expedite(self) -> None:
        """Send everything queued now (someone waits for it)."""
        with self._cond:
            for item in self._queue:
                item.due = 0.0
            self._cond.notify()

    def heartbeats(self, reporter: TaskReporter | None, interval_s: float = 0.0) -> None:
        """Tick ``reporter.heartbeat()`` every ``interval_s`` (None: stop ticking)."""
        with self._cond:
            self._beat = (reporter, interval_s) if reporter is not None else None
            self._next_beat = time.monotonic() + interval_s if reporter is not None else float("inf")
            self._cond.notify()

    def presence(self, queue: str, source: PresenceSource | None, interval_s: float = 0.0) -> None:
        """Send ``source()`` to ``queue`` now and every ``interval_s`` (None: stop). ``source`` returns
        None while the agent has a task (its statuses and heartbeats say it is alive)."""
        with self._cond:
            if source is None:
                self._presence, self._next_presence = None, float("inf")
            else:
                self._start()
                self._presence, self._next_presence = (queue, source, interval_s), time.monotonic()
            self._cond.notify()

    def send_presence(self, queue: str, report: Presence, timeout: float = 5.0) -> bool:
        """Send one report now (the final ``left`` one) and wait for it; False if it was not sent."""
        item = _Pending(queue, report, None, urgent=True)
        self.enqueue(item)
        return item.done.wait(timeout) and not item.failed

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued, stop the thread, close the links."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        for queue in list(self._senders):
            self._drop(queue)

    # -- the sender thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            beat: TaskReporter | None = None
            presence: tuple[str, PresenceSource] | None = None
            with self._cond:
                to_open, self._to_open = self._to_open, []
            for queue in to_open:
                self._open(queue)
            with self._cond:
                while True:
                    now = time.monotonic()
                    send = bool(self._queue) and (self._closed or self._urgent > 0 or len(self._queue) >= MAX_BATCH
                                                  or now >= self._queue[0].due)
                    if send or now >= self._next_beat or now >= self._next_presence or self._to_open:
                        break
                    if self._closed:
                        return
                    wake = min(self._next_beat, self._next_presence,
                               self._queue[0].due if self._queue else float("inf"))
                    self._cond.wait(None if wake == float("inf") else wake - now)
                if self._beat is not None and now >= self._next_beat:
                    beat, interval = self._beat
                    self._next_beat = now + interval
                if self._presence is not None and now >= self._next_presence:
                    queue, source, interval = self._presence
                    presence = (queue, source)
                    self._next_presence = now + interval
                batch = self._take_batch() if send else []
            if beat is not None:
                beat.heartbeat()  # queued; goes out with the next batch
            if presence is not None:
                self._queue_presence(*presence)
            if batch:
                self._send_batch(batch)

    def _queue_presence(self, queue: str, source: PresenceSource) -> None:
        try:
            report = source()
        except Exception:  # a bug in a report must not stop the statuses
            log.exception("building the presence report failed")
            return
        if report is not None:
            self.enqueue(_Pending(queue, report, None, urgent=True))  # idle: nothing to coalesce with

    def _take_batch(self) -> list[_Pending]:
        """Everything queued (for one response queue), up to MAX_BATCH: one send."""
        if not self._queue:
            return []
        batch: list[_Pending] = []
        while self._queue and len(batch) < MAX_BATCH and self._queue[0].queue == (batch or self._queue)[0].queue:
            item = self._queue.popleft()
            batch.append(item)
            self._urgent -= item.urgent
        return batch

    def _open(self, queue: str) -> None:
        try:
            if queue not in self._senders:
                sender = status_sender(self._client, queue)
                sender.__enter__()  # the context protocol's open: attaches the link
                self._senders[queue] = sender
        except Exception as exc:  # noqa: BLE001 - the first status retries it and reports what failed
            log.debug("attaching the sender to %s ahead of time failed: %r", queue, exc)

    def _send_batch(self, batch: list[_Pending]) -> None:
        # a failed run sends nothing more
        live = [item for item in batch if item.reporter is None or item.reporter.error is None]
        queue = batch[0].queue
        try:
            if live:
                sender = self._senders.get(queue)
                if sender is None:
                    sender = self._senders[queue] = status_sender(self._client, queue)
                messages = [_message(item.status, len(live) - 1 - i) for i, item in enumerate(live)]
                sender.send_messages(messages if len(messages) > 1 else messages[0])
                if self.on_sent is not None:
                    self.on_sent()
        except (ServiceBusError, OSError) as exc:
            self._drop(queue)
            error = InfrastructureError(f"cannot send status to {queue}: {exc}")
            for item in live:
                self._failed(item, error)
        except Exception as exc:  # a bug must not kill the sender thread (nothing would be sent after it)
            log.exception("sending statuses failed")
            for item in live:
                self._failed(item, InfrastructureError(f"cannot send status: {exc!r}"))
        finally:
            for item in batch:
                item.done.set()

    @staticmethod
    def _failed(item: _Pending, error: InfrastructureError) -> None:
        item.failed = True
        if item.reporter is not None:
            item.reporter.failed(item.status, error)  # type: ignore[arg-type]
        else:  # the next presence report says the same
            log.warning("presence report not sent: %s", error)

    def _drop(self, queue: str) -> None:
        sender = self._senders.pop(queue, None)
        if sender is not None:
            try:
                sender.close()
            except Exception as exc:  # noqa: BLE001 - already broken; closing is best effort
                log.debug("closing a broken sender: %r", exc)


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
        self._last: _Pending | None = None

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
        item = _Pending(self.task.reply_to, status, self, urgent=urgent)
        self._sender.enqueue(item)
        self._last = item
        self._seq += 1
        self.state = state
        if len(self.sent) < 1000:  # heartbeats are endless
            self.sent.append(status)
        log.debug("status %s seq=%d%s queued", state.value, status.seq, " (heartbeat)" if heartbeat else "")
        return status

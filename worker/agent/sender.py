"""Status reports on the response queue, sent in the background, in order, batched when they queue up.

A task's steps do not wait for each status to reach Service Bus (a round trip each): a reporter
(:mod:`worker.agent.reporter`) queues the status and returns; one sender thread per agent sends whatever
has queued up, in sequence order, as one batch. A status waits at most :data:`COALESCE_S` for the ones
that follow it, so a short task's ``received`` ... ``finished`` travel as ONE message (one round trip,
one message for the broker to store and deliver, one transaction and one settlement on the site; see
:func:`worker.wire.report_messages`) instead of each costing the broker and the site work while the task
is still being prepared. An urgent item (the final status, a presence report) is sent at once.

The same thread ticks the heartbeats of the task in hand and, while the agent has no task, sends its
presence reports (the schedules are :class:`worker.agent.heartbeat.Timers`): the receive loop never
waits for them, and they cost no thread.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from azure.servicebus import ServiceBusClient, ServiceBusSender
from azure.servicebus.exceptions import ServiceBusError

from worker.agent.errors import InfrastructureError
from worker.agent.heartbeat import PresenceSource, Timers
from worker.protocol import Presence, Status
from worker.servicebus import status_sender
from worker.wire import report_messages

if TYPE_CHECKING:
    from worker.agent.reporter import TaskReporter

log = logging.getLogger(__name__)

MAX_BATCH = 50  # statuses are ~1 KB; a batch stays far below the 256 KB message limit
COALESCE_S = 0.05  # how long a non-final status may wait for the next ones (never the final status)


@dataclass
class Pending:
    queue: str
    status: Status | Presence
    reporter: TaskReporter | None  # None: a presence report (its failure is only logged)
    urgent: bool = False  # send it (and everything queued before it) now
    due: float = field(default_factory=lambda: time.monotonic() + COALESCE_S)
    done: threading.Event = field(default_factory=threading.Event)
    failed: bool = False  # set before ``done`` when it could not be sent




class StatusSender:
    """Sends statuses to response queues from one background thread (thread-safe; one per agent).

    The thread also ticks the heartbeats of the reporter registered with :meth:`heartbeats`. It
    reopens its AMQP sender after a failure.
    """

    def __init__(self, client: ServiceBusClient) -> None:
        self._client = client
        self._senders: dict[str, ServiceBusSender] = {}
        self._queue: collections.deque[Pending] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._timers = Timers()  # heartbeats of the task in hand, presence reports while idle
        self._urgent = 0  # urgent items in the queue
        self._to_open: list[str] = []  # response queues whose link to attach ahead of the first status
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
            raise InfrastructureError("the status sender is closed", "servicebus_error")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="status-sender", daemon=True)
            self._thread.start()

    # -- called by reporters -----------------------------------------------------------------------
    def enqueue(self, item: Pending) -> None:
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
            self._timers.heartbeats(reporter, interval_s, time.monotonic())
            self._cond.notify()

    def presence(self, queue: str, source: PresenceSource | None, interval_s: float = 0.0) -> None:
        """Send ``source()`` to ``queue`` now and every ``interval_s`` (None: stop). ``source`` returns
        None while the agent has a task (its statuses and heartbeats say it is alive)."""
        with self._cond:
            if source is not None:
                self._start()
            self._timers.presence_reports(queue, source, interval_s, time.monotonic())
            self._cond.notify()

    def send_presence(self, queue: str, report: Presence, timeout: float = 5.0) -> bool:
        """Send one report now (the final ``left`` one) and wait for it; False if it was not sent."""
        item = Pending(queue, report, None, urgent=True)
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
            with self._cond:
                to_open, self._to_open = self._to_open, []
            for queue in to_open:
                self._open(queue)
            with self._cond:
                while True:
                    now = time.monotonic()
                    send = bool(self._queue) and (self._closed or self._urgent > 0 or len(self._queue) >= MAX_BATCH
                                                  or now >= self._queue[0].due)
                    if send or now >= self._timers.next_due() or self._to_open:
                        break
                    if self._closed:
                        return
                    wake = min(self._timers.next_due(), self._queue[0].due if self._queue else math.inf)
                    self._cond.wait(None if wake == math.inf else wake - now)
                beat, presence = self._timers.take_due(now)
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
            self.enqueue(Pending(queue, report, None, urgent=True))  # idle: nothing to coalesce with

    def _take_batch(self) -> list[Pending]:
        """Everything queued (for one response queue), up to MAX_BATCH: one send."""
        if not self._queue:
            return []
        batch: list[Pending] = []
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

    def _send_batch(self, batch: list[Pending]) -> None:
        # a failed run sends nothing more
        live = [item for item in batch if item.reporter is None or item.reporter.error is None]
        queue = batch[0].queue
        try:
            if live:
                sender = self._senders.get(queue)
                if sender is None:
                    sender = self._senders[queue] = status_sender(self._client, queue)
                messages = report_messages([item.status for item in live])  # a task's statuses: one message
                sender.send_messages(messages if len(messages) > 1 else messages[0])
                if self.on_sent is not None:
                    self.on_sent()
        except (ServiceBusError, OSError) as exc:
            self._drop(queue)
            error = InfrastructureError(f"cannot send status to {queue}: {exc}", "servicebus_error")
            for item in live:
                self._failed(item, error)
        except Exception as exc:  # a bug must not kill the sender thread (nothing would be sent after it)
            log.exception("sending statuses failed")
            for item in live:
                self._failed(item, InfrastructureError(f"cannot send status: {exc!r}", "servicebus_error"))
        finally:
            for item in batch:
                item.done.set()

    @staticmethod
    def _failed(item: Pending, error: InfrastructureError) -> None:
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

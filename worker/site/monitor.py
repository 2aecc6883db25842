"""The site's background worker: keeps every task moving towards a final state.

- tasks recorded but never sent (the send failed) are sent again;
- tasks whose worker went silent (no status for ``lost_after_s``) are marked lost: the old attempt is
  told to stop (control blob) and — an infrastructure failure (``worker_lost``) — a new attempt is
  scheduled after a back-off within the pool's retry budget, or the task fails (worker.site.failures);
- tasks dead-lettered by Service Bus or by a worker (malformed, max deliveries) are attributed the
  same way: retried within the budget, else failed with the dead-letter reason;
- waiting tasks are admitted under their pool's limits (worker.site.admission);
- each pool's queue depth and dead-letter count are refreshed (when a depth probe is given).

Retired pools (``active`` false) are left alone: their tasks are neither resent nor declared lost,
and the dead-letter receiver of a pool retired since the last tick is closed.

``lost_after_s`` must exceed the queue's lock duration: a worker that dies mid-task loses its lock and
Service Bus redelivers the SAME attempt to another worker, which is preferred to a new attempt.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from azure.servicebus import ServiceBusReceiveMode, ServiceBusReceiver, ServiceBusSubQueue
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from worker.reconnect import run_with_reconnect
from worker.site import admission, failures, transitions
from worker.site.db import retrying
from worker.site.models import ACTIVE, DeadLetter, Pool, SiteState, UTCDateTime, utcnow
from worker.site.models import Task as TaskRow
from worker.site.pools import list_pools
from worker.site.producer import Producer, SubmitError
from worker.site.queues import SiteQueues
from worker.wire import task_ref

log = logging.getLogger(__name__)

DepthProbe = Callable[[Pool], tuple[int, int] | None]  # pool -> (active messages, dead letters)


# The tick's statements, built once (it runs every second, mostly finding nothing). The scans read
# through read-only sessions: each task found is re-checked in its own write transaction.
_UNSENT = select(TaskRow.id).join(Pool, Pool.name == TaskRow.pool).where(
    TaskRow.state == SiteState.QUEUED.value, TaskRow.sent_at.is_(None),
    func.coalesce(TaskRow.not_before, TaskRow.created_at) < bindparam("b_cutoff", type_=UTCDateTime()),
    Pool.active.is_(True))
_SILENT = select(TaskRow.id).join(Pool, Pool.name == TaskRow.pool).where(
    TaskRow.state.in_(ACTIVE), TaskRow.last_heard_at < bindparam("b_cutoff", type_=UTCDateTime()),
    Pool.active.is_(True))
_STORE_DEPTH = update(Pool).where(Pool.name == bindparam("b_name")).values(
    queue_depth=bindparam("b_depth"), dead_letters=bindparam("b_dead"),
    depth_checked_at=bindparam("b_at", type_=UTCDateTime()))


class Monitor:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        producer: Producer,
        queues: SiteQueues,
        *,
        lost_after_s: float = 180.0,
        resend_after_s: float = 5.0,
        interval_s: float = 1.0,
        depth_probe: DepthProbe | None = None,
        gate: Callable[[], bool] | None = None,
    ) -> None:
        self.sessions = sessions
        self.producer = producer
        self.queues = queues
        self.lost_after_s = lost_after_s
        self.resend_after_s = resend_after_s
        self.interval_s = interval_s
        self.depth_probe = depth_probe
        self.gate = gate  # replicas: only the holder of the database lease ticks (worker.site.leases)
        self.stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._dlq: dict[str, ServiceBusReceiver] = {}

    # --- the loop ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        if self._thread:
            self._thread.join(timeout)
        for name in list(self._dlq):
            self._close_dlq(name)

    def _close_dlq(self, name: str) -> None:
        receiver = self._dlq.pop(name, None)
        if receiver is not None:
            try:
                receiver.close()
            except Exception:  # noqa: BLE001, S110 - already broken
                pass

    def _run(self) -> None:
        def ticks() -> None:
            while not self.stop_event.wait(self.interval_s):
                if self.gate is None or self.gate():  # replicas: only the lease holder ticks
                    self.tick()

        run_with_reconnect(ticks, self.stop_event, what="monitor")  # outlives a bad tick, backing off

    def tick(self, now: datetime | None = None) -> None:
        self.resend_unsent(now)
        self.handle_lost(now)
        with self.producer.read_sessions() as session:
            pools = list_pools(session)
        for name in set(self._dlq) - {pool.name for pool in pools}:  # retired: its link closes
            self._close_dlq(name)
        for pool in pools:
            if admission.limited(pool):
                admission.admit_and_send(self.sessions, pool.name, self._send_quietly)
            depth = self.refresh_depth(pool)
            # Without a probe, or when it sees dead letters, look into the dead-letter sub-queue.
            if depth is None or depth[1] > 0:
                try:
                    self.drain_dead_letters(pool)
                except Exception as exc:  # noqa: BLE001 - reopen the link on the next tick
                    log.warning("dead letters of %s: %s", pool.task_queue, exc)
                    self._close_dlq(pool.name)

    def _send_quietly(self, task_id: str) -> None:
        try:
            self.producer.send(task_id)
        except SubmitError as exc:
            log.warning("%s", exc)

    # --- steps ------------------------------------------------------------------------------------
    def resend_unsent(self, now: datetime | None = None) -> int:
        """Queued tasks not sent ``resend_after_s`` after they became due (submitted, admitted, or a
        retry's scheduled time) — their first send failed, or the process died before it."""
        cutoff = (now or utcnow()) - timedelta(seconds=self.resend_after_s)
        with self.producer.read_sessions() as session:
            ids = list(session.scalars(_UNSENT, {"b_cutoff": cutoff}))
        sent = 0
        for task_id in ids:
            try:
                self.producer.send(task_id)
                sent += 1
            except SubmitError as exc:
                log.warning("%s", exc)
        return sent

    def handle_lost(self, now: datetime | None = None) -> list[str]:
        now = now or utcnow()
        cutoff = now - timedelta(seconds=self.lost_after_s)
        with self.producer.read_sessions() as session:
            ids = list(session.scalars(_SILENT, {"b_cutoff": cutoff}))
        handled = []
        for task_id in ids:
            old = retrying(self.sessions, lambda s, t=task_id: self._mark_lost(s, t, now, cutoff))
            if old is None:
                continue
            handled.append(task_id)
            pool, attempt, requeued = old
            try:  # the silent worker may still be alive: tell it to stop
                self.producer.storage.cancel(pool, task_id, attempt, "lost: superseded by the site")
            except Exception as exc:  # noqa: BLE001
                log.warning("could not write the control blob of %s/%s: %s", task_id, attempt, exc)
            if requeued:
                try:
                    self.producer.send(task_id)
                except SubmitError as exc:
                    log.warning("%s", exc)
        return handled

    def _mark_lost(self, session: Session, task_id: str, now: datetime,
                   cutoff: datetime) -> tuple[str, int, bool] | None:
        row = session.get(TaskRow, task_id, with_for_update=True)
        if row is None or row.state not in ACTIVE or row.last_heard_at is None or row.last_heard_at >= cutoff:
            return None
        silent = (now - row.last_heard_at).total_seconds()
        reason = f"lost: no status from worker {row.worker_id} for {silent:.0f} s"
        old_attempt = row.attempt
        transitions.lose(session, row, reason, now)
        requeued = failures.infrastructure_failure(session, row, failures.Code.WORKER_LOST, reason, now)
        return row.pool, old_attempt, requeued

    def drain_dead_letters(self, pool: Pool, max_messages: int = 50) -> int:
        """Dead-lettered task messages -> failed tasks with the dead-letter reason."""
        receiver = self._dlq.get(pool.name)
        if receiver is None:  # kept open: attaching a link costs ~0.5 s, closing one ~1.5 s
            client = self.queues.client(pool.task_queue_connection_string)
            receiver = client.get_queue_receiver(pool.task_queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER,
                                                 receive_mode=ServiceBusReceiveMode.PEEK_LOCK)
            receiver.__enter__()  # opens the link now; a short receive wait must not bound the attach
            self._dlq[pool.name] = receiver
        handled = 0
        messages = receiver.receive_messages(max_message_count=max_messages, max_wait_time=0.2)
        for message in messages:
            task_id, attempt = task_ref(message)
            reason = f"dead-lettered: {message.dead_letter_reason or 'unknown reason'}"
            if message.dead_letter_error_description:
                reason += f": {message.dead_letter_error_description}"
            record = {"pool": pool.name, "queue": pool.task_queue, "message_id": message.message_id,
                      "task_id": task_id, "attempt": attempt, "reason": message.dead_letter_reason or "unknown reason",
                      "description": message.dead_letter_error_description}
            if retrying(self.sessions, lambda s, t=task_id, a=attempt, r=reason, d=record:
                        _record_dead_letter(s, t, a, r, d)):
                self._send_quietly(task_id)
            if task_id is None:
                log.warning("dead-lettered message %s on %s names no task (%s); dropped",
                            message.message_id, pool.task_queue, reason)
            receiver.complete_message(message)
            handled += 1
        return handled

    def refresh_depth(self, pool: Pool) -> tuple[int, int] | None:
        """(queue depth, dead letters) from the probe, stored on the pool; None if unknown."""
        if self.depth_probe is None:
            return None
        try:
            depth = self.depth_probe(pool)
        except Exception as exc:  # noqa: BLE001 - display data only
            log.debug("depth of %s unavailable: %s", pool.name, exc)
            return None
        if depth is None:
            return None

        def store(session: Session) -> None:
            session.connection().execute(_STORE_DEPTH, {"b_name": pool.name, "b_depth": depth[0],
                                                        "b_dead": depth[1], "b_at": utcnow()})

        retrying(self.sessions, store)
        return depth


def _record_dead_letter(session: Session, task_id: str | None, attempt: int | None, reason: str,
                        record: dict[str, Any]) -> bool:
    """Kept for the operator (list, resubmit, purge through the API); the task is retried or failed
    (True: retried, send it)."""
    session.add(DeadLetter(**record))
    if task_id is None:
        return False
    return _fail_dead_lettered(session, task_id, attempt, reason, record["reason"])


def _fail_dead_lettered(session: Session, task_id: str, attempt: int | None, reason: str,
                        dead_letter_reason: str | None = None) -> bool:
    """An infrastructure failure (Service Bus or the workers gave up on the message): retried within
    the budget (True: send it), else failed with the dead-letter reason."""
    row = session.get(TaskRow, task_id, with_for_update=True)
    if row is None or row.site_state.terminal or (attempt is not None and attempt != row.attempt):
        return False
    if row.state == SiteState.WAITING.value:
        return False
    code = failures.classify_dead_letter(dead_letter_reason)
    return failures.infrastructure_failure(session, row, code, reason, utcnow())

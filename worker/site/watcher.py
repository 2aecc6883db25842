"""Apply the workers' statuses to the database, exactly once in effect under at-least-once delivery.

Rules (see :func:`apply_status`): statuses of another attempt, of a finished task, or whose ``seq`` is
not above the last applied one are ignored; a state change adds one history row; heartbeats only
refresh ``last_heard_at``. A redelivery of the same attempt to another worker (the first one died and
its lock expired) starts a new sequence with a RECEIVED status newer than anything applied so far.
Each message is completed only after the transaction that applied it committed; a crash in between
redelivers it, and the rules above make the second application a no-op.

Presence reports (message subject ``presence``, see :func:`apply_presence`) upsert the ``workers`` row
of the pool whose response queue they came through; one older than the newest report already applied
for that worker (a duplicate, or one overtaken by a later status) changes nothing. A message with
another subject is dead-lettered (``UnknownMessageKind``); one without a subject is a status.

Tenant isolation: a report is applied only when its task (and its worker, if known and live) belongs to
the pool whose response queue delivered it; anything else is dead-lettered with reason ``WrongPool``
and counted on that pool (``pools.wrong_pool_reports``). Within a pool, a non-``received`` status from
another worker than the one holding the current delivery is dead-lettered (``WrongWorker``).

A final status is attributed (``worker.site.failures``); an infrastructure failure the worker reported
is retried as a new attempt within the pool's budget. After the commit, the ``after_commit`` hook sends
the retries and lets waiting tasks into the pools whose slots were freed (``worker.site.admission``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from azure.servicebus import ServiceBusReceivedMessage, ServiceBusReceiveMode, ServiceBusReceiver
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, sessionmaker

from worker import protocol
from worker.reconnect import run_with_reconnect
from worker.site import admission, failures, transitions
from worker.site.db import get_by_key, retrying
from worker.site.models import Pool, Worker, utcnow
from worker.site.models import Task as TaskRow
from worker.site.queries import is_live
from worker.site.queues import SiteQueues
from worker.wire import batch_rest, decode_reports, message_kind

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    APPLIED = "applied"  # state change: history row written
    HEARTBEAT = "heartbeat"  # same state, newer seq: liveness refreshed
    DUPLICATE = "duplicate"  # seq not newer (a redelivered or duplicated message)
    STALE_ATTEMPT = "stale_attempt"
    TERMINAL = "terminal"  # the task already reached a final state
    UNKNOWN_TASK = "unknown_task"
    PRESENCE = "presence"  # a worker's presence report applied
    RETRIED = "retried"  # a final infrastructure failure applied; the next attempt is queued
    WRONG_POOL = "wrong_pool"  # the task or worker belongs to another pool than the delivering queue's
    WRONG_WORKER = "wrong_worker"  # another worker than the current delivery's claims the task


WRONG_POOL = "WrongPool"
WRONG_WORKER = "WrongWorker"
REFUSED = {Outcome.UNKNOWN_TASK: "UnknownTask", Outcome.WRONG_POOL: WRONG_POOL, Outcome.WRONG_WORKER: WRONG_WORKER}


def _wrong_pool(session: Session, pool: str) -> Outcome:
    row = session.get(Pool, pool, with_for_update=True)
    if row is not None:
        row.wrong_pool_reports = (row.wrong_pool_reports or 0) + 1
    return Outcome.WRONG_POOL


def _claimed_elsewhere(worker: Worker | None, pool: str, now: datetime) -> bool:
    """The worker is known, live and belongs to another pool (a stopped or silent one may move)."""
    return worker is not None and worker.pool != pool and is_live(worker, now)


# Built once: Session.get builds its select anew on every call, which cost more than the query.
_TASK_FOR_UPDATE = select(TaskRow).where(TaskRow.id == bindparam("b_id")).with_for_update()
_WORKER = select(Worker).where(Worker.id == bindparam("b_key"))


def apply_status(session: Session, status: protocol.Status, now: datetime | None = None,
                 locked: dict[str, TaskRow | None] | None = None, pool: str | None = None) -> Outcome:
    """``locked``: rows this transaction already holds (SELECT ... FOR UPDATE), by task id — a batch
    with several statuses of one task reads and locks its row once, and writes it once at commit.
    ``pool``: whose response queue delivered it (None: trusted caller, no isolation check)."""
    now = now or utcnow()
    if locked is not None and status.task_id in locked:
        row = locked[status.task_id]
    else:
        with session.no_autoflush:  # a task row is never pending here: another task's changes wait for the commit
            row = session.scalars(_TASK_FOR_UPDATE, {"b_id": status.task_id}).first()
        if locked is not None:
            locked[status.task_id] = row
    if row is None:
        return Outcome.UNKNOWN_TASK
    # Read once and kept: an unchanged row held by nobody leaves the session's (weak) identity map,
    # and a second get would query again, flushing this task's changes first.
    worker = get_by_key(session, _WORKER, Worker, status.worker_id)
    if pool is not None and (row.pool != pool or _claimed_elsewhere(worker, pool, now)):
        return _wrong_pool(session, pool)
    if status.attempt != row.attempt:
        return Outcome.STALE_ATTEMPT
    if row.site_state.terminal:
        return Outcome.TERMINAL
    newer = status.seq > row.last_seq and (row.delivery_started_at is None or status.timestamp >= row.delivery_started_at)
    redelivery = (
        not newer and status.state is protocol.TaskState.RECEIVED and not status.heartbeat
        and row.last_status_at is not None and status.timestamp > row.last_status_at
    )
    if not (newer or redelivery):
        return Outcome.DUPLICATE
    starts_delivery = status.state is protocol.TaskState.RECEIVED and not status.heartbeat
    if row.worker_id is not None and status.worker_id != row.worker_id and not starts_delivery:
        return Outcome.WRONG_WORKER
    if status.state is protocol.TaskState.RECEIVED and not status.heartbeat:
        row.delivery_started_at = status.timestamp
    row.last_seq = status.seq
    row.last_status_at = status.timestamp
    row.last_heard_at = now
    row.worker_id = status.worker_id
    _touch_worker(session, worker, row, status, now)
    if status.state.value == row.state:
        return Outcome.HEARTBEAT
    code = failures.classify_status(status) if status.state.terminal else None
    failure = (failures.class_of(code).value, code.value) if code else None
    transitions.apply_worker_status(session, row, status, now, failure)
    if (code is not None and failures.class_of(code) is failures.FailureClass.INFRASTRUCTURE
            and failures.infrastructure_failure(session, row, code, status.reason or code.value, now,
                                                reported_by_worker=True)):
        return Outcome.RETRIED
    return Outcome.APPLIED


def _touch_worker(session: Session, worker: Worker | None, row: TaskRow, status: protocol.Status,
                  now: datetime) -> None:
    if worker is None:
        worker = Worker(id=status.worker_id, pool=row.pool, first_seen_at=now)
        session.add(worker)
    if status.host is not None:
        worker.host = status.host.model_dump(mode="json")
    worker.pool = row.pool
    worker.last_seen_at = now
    worker.current_task = None if status.state.terminal else row.id
    if worker.reported_at is None or status.timestamp >= worker.reported_at:  # newer than its last presence
        worker.reported_at = status.timestamp
        worker.activity = (protocol.Activity.IDLE if status.state.terminal else protocol.Activity.BUSY).value
        worker.left_at = None


def apply_presence(session: Session, presence: protocol.Presence, pool: str | None,
                   now: datetime | None = None) -> Outcome:
    """Upsert the worker's row from a presence report received through ``pool``'s response queue."""
    now = now or utcnow()
    worker = session.get(Worker, presence.worker_id, with_for_update=True)
    if worker is not None and pool is not None and worker.pool != pool and is_live(worker, now):
        return _wrong_pool(session, pool)
    if worker is None:
        if pool is None:
            return Outcome.DUPLICATE  # nothing to attach it to (only when called without a pool)
        worker = Worker(id=presence.worker_id, pool=pool, first_seen_at=now)
        session.add(worker)
    elif worker.reported_at is not None and presence.timestamp <= worker.reported_at:
        return Outcome.DUPLICATE  # a redelivery, or overtaken by a newer report
    worker.pool = pool or worker.pool
    worker.host = presence.host.model_dump(mode="json")
    worker.interval_s = presence.interval_s
    worker.reported_at = presence.timestamp
    worker.activity = presence.activity.value
    worker.last_seen_at = now
    worker.left_at = now if presence.activity is protocol.Activity.LEFT else None
    if presence.activity is not protocol.Activity.BUSY:
        worker.current_task = None
    return Outcome.PRESENCE


def _prefetched(receiver: ServiceBusReceiver) -> int:
    """Messages the SDK already holds for this receiver (a private attribute of azure-servicebus
    7.15's pyamqp transport; 0 when it is not there, which only costs batching)."""
    try:
        return int(receiver._handler._received_messages.qsize())  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001
        return 0


AfterCommit = Callable[[bool, set[str], list[str]], None]


@dataclass
class WatcherStats:
    received: int = 0
    applied: int = 0
    ignored: int = 0
    dead_lettered: int = 0
    wrong_pool: int = 0  # of the dead-lettered: reports refused by tenant isolation


class Watcher:
    """Consumes the response queues of every active pool (one thread per pool). :meth:`sync_pools`
    starts receivers for new pools and closes those of retired ones."""

    def __init__(self, sessions: sessionmaker[Session], queues: SiteQueues, batch: int = 100,
                 wait_s: float = 1.0, after_commit: AfterCommit | None = None) -> None:
        """``after_commit(ended, pools, retried)``: called after a batch committed in which a task
        reached a final state (``ended``) or a retry was queued, with the pools in which a slot freed
        while tasks wait for admission and the tasks whose retry was queued."""
        self.after_commit = after_commit
        self.sessions = sessions
        self.queues = queues
        self.batch = batch
        self.wait_s = wait_s
        self.stats = WatcherStats()
        self.stop_event = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._pool_stops: dict[str, threading.Event] = {}  # set: that pool's receiver closes
        self._closing: dict[str, threading.Thread] = {}  # retired pools' receivers still closing
        self._sync_lock = threading.Lock()  # the pool-sync thread and a retire request both sync
        self._stats_lock = threading.Lock()

    def sync_pools(self, close_timeout: float = 15.0) -> set[str]:
        """Start a receiver for every active pool without one; stop those of pools no longer active
        (retired), waiting up to ``close_timeout`` for their links to close. Returns the pools whose
        receivers were closed."""
        from worker.site.pools import list_pools

        with self.sessions() as session:
            pools = [(p.name, p.response_queue, p.response_queue_connection_string) for p in list_pools(session)]
        with self._sync_lock:
            if self.stop_event.is_set():
                return set()
            active = {name for name, _, _ in pools}
            retired = [name for name in self._threads if name not in active]
            for name in retired:
                self._pool_stops[name].set()
            for name, queue, cs in pools:
                thread = self._threads.get(name)
                if thread is None or not thread.is_alive():
                    stop = self._pool_stops[name] = threading.Event()
                    thread = threading.Thread(target=self._run_pool, args=(name, queue, cs, stop),
                                              name=f"watcher-{name}", daemon=True)
                    self._threads[name] = thread
                    thread.start()
            closed = set()
            for name in retired:
                thread = self._threads.pop(name)
                del self._pool_stops[name]
                thread.join(close_timeout)
                if thread.is_alive():  # still closing: it ends on its own
                    log.warning("the watcher of retired pool %s did not stop within %.0f s", name, close_timeout)
                    self._closing[name] = thread
                else:
                    log.info("pool %s retired: its response queue receiver is closed", name)
                    closed.add(name)
            return closed

    @property
    def pools(self) -> set[str]:
        """Pools with a running receiver (or one still closing)."""
        with self._sync_lock:
            threads = [*self._threads.items(), *self._closing.items()]
        return {name for name, thread in threads if thread.is_alive()}

    def stop(self, timeout: float = 10.0) -> None:
        with self._sync_lock:
            self.stop_event.set()
            for stop in self._pool_stops.values():
                stop.set()
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout)

    def _run_pool(self, pool: str, queue: str, connection_string: str | None, stop: threading.Event) -> None:
        def session() -> None:
            client = self.queues.client(connection_string)
            with client.get_queue_receiver(queue, receive_mode=ServiceBusReceiveMode.PEEK_LOCK,
                                           prefetch_count=self.batch) as receiver:
                while not stop.is_set():
                    # One message as soon as it arrives, then what is already prefetched or known to
                    # be right behind it (the rest of the agent's batch): asking the SDK for more than
                    # will come waits ~200 ms for further messages.
                    messages = receiver.receive_messages(max_message_count=1, max_wait_time=self.wait_s)
                    more = min(max(_prefetched(receiver), *map(batch_rest, messages), 0), self.batch - 1)
                    if messages and more > 0:
                        messages += receiver.receive_messages(max_message_count=more, max_wait_time=1)
                    if messages:
                        self.handle(receiver, messages, pool)

        run_with_reconnect(session, stop, what=f"watcher for pool {pool}")  # never dies

    def handle(self, receiver: ServiceBusReceiver, messages: list[ServiceBusReceivedMessage],
               pool: str | None = None) -> None:
        """Apply a batch in ONE transaction, then settle each message. ``pool``: whose response queue
        the batch came from (the pool a presence report's worker belongs to). A message may carry
        several statuses of one task attempt (``statuses``): it is settled as a whole — completed when
        none was refused, else dead-lettered with the first refusal's reason."""
        decoded: list[tuple[ServiceBusReceivedMessage, list[protocol.Status] | list[protocol.Presence]]] = []
        for message in messages:
            try:
                decoded.append((message, decode_reports(message)))
            except protocol.ProtocolError as exc:
                log.warning("dead-lettering malformed %s %s: %s", message_kind(message)[:100], message.message_id, exc)
                receiver.dead_letter_message(message, reason=exc.reason, error_description=exc.description[:1024])
                self._count(dead_lettered=1)
        reports = [report for _, carried in decoded for report in carried]

        def work(session: Session) -> tuple[list[Outcome], bool, bool]:
            locked: dict[str, TaskRow | None] = {}
            outcomes = [apply_presence(session, report, pool) if isinstance(report, protocol.Presence)
                        else apply_status(session, report, locked=locked, pool=pool) for report in reports]
            # A slot freed lets a waiting task in: whether one waits is read here, in this transaction,
            # not in one of its own after the commit (most batches find none).
            ended = any(_frees_slot(report, outcome) for report, outcome in zip(reports, outcomes, strict=True))
            return outcomes, ended, ended and pool is not None and admission.has_waiting(session, pool)  # type: ignore[arg-type]

        outcomes, ended, waiting = retrying(self.sessions, work) if reports else ([], False, False)
        # Committed: only now may a message be settled (a crash before this point redelivers it).
        freed: set[str] = {pool} if waiting and pool is not None else set()
        retried: list[str] = []
        results = iter(zip(reports, outcomes, strict=True))
        for message, carried in decoded:
            applied = [next(results) for _ in carried]
            retried += [report.task_id for report, outcome in applied  # type: ignore[union-attr]
                        if outcome is Outcome.RETRIED]
            refused = next(((report, outcome) for report, outcome in applied if outcome in REFUSED), None)
            if refused is not None:
                report, outcome = refused
                description = _refusal(outcome, report, pool)
                if len(applied) > 1:
                    description += (f" ({sum(o in APPLIED for _, o in applied)} of the message's {len(applied)} "
                                    f"statuses applied)")
                log.warning("dead-lettering %s %s: %s", REFUSED[outcome], message.message_id, description)
                receiver.dead_letter_message(message, reason=REFUSED[outcome], error_description=description[:1024])
                self._count(received=len(applied), dead_lettered=1, wrong_pool=int(outcome is Outcome.WRONG_POOL))
                continue
            receiver.complete_message(message)
            taken = sum(outcome in APPLIED for _, outcome in applied)
            self._count(received=len(applied), applied=taken, ignored=len(applied) - taken)
        if self.after_commit is not None and (ended or retried):
            try:
                self.after_commit(ended, freed, retried)
            except Exception as exc:  # noqa: BLE001 - the monitor sends what this could not
                log.warning("after a committed batch: %s", exc)

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            for key, value in deltas.items():
                setattr(self.stats, key, getattr(self.stats, key) + value)



APPLIED = (Outcome.APPLIED, Outcome.HEARTBEAT, Outcome.PRESENCE, Outcome.RETRIED)


def _frees_slot(report: protocol.Status | protocol.Presence, outcome: Outcome) -> bool:
    return isinstance(report, protocol.Status) and report.state.terminal and outcome in APPLIED


def _refusal(outcome: Outcome, report: protocol.Status | protocol.Presence, pool: str | None) -> str:
    if isinstance(report, protocol.Presence):
        return f"worker {report.worker_id!r} belongs to another pool than {pool!r}"
    if outcome is Outcome.UNKNOWN_TASK:
        return f"no task {report.task_id!r} on this site"
    if outcome is Outcome.WRONG_WORKER:
        return f"task {report.task_id!r} attempt {report.attempt} is held by another worker than {report.worker_id!r}"
    return (f"task {report.task_id!r} (worker {report.worker_id!r}) does not belong to pool {pool!r}, "
            f"whose response queue delivered the status")

"""Queue semantics, independent of the wire: enqueue, lock, settle, expire, schedule, defer.

Everything runs on one asyncio event loop (no locks). State lives in memory for speed and in the
:class:`~worker.emulator.store.Store` for durability. Changes made while handling events are
committed once per loop turn in :meth:`Broker._turn`, which then runs the callbacks waiting on that
commit (acknowledging sends and settlements), hands ready messages to consumers with credit, and
finally lets the server write the bytes out.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from worker.emulator import codec
from worker.emulator.config import QueueConfig
from worker.emulator.store import MessageRow, Store
from worker.errors import PoolError

log = logging.getLogger(__name__)

DLQ_SUFFIX = "$deadletterqueue"
REASON_MAX_DELIVERY = "MaxDeliveryCountExceeded"
REASON_TTL = "TTLExpiredException"
SWEEP_INTERVAL_S = 0.25
# Sequence numbers are reserved on disk in blocks, so a send costs no UPDATE of the queue row; after
# a crash numbering resumes above the reserved block (monotonic with a gap, as Azure allows).
SEQ_BLOCK = 1024


def now_ms() -> int:
    return int(time.time() * 1000)


class BrokerError(PoolError):
    """An operation the broker refuses; ``condition`` is the AMQP error condition the SDK maps."""

    def __init__(self, condition: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.condition = condition
        self.description = description
        self.status = status


def not_found(what: str) -> BrokerError:
    return BrokerError("amqp:not-found", what, 404)


def lock_lost(token: uuid.UUID) -> BrokerError:
    return BrokerError("com.microsoft:message-lock-lost",
                       f"The lock supplied is invalid: it expired or the message was already settled ({token}).",
                       410)


@dataclass(eq=False)
class Message:
    queue: Queue
    seq: int
    dlq: bool
    state: str  # active | scheduled | deferred
    delivery_count: int
    enqueued_ms: int
    scheduled_ms: int | None
    expires_ms: int | None
    message_id: str | None
    durable: bool
    priority: int | None
    ttl_ms: int | None
    annotations_raw: bytes | None
    bare: bytes
    lock: Lock | None = None
    _annotations: tuple[int, bytes] | None = None

    @property
    def entity(self) -> Entity:
        return self.queue.dlq if self.dlq else self.queue.main

    def client_annotations(self) -> tuple[int, bytes]:
        if self._annotations is None:
            self._annotations = codec.map_items(self.annotations_raw)
        return self._annotations

    def encode(self, lock: Lock | None) -> bytes:
        return (codec.encode_header_fast(self.delivery_count, self.durable, self.priority, self.ttl_ms)
                + codec.encode_annotations_fast(
                    self.client_annotations(), self.seq, self.enqueued_ms,
                    lock.until_ms if lock else None, lock.token if lock else None, self.scheduled_ms,
                    self.queue.name if self.dlq else None, self.state)
                + self.bare)

    def row(self) -> MessageRow:
        return MessageRow(self.queue.name, self.seq, self.dlq, self.state, self.delivery_count, self.enqueued_ms,
                          self.scheduled_ms, self.expires_ms, self.message_id, self.durable, self.priority,
                          self.ttl_ms, self.annotations_raw, self.bare)


@dataclass(eq=False)
class Lock:
    token: uuid.UUID
    message: Message
    until_ms: int
    holder: Any = None  # the consumer whose delivery carries this lock (None: deferred receive)
    timer: asyncio.TimerHandle | None = None


class Consumer(Protocol):
    """A receiving link as the broker sees it (implemented by the AMQP server)."""

    def credit(self) -> int: ...
    def offer(self, message: Message) -> None: ...
    def after_pump(self) -> None: ...


class Entity:
    """A queue or its dead-letter sub-queue: the messages, their FIFO order and the consumers."""

    def __init__(self, queue: Queue, dlq: bool) -> None:
        self.queue = queue
        self.is_dlq = dlq
        self.messages: dict[int, Message] = {}
        self._ready: list[int] = []  # heap of sequence numbers that may be deliverable
        self.consumers: list[Consumer] = []
        self._next_consumer = 0

    @property
    def path(self) -> str:
        return f"{self.queue.name}/{DLQ_SUFFIX}" if self.is_dlq else self.queue.name

    def add(self, msg: Message) -> None:
        self.messages[msg.seq] = msg
        if msg.state == "active" and msg.lock is None:
            heapq.heappush(self._ready, msg.seq)

    def make_ready(self, msg: Message) -> None:
        heapq.heappush(self._ready, msg.seq)

    def next_ready(self, now: int) -> Message | None:
        while self._ready:
            seq = heapq.heappop(self._ready)
            msg = self.messages.get(seq)
            if msg is None or msg.state != "active" or msg.lock is not None:
                continue  # stale heap entry
            if msg.expires_ms is not None and msg.expires_ms <= now and not self.is_dlq:
                self.queue.broker.expire(msg)
                continue
            return msg
        return None

    def counts(self) -> dict[str, int]:
        c = {"active": 0, "locked": 0, "scheduled": 0, "deferred": 0}
        for m in self.messages.values():
            if m.lock is not None:
                c["locked"] += 1
            else:
                c[m.state] += 1
        return c

    def pump(self) -> None:
        """Hand ready messages to consumers with credit, round-robin (competing consumers)."""
        if self.consumers and self._ready:
            now = now_ms()
            while True:
                consumer = self._pick()
                if consumer is None:
                    break
                msg = self.next_ready(now)
                if msg is None:
                    break
                consumer.offer(msg)
        for consumer in list(self.consumers):
            consumer.after_pump()

    def _pick(self) -> Consumer | None:
        n = len(self.consumers)
        for i in range(n):
            c = self.consumers[(self._next_consumer + i) % n]
            if c.credit() > 0:
                self._next_consumer = (self._next_consumer + i + 1) % n
                return c
        return None


@dataclass
class QueueStats:
    enqueued: int = 0
    deliveries: int = 0
    completed: int = 0
    abandoned: int = 0
    dead_lettered: int = 0
    deferred: int = 0
    expired: int = 0
    duplicates: int = 0


class Queue:
    def __init__(self, broker: Broker, config: QueueConfig, next_seq: int, runtime: bool) -> None:
        self.broker = broker
        self.config = config
        self.name = config.name
        self.next_seq = next_seq
        self.reserved_seq = next_seq  # next_seq as stored: numbers below it may have been handed out
        self.runtime = runtime
        self.main = Entity(self, dlq=False)
        self.dlq = Entity(self, dlq=True)
        self.dedup: dict[str, int] = {}
        self.stats = QueueStats()

    def allocate_seq(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        if self.next_seq > self.reserved_seq:
            self.reserved_seq = seq + SEQ_BLOCK
            self.broker._seq_dirty.add(self)
        return seq


@dataclass
class _TurnState:
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    pump: set = field(default_factory=set)


class Broker:
    def __init__(self, store: Store, on_turn_end: Callable[[], None] | None = None,
                 group_commit: bool | None = None) -> None:
        self.store = store
        # Commit on the loop (default: fastest on small, busy machines) or in a writer thread that
        # groups the commits of several turns (POOL_EMULATOR_GROUP_COMMIT=1; for slow disks).
        self.group_commit = (os.environ.get("POOL_EMULATOR_GROUP_COMMIT") == "1"
                             if group_commit is None else group_commit)
        self.queues: dict[str, Queue] = {}
        self.locks: dict[uuid.UUID, Lock] = {}
        self._turn_state = _TurnState()
        self._turn_scheduled = False
        self._in_turn = False
        self._seq_dirty: set[Queue] = set()
        self._expiry: list[tuple[int, str, int]] = []  # (expires_ms, queue, seq)
        self.on_turn_end = on_turn_end
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, configs: list[QueueConfig]) -> None:
        """Load the stored state, apply the config file's queues and arm the timers."""
        self._loop = asyncio.get_running_loop()
        for raw, next_seq, runtime in self.store.load_queues():
            cfg = QueueConfig.model_validate(raw)
            self.queues[cfg.name.lower()] = Queue(self, cfg, next_seq, runtime)
        for cfg in configs:
            self.put_queue(cfg, runtime=False)
        now = now_ms()
        for row in self.store.load_messages():
            q = self.queues.get(row.queue.lower())
            if q is None:
                continue
            msg = Message(q, row.seq, row.dlq, row.state, row.delivery_count, row.enqueued_ms, row.scheduled_ms,
                          row.expires_ms, row.message_id, row.durable, row.priority, row.ttl_ms, row.annotations,
                          bytes(row.bare))
            msg.entity.add(msg)
            q.next_seq = q.reserved_seq = max(q.next_seq, row.seq + 1)
            if msg.state == "scheduled":
                self._arm_schedule(msg)
            self._track_expiry(msg)
        for queue_name, message_id, expires in self.store.load_dedup():
            q = self.queues.get(queue_name.lower())
            if q is not None and expires > now:
                q.dedup[message_id] = expires
        self.store.commit()
        if self.group_commit:
            self.store.start_writer(self._loop)
        self._sweeper = self._loop.call_later(SWEEP_INTERVAL_S, self._sweep)
        for q in self.queues.values():
            self.request_pump(q.main)

    def stop(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
        for lock in list(self.locks.values()):
            if lock.timer:
                lock.timer.cancel()
        self.store.close()

    # -- the per-turn commit ---------------------------------------------------------------------
    def _schedule_turn(self) -> None:
        if not self._turn_scheduled and not self._in_turn:
            self._turn_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._turn)

    def after_commit(self, callback: Callable[[], None]) -> None:
        self._turn_state.after_commit.append(callback)
        self._schedule_turn()

    def request_pump(self, entity: Entity) -> None:
        self._turn_state.pump.add(entity)
        self._schedule_turn()

    def wake(self) -> None:
        """Make sure the end-of-turn work (writing output) runs soon."""
        self._schedule_turn()

    def _turn(self) -> None:
        self._turn_scheduled = False
        self._in_turn = True
        try:
            state, self._turn_state = self._turn_state, _TurnState()
            for q in self._seq_dirty:
                self.store.set_next_seq(q.name, q.reserved_seq)
            self._seq_dirty.clear()
            if self.on_turn_end and self.store.dirty:
                self.on_turn_end()  # send what needs no commit (settlement echoes) before the fsync
            if self.store.dirty or state.after_commit:
                # inline: committed and acknowledged right here; group commit: the writer thread
                # commits and then runs the callbacks on this loop, in order
                acknowledged = self.store.submit(state.after_commit, self._run_committed)
                if self.on_turn_end and state.after_commit and acknowledged:
                    self.on_turn_end()  # the acknowledgements first: senders wait on them, not on the pumps
            pumps = state.pump | self._turn_state.pump  # incl. what inline callbacks made ready
            self._turn_state.pump = set()
            for entity in pumps:
                entity.pump()
            if self.on_turn_end:
                self.on_turn_end()
        finally:
            self._in_turn = False
            pending = self._turn_state
            if pending.after_commit or pending.pump or self.store.dirty or self._seq_dirty:
                self._schedule_turn()

    def _run_committed(self, callbacks: list[Callable[[], None]]) -> None:
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("after-commit callback failed")
        self._schedule_turn()  # group commit: write out what the callbacks produced

    # -- queues ------------------------------------------------------------------------------
    def get_queue(self, name: str) -> Queue:
        q = self.queues.get(name.lower())
        if q is None:
            raise not_found(f"The messaging entity '{name}' could not be found.")
        return q

    def resolve(self, path: str) -> Entity:
        """``queue`` or ``queue/$deadletterqueue`` -> Entity."""
        parts = path.strip("/").split("/")
        q = self.get_queue(parts[0])
        if len(parts) == 1:
            return q.main
        if len(parts) == 2 and parts[1].lower() == DLQ_SUFFIX:
            return q.dlq
        raise not_found(f"The messaging entity '{path}' could not be found.")

    def put_queue(self, cfg: QueueConfig, runtime: bool) -> tuple[Queue, bool]:
        """Create a queue or update its properties; returns (queue, created)."""
        existing = self.queues.get(cfg.name.lower())
        if existing is not None:
            existing.config = cfg
            existing.runtime = existing.runtime and runtime
            self.store.put_queue(existing.name, cfg.model_dump(mode="json"), existing.reserved_seq,
                                 existing.runtime)
            self._schedule_turn()
            return existing, False
        q = Queue(self, cfg, 1, runtime)
        self.queues[cfg.name.lower()] = q
        self.store.put_queue(q.name, cfg.model_dump(mode="json"), q.next_seq, runtime)
        self._schedule_turn()
        return q, True

    # -- sending -----------------------------------------------------------------------------
    def enqueue(self, queue: Queue, incoming: codec.IncomingMessage, scheduled_ms: int | None = None) -> int | None:
        """Store a message (visible after this turn's commit); None when dropped as a duplicate."""
        now = now_ms()
        if incoming.message_id is None:  # Azure assigns a GUID; the JS SDK needs one to settle
            incoming.message_id = str(uuid.uuid4())
            incoming.bare = codec.with_message_id(incoming.bare, incoming.message_id)
        mid = incoming.message_id_text()
        if queue.config.requires_duplicate_detection and mid is not None:
            seen = queue.dedup.get(mid)
            if seen is not None and seen > now:
                queue.stats.duplicates += 1
                return None
            window = int(queue.config.duplicate_detection_history_time_window.total_seconds() * 1000)
            queue.dedup[mid] = now + window
            self.store.remember_id(queue.name, mid, now + window)
        ann = incoming.annotations
        if scheduled_ms is None:
            sched = ann.get(codec.symbol("x-opt-scheduled-enqueue-time"))
            if sched is not None:
                scheduled_ms = int(sched) if not hasattr(sched, "timestamp") else int(sched.timestamp() * 1000)
        if scheduled_ms is not None and scheduled_ms <= now:
            scheduled_ms = None
        # the broker sets these itself; keep the client's other annotations
        client_ann = {k: v for k, v in ann.items() if str(k) not in _BROKER_KEYS}
        seq = queue.allocate_seq()
        msg = Message(queue, seq, False, "scheduled" if scheduled_ms else "active", 0,
                      scheduled_ms or now, scheduled_ms, None, mid, incoming.durable, incoming.priority,
                      incoming.ttl_ms, codec.encode_annotations(client_ann) or None, bytes(incoming.bare))
        msg.expires_ms = self._expiry_for(msg, incoming)
        queue.main.messages[seq] = msg
        self.store.insert(msg.row())
        queue.stats.enqueued += 1
        if msg.state == "scheduled":
            self._arm_schedule(msg)
        else:
            self.after_commit(lambda: self._make_visible(msg))  # deliverable once on disk
        self._track_expiry(msg)
        return seq

    def _make_visible(self, msg: Message) -> None:
        if msg.entity.messages.get(msg.seq) is msg and msg.state == "active":
            msg.entity.make_ready(msg)
            self.request_pump(msg.entity)

    def _expiry_for(self, msg: Message, incoming: codec.IncomingMessage) -> int | None:
        default = int(msg.queue.config.default_message_ttl.total_seconds() * 1000)
        ttl = min(incoming.ttl_ms, default) if incoming.ttl_ms else default
        base = msg.enqueued_ms
        expires = base + ttl
        if incoming.absolute_expiry_ms:
            expires = min(expires, incoming.absolute_expiry_ms)
        return expires

    # -- scheduling ----------------------------------------------------------------------------
    def _arm_schedule(self, msg: Message) -> None:
        assert self._loop is not None and msg.scheduled_ms is not None
        delay = max(0.0, (msg.scheduled_ms - now_ms()) / 1000)
        self._loop.call_later(delay, self._activate, msg)

    def _activate(self, msg: Message) -> None:
        if msg.state != "scheduled" or msg.entity.messages.get(msg.seq) is not msg:
            return  # cancelled
        msg.state = "active"
        self.store.update(msg.queue.name, msg.seq, state="active")
        msg.entity.make_ready(msg)
        self.request_pump(msg.entity)

    def cancel_scheduled(self, queue: Queue, seqs: list[int]) -> None:
        for seq in seqs:
            msg = queue.main.messages.get(seq)
            if msg is None or msg.state != "scheduled":
                continue  # Azure ignores unknown numbers too
            del queue.main.messages[seq]
            self.store.delete(queue.name, seq)
        self._schedule_turn()

    # -- locks & settlement ----------------------------------------------------------------------
    def lock(self, msg: Message, holder: Any) -> Lock:
        assert self._loop is not None
        duration = msg.queue.config.lock_duration.total_seconds()
        lock = Lock(uuid.uuid4(), msg, now_ms() + int(duration * 1000), holder)
        lock.timer = self._loop.call_later(duration, self._lock_expired, lock)
        msg.lock = lock
        self.locks[lock.token] = lock
        msg.queue.stats.deliveries += 1
        return lock

    def _lock_expired(self, lock: Lock) -> None:
        if self.locks.get(lock.token) is not lock:
            return
        remaining = lock.until_ms - now_ms()
        if remaining > 0:  # renewed meanwhile
            assert self._loop is not None
            lock.timer = self._loop.call_later(remaining / 1000, self._lock_expired, lock)
            return
        self._release(lock, count_delivery=True)

    def _take_lock(self, token: uuid.UUID) -> Lock:
        lock = self.locks.pop(token, None)
        if lock is None or lock.until_ms <= now_ms():
            if lock is not None:
                self.locks[token] = lock  # let its timer release it normally
            raise lock_lost(token)
        if lock.timer:
            lock.timer.cancel()
        lock.message.lock = None
        return lock

    def _release(self, lock: Lock, count_delivery: bool) -> None:
        """Unlock a message and make it available again (abandon, lock expiry, release)."""
        self.locks.pop(lock.token, None)
        if lock.timer:
            lock.timer.cancel()
        msg = lock.message
        msg.lock = None
        if msg.entity.messages.get(msg.seq) is not msg:
            return
        if count_delivery:
            msg.delivery_count += 1
            if msg.delivery_count >= msg.queue.config.max_delivery_count and not msg.dlq:
                self.dead_letter_message(msg, REASON_MAX_DELIVERY,
                                         f"Message could not be consumed after "
                                         f"{msg.queue.config.max_delivery_count} delivery attempts.")
                return
            self.store.update(msg.queue.name, msg.seq, delivery_count=msg.delivery_count)
        msg.entity.make_ready(msg)
        self.request_pump(msg.entity)

    def renew(self, token: uuid.UUID) -> int:
        lock = self.locks.get(token)
        if lock is None or lock.until_ms <= now_ms():
            raise lock_lost(token)
        lock.until_ms = now_ms() + int(lock.message.queue.config.lock_duration.total_seconds() * 1000)
        return lock.until_ms

    def complete(self, token: uuid.UUID) -> None:
        lock = self._take_lock(token)
        msg = lock.message
        self._remove(msg)
        msg.queue.stats.completed += 1

    def abandon(self, token: uuid.UUID, count_delivery: bool = True) -> None:
        lock = self._take_lock(token)
        if count_delivery:
            lock.message.queue.stats.abandoned += 1
        self._release(lock, count_delivery=count_delivery)

    def dead_letter(self, token: uuid.UUID, reason: str | None, description: str | None) -> None:
        lock = self._take_lock(token)
        self.dead_letter_message(lock.message, reason, description)

    def defer(self, token: uuid.UUID) -> None:
        lock = self._take_lock(token)
        msg = lock.message
        msg.state = "deferred"
        msg.queue.stats.deferred += 1
        self.store.update(msg.queue.name, msg.seq, state="deferred")
        self._schedule_turn()

    def dead_letter_message(self, msg: Message, reason: str | None, description: str | None) -> None:
        if msg.dlq:  # dead-lettering a dead-lettered message leaves it where it is
            msg.state = "active"
            msg.entity.make_ready(msg)
            self.request_pump(msg.entity)
            return
        updates = {}
        if reason is not None:
            updates["DeadLetterReason"] = reason
        if description is not None:
            updates["DeadLetterErrorDescription"] = description
        if updates:
            msg.bare = codec.with_application_properties(msg.bare, updates)
        del msg.queue.main.messages[msg.seq]
        if msg.lock is not None:
            self.locks.pop(msg.lock.token, None)
            msg.lock = None
        msg.dlq = True
        msg.state = "active"
        msg.expires_ms = None
        msg.queue.dlq.add(msg)
        msg.queue.stats.dead_lettered += 1
        self.store.update(msg.queue.name, msg.seq, dlq=True, state="active", expires_ms=None, bare=msg.bare,
                          delivery_count=msg.delivery_count)
        self.request_pump(msg.queue.dlq)

    def _remove(self, msg: Message) -> None:
        msg.entity.messages.pop(msg.seq, None)
        self.store.delete(msg.queue.name, msg.seq)
        self._schedule_turn()

    def take_unlocked(self, msg: Message) -> None:
        """RECEIVE_AND_DELETE: the message leaves the queue as it is delivered."""
        msg.queue.stats.deliveries += 1
        msg.queue.stats.completed += 1
        self._remove(msg)

    def release(self, token: uuid.UUID) -> None:
        """The client gave a delivery back unprocessed (released): no delivery attempt counted."""
        lock = self.locks.get(token)
        if lock is not None:
            self._take_lock(token)
            self._release(lock, count_delivery=False)

    def drop_holder(self, holder: Any) -> None:
        """A receiving link went away: its locks stay until they expire (as in Azure), but the
        deliveries they refer to are gone, so settlement must now go through $management."""
        for lock in self.locks.values():
            if lock.holder is holder:
                lock.holder = None

    # -- deferred & peek ------------------------------------------------------------------------
    def receive_deferred(self, entity: Entity, seqs: list[int], peek_lock: bool) -> list[tuple[Message, Lock | None]]:
        out: list[tuple[Message, Lock | None]] = []
        for seq in seqs:
            msg = entity.messages.get(seq)
            if msg is None or msg.state != "deferred":
                raise BrokerError("com.microsoft:message-not-found",
                                  f"Failed to retrieve the deferred message with sequence number {seq}.", 404)
            if msg.lock is not None and self.locks.get(msg.lock.token) is msg.lock:
                raise BrokerError("amqp:not-allowed",
                                  f"The deferred message {seq} is already locked.", 400)
        for seq in seqs:
            msg = entity.messages[seq]
            if peek_lock:
                out.append((msg, self.lock(msg, holder=None)))
            else:
                msg.queue.stats.deliveries += 1
                self._remove(msg)
                out.append((msg, None))
        return out

    def peek(self, entity: Entity, from_seq: int, count: int) -> list[Message]:
        now = now_ms()
        seqs = sorted(s for s in entity.messages if s >= from_seq)
        out = []
        for s in seqs:
            msg = entity.messages[s]
            if (msg.expires_ms is not None and msg.expires_ms <= now and msg.lock is None
                    and not entity.is_dlq and msg.state == "active"):
                continue
            out.append(msg)
            if len(out) >= count:
                break
        return out

    # -- expiry ------------------------------------------------------------------------------------
    def _track_expiry(self, msg: Message) -> None:
        if msg.expires_ms is not None and not msg.dlq:
            heapq.heappush(self._expiry, (msg.expires_ms, msg.queue.name.lower(), msg.seq))

    def expire(self, msg: Message) -> None:
        msg.queue.stats.expired += 1
        if msg.queue.config.dead_lettering_on_message_expiration:
            self.dead_letter_message(msg, REASON_TTL, "The message expired and was dead lettered.")
        else:
            self._remove(msg)

    def _sweep(self) -> None:
        assert self._loop is not None
        now = now_ms()
        while self._expiry and self._expiry[0][0] <= now:
            _, qname, seq = heapq.heappop(self._expiry)
            q = self.queues.get(qname)
            msg = q.main.messages.get(seq) if q else None
            if msg is None or msg.expires_ms is None or msg.expires_ms > now:
                continue
            if msg.lock is not None or msg.state == "scheduled":
                # expires once unlocked/activated: checked again then (lazily, at delivery)
                heapq.heappush(self._expiry, (now + 1000, qname, seq))
                continue
            self.expire(msg)
        for q in self.queues.values():
            if q.dedup:
                stale = [k for k, v in q.dedup.items() if v <= now]
                for k in stale:
                    del q.dedup[k]
                if stale:
                    self.store.forget_ids_before(now)
                    self._schedule_turn()
        self._sweeper = self._loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    # -- metrics -------------------------------------------------------------------------------------
    def metrics(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for q in self.queues.values():
            c = q.main.counts()
            s = q.stats
            out[q.name] = {
                "active_messages": c["active"],
                "locked_messages": c["locked"],
                "scheduled_messages": c["scheduled"],
                "deferred_messages": c["deferred"],
                "dead_lettered_messages": len(q.dlq.messages),
                "enqueued_total": s.enqueued,
                "deliveries_total": s.deliveries,
                "completed_total": s.completed,
                "abandoned_total": s.abandoned,
                "dead_lettered_total": s.dead_lettered,
                "deferred_total": s.deferred,
                "expired_total": s.expired,
                "duplicates_total": s.duplicates,
                "consumers": len(q.main.consumers),
            }
        return out


_BROKER_KEYS = {"x-opt-sequence-number", "x-opt-enqueued-time", "x-opt-locked-until", "x-opt-lock-token",
                "x-opt-deadletter-source", "x-opt-scheduled-enqueue-time", "x-opt-message-state"}

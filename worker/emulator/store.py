"""Durable state: queues, messages and duplicate-detection history in SQLite (WAL mode).

Writes of one event-loop turn are collected and committed in one transaction with the callbacks
that acknowledge them (:meth:`Store.submit`): on the loop by default, or by a writer thread that
groups the turns piling up during one fsync (``POOL_EMULATOR_GROUP_COMMIT=1``). The callbacks run
only after the commit, in submission order. So an acknowledged operation is on disk
(``synchronous=FULL`` fsyncs the WAL on every commit) and survives a kill -9 and power loss. Locks
are deliberately not stored: after a restart every message is unlocked and delivered again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker.emulator.storelock import StoreLock

log = logging.getLogger(__name__)
Op = tuple[str, tuple]

SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,          -- as configured (case kept); lookups are case-insensitive
    config TEXT NOT NULL,           -- QueueConfig as JSON
    next_seq INTEGER NOT NULL,
    runtime INTEGER NOT NULL        -- 1 = created through the HTTP API (not in the config file)
);
CREATE TABLE IF NOT EXISTS messages (
    queue TEXT NOT NULL,
    seq INTEGER NOT NULL,
    dlq INTEGER NOT NULL,           -- 1 = in <queue>/$deadletterqueue
    state TEXT NOT NULL,            -- active | scheduled | deferred
    delivery_count INTEGER NOT NULL,
    enqueued_ms INTEGER NOT NULL,
    scheduled_ms INTEGER,
    expires_ms INTEGER,
    message_id TEXT,
    durable INTEGER NOT NULL,
    priority INTEGER,
    ttl_ms INTEGER,
    annotations BLOB,               -- the client's message-annotations section, encoded
    bare BLOB NOT NULL,             -- properties .. footer exactly as sent (plus dead-letter reason)
    PRIMARY KEY (queue, seq)
) WITHOUT ROWID;                    -- rows live in the key's B-tree: a commit writes one page, not two
CREATE TABLE IF NOT EXISTS dedup (
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (queue, message_id)
) WITHOUT ROWID;
"""


@dataclass
class MessageRow:
    queue: str
    seq: int
    dlq: bool
    state: str
    delivery_count: int
    enqueued_ms: int
    scheduled_ms: int | None
    expires_ms: int | None
    message_id: str | None
    durable: bool
    priority: int | None
    ttl_ms: int | None
    annotations: bytes | None
    bare: bytes


class Store:
    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = StoreLock(path.parent).acquire()  # a second broker on this store refuses to start
        # isolation_level=None: we issue BEGIN/COMMIT ourselves to batch writes.
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        # Held exclusively (the store lock above already keeps other brokers out): no file-lock calls
        # per transaction and the WAL index in memory instead of a shared-memory file (~10 % of a commit's CPU).
        self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(SCHEMA)
        self._ops: list[Op] = []
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.failed: BaseException | None = None

    # -- reading at start-up -------------------------------------------------------------------
    def load_queues(self) -> list[tuple[dict, int, bool]]:
        rows = self._db.execute("SELECT config, next_seq, runtime FROM queues").fetchall()
        return [(json.loads(c), n, bool(r)) for c, n, r in rows]

    def load_messages(self) -> list[MessageRow]:
        rows = self._db.execute(
            "SELECT queue, seq, dlq, state, delivery_count, enqueued_ms, scheduled_ms, expires_ms, message_id,"
            " durable, priority, ttl_ms, annotations, bare FROM messages ORDER BY queue, seq").fetchall()
        return [MessageRow(r[0], r[1], bool(r[2]), r[3], r[4], r[5], r[6], r[7], r[8], bool(r[9]), r[10], r[11],
                           r[12], r[13]) for r in rows]

    def load_dedup(self) -> list[tuple[str, str, int]]:
        return self._db.execute("SELECT queue, message_id, expires_ms FROM dedup").fetchall()

    # -- writing: collected per turn -------------------------------------------------------------
    @property
    def dirty(self) -> bool:
        return bool(self._ops)

    def put_queue(self, name: str, config: dict, next_seq: int, runtime: bool) -> None:
        self._ops.append((
            ("INSERT INTO queues (name, config, next_seq, runtime) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET config=excluded.config, runtime=excluded.runtime"),
            (name, json.dumps(config), next_seq, int(runtime))))

    def set_next_seq(self, name: str, next_seq: int) -> None:
        self._ops.append(("UPDATE queues SET next_seq=? WHERE name=?", (next_seq, name)))

    def insert(self, row: MessageRow) -> None:
        self._ops.append((
            ("INSERT INTO messages (queue, seq, dlq, state, delivery_count, enqueued_ms, scheduled_ms, expires_ms,"
            " message_id, durable, priority, ttl_ms, annotations, bare) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"),
            (row.queue, row.seq, int(row.dlq), row.state, row.delivery_count, row.enqueued_ms, row.scheduled_ms,
             row.expires_ms, row.message_id, int(row.durable), row.priority, row.ttl_ms, row.annotations,
             row.bare)))

    def update(self, queue: str, seq: int, **fields: object) -> None:
        cols = ", ".join(f"{k}=?" for k in fields)
        values = tuple(int(v) if isinstance(v, bool) else v for v in fields.values())
        self._ops.append((f"UPDATE messages SET {cols} WHERE queue=? AND seq=?", (*values, queue, seq)))

    def delete(self, queue: str, seq: int) -> None:
        self._ops.append(("DELETE FROM messages WHERE queue=? AND seq=?", (queue, seq)))

    def remember_id(self, queue: str, message_id: str, expires_ms: int) -> None:
        self._ops.append(("INSERT OR REPLACE INTO dedup (queue, message_id, expires_ms) VALUES (?,?,?)",
                          (queue, message_id, expires_ms)))

    def forget_ids_before(self, now_ms: int) -> None:
        self._ops.append(("DELETE FROM dedup WHERE expires_ms <= ?", (now_ms,)))

    def _apply(self, ops: list[Op]) -> None:
        if not ops:
            return
        if len(ops) == 1:  # one statement is its own transaction (autocommit): no BEGIN/COMMIT calls
            self._db.execute(*ops[0])
            return
        self._db.execute("BEGIN")
        try:
            i, n = 0, len(ops)
            while i < n:  # runs of the same statement (a turn's inserts, deletes) go in one call
                sql = ops[i][0]
                j = i + 1
                while j < n and ops[j][0] == sql:
                    j += 1
                if j - i == 1:
                    self._db.execute(sql, ops[i][1])
                else:
                    self._db.executemany(sql, [params for _, params in ops[i:j]])
                i = j
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def commit(self) -> None:
        """Write what is collected now, on the calling thread (start-up, shutdown)."""
        ops, self._ops = self._ops, []
        self._apply(ops)

    # -- the writer thread -----------------------------------------------------------------------
    def start_writer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._writer = threading.Thread(target=self._write_loop, name="emulator-store-writer", daemon=True)
        self._writer.start()

    def submit(self, callbacks: list[Callable[[], None]], run: Callable[[list[Callable[[], None]]], None]) -> bool:
        """Commit this turn's writes, then ``run(callbacks)`` on the event loop. True when that is done
        on return (no writer thread: committed inline); False when the writer thread does it later."""
        ops, self._ops = self._ops, []
        if self._writer is None:
            self._apply(ops)
            run(callbacks)
            return True
        self._queue.put((ops, callbacks, run))
        return False

    def _write_loop(self) -> None:
        assert self._loop is not None
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while True:  # group commit: take everything that piled up during the last fsync
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                batch.append(more)
            try:
                self._apply([op for ops, _, _ in batch for op in ops])
            except Exception as exc:  # disk full, I/O error: acknowledge nothing of these turns
                log.exception("store commit failed; %d turns are not acknowledged", len(batch))
                self.failed = exc
                continue
            for _, callbacks, run in batch:
                if callbacks:
                    try:
                        self._loop.call_soon_threadsafe(run, callbacks)
                    except RuntimeError:  # loop closed during shutdown
                        return

    def close(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join(30)
            self._writer = None
        try:
            self.commit()
        finally:
            self._db.close()
            self._lock.release()

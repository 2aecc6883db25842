"""Durable state: queues, messages and duplicate-detection history in SQLite (WAL mode).

Writes accumulate in one open transaction; the broker calls :meth:`Store.commit` once per event-loop
turn and only then acknowledges the sends and settlements of that turn, so an acknowledged operation
is on disk (``synchronous=FULL`` fsyncs the WAL on every commit) and survives a kill -9. Locks are
deliberately not stored: after a restart every message is unlocked and delivered again.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

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
);
CREATE TABLE IF NOT EXISTS dedup (
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (queue, message_id)
);
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
        # isolation_level=None: we issue BEGIN/COMMIT ourselves to batch a loop turn's writes.
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(SCHEMA)
        self._in_tx = False

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

    # -- writing (inside the turn's transaction) -------------------------------------------------
    def _begin(self) -> None:
        if not self._in_tx:
            self._db.execute("BEGIN")
            self._in_tx = True

    @property
    def dirty(self) -> bool:
        return self._in_tx

    def put_queue(self, name: str, config: dict, next_seq: int, runtime: bool) -> None:
        self._begin()
        self._db.execute(
            "INSERT INTO queues (name, config, next_seq, runtime) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET config=excluded.config, runtime=excluded.runtime",
            (name, json.dumps(config), next_seq, int(runtime)))

    def set_next_seq(self, name: str, next_seq: int) -> None:
        self._begin()
        self._db.execute("UPDATE queues SET next_seq=? WHERE name=?", (next_seq, name))

    def insert(self, row: MessageRow) -> None:
        self._begin()
        self._db.execute(
            "INSERT INTO messages (queue, seq, dlq, state, delivery_count, enqueued_ms, scheduled_ms, expires_ms,"
            " message_id, durable, priority, ttl_ms, annotations, bare) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (row.queue, row.seq, int(row.dlq), row.state, row.delivery_count, row.enqueued_ms, row.scheduled_ms,
             row.expires_ms, row.message_id, int(row.durable), row.priority, row.ttl_ms, row.annotations,
             row.bare))

    def update(self, queue: str, seq: int, **fields: object) -> None:
        self._begin()
        cols = ", ".join(f"{k}=?" for k in fields)
        values = [int(v) if isinstance(v, bool) else v for v in fields.values()]
        self._db.execute(f"UPDATE messages SET {cols} WHERE queue=? AND seq=?", (*values, queue, seq))

    def delete(self, queue: str, seq: int) -> None:
        self._begin()
        self._db.execute("DELETE FROM messages WHERE queue=? AND seq=?", (queue, seq))

    def remember_id(self, queue: str, message_id: str, expires_ms: int) -> None:
        self._begin()
        self._db.execute("INSERT OR REPLACE INTO dedup (queue, message_id, expires_ms) VALUES (?,?,?)",
                         (queue, message_id, expires_ms))

    def forget_ids_before(self, now_ms: int) -> None:
        self._begin()
        self._db.execute("DELETE FROM dedup WHERE expires_ms <= ?", (now_ms,))

    def commit(self) -> None:
        if self._in_tx:
            self._db.execute("COMMIT")
            self._in_tx = False

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self._db.close()

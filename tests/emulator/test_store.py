"""The store's SQLite file: held exclusively while open, and a store written by an earlier version
(messages in a rowid table) still loads and takes writes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from worker.emulator.store import MessageRow, Store

OLD_MESSAGES = """CREATE TABLE messages (queue TEXT NOT NULL, seq INTEGER NOT NULL, dlq INTEGER NOT NULL,
    state TEXT NOT NULL, delivery_count INTEGER NOT NULL, enqueued_ms INTEGER NOT NULL, scheduled_ms INTEGER,
    expires_ms INTEGER, message_id TEXT, durable INTEGER NOT NULL, priority INTEGER, ttl_ms INTEGER,
    annotations BLOB, bare BLOB NOT NULL, PRIMARY KEY (queue, seq))"""


def _row(seq: int) -> MessageRow:
    return MessageRow("q", seq, False, "active", 0, 1_000 + seq, None, None, f"m{seq}", True, None, None, None,
                      f"bare{seq}".encode())


def test_the_store_file_is_held_exclusively_while_open(tmp_path: Path):
    path = tmp_path / "servicebus.sqlite3"
    store = Store(path)
    store.insert(_row(1))
    store.commit()
    other = sqlite3.connect(str(path), timeout=0.1)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        other.execute("SELECT count(*) FROM messages").fetchone()
    store.close()
    assert other.execute("SELECT message_id FROM messages").fetchall() == [("m1",)]  # all of it, once closed
    other.close()


def test_a_store_with_the_earlier_rowid_table_loads_and_takes_writes(tmp_path: Path):
    path = tmp_path / "servicebus.sqlite3"
    old = sqlite3.connect(str(path))
    old.execute("PRAGMA journal_mode=WAL")
    old.execute(OLD_MESSAGES)
    old.execute("INSERT INTO messages VALUES ('q', 1, 0, 'active', 0, 1001, NULL, NULL, 'm1', 1, NULL, NULL, NULL, ?)",
                (b"bare1",))
    old.commit()
    old.close()

    store = Store(path)
    assert [(r.seq, r.message_id, r.bare) for r in store.load_messages()] == [(1, "m1", b"bare1")]
    store.insert(_row(2))
    store.insert(_row(3))
    store.delete("q", 1)
    store.commit()
    store.close()

    again = Store(path)
    assert [(r.seq, r.message_id) for r in again.load_messages()] == [(2, "m2"), (3, "m3")]
    sql = again._db.execute("SELECT sql FROM sqlite_master WHERE name = 'messages'").fetchone()[0]
    assert "WITHOUT ROWID" not in sql  # kept as it was: both layouts take the same statements
    again.close()


def test_a_new_store_keeps_messages_without_rowid(tmp_path: Path):
    store = Store(tmp_path / "servicebus.sqlite3")
    sql = store._db.execute("SELECT sql FROM sqlite_master WHERE name = 'messages'").fetchone()[0]
    store.close()
    assert "WITHOUT ROWID" in sql

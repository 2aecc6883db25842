"""Read-only sessions (worker.site.db.make_read_sessionmaker) never take SQLite's write lock: a reader
goes ahead while a writer holds it, where a read through an ordinary session waits."""

from __future__ import annotations

import threading

from sqlalchemy import event, text

from worker.site.db import make_engine, make_read_sessionmaker, make_sessionmaker, migrate, sqlite_url


def _read_in_thread(factory) -> threading.Event:  # type: ignore[no-untyped-def]
    done = threading.Event()

    def read() -> None:
        with factory() as session:
            session.execute(text("SELECT count(*) FROM pools")).scalar()
        done.set()

    threading.Thread(target=read, daemon=True).start()
    return done


def test_a_read_session_reads_while_a_writer_holds_the_lock(tmp_path):
    engine = make_engine(sqlite_url(tmp_path / "site.db"))
    migrate(engine)
    statements: list[str] = []
    # What reaches SQLite itself (the site emits BEGIN straight to the driver, not through SQLAlchemy's
    # cursor): traced on every connection opened from here on.
    engine.dispose()
    event.listen(engine, "connect", lambda dbapi_connection, _r: dbapi_connection.set_trace_callback(statements.append))
    writes, reads = make_sessionmaker(engine), make_read_sessionmaker(engine)
    try:
        with writes() as writer, writer.begin():
            writer.execute(text("SELECT 1"))  # BEGIN IMMEDIATE: this transaction holds the write lock
            read_only = _read_in_thread(reads)
            ordinary = _read_in_thread(writes)  # positive control: an ordinary session waits for the lock
            assert read_only.wait(10), "a read-only session waited for the writer"
            assert not ordinary.wait(0.5), "an ordinary session did not wait: the writer held no lock"
        assert ordinary.wait(10)  # the writer committed: the waiting one goes ahead
        assert "BEGIN" in statements and "BEGIN IMMEDIATE" in statements
    finally:
        engine.dispose()

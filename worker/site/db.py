"""Engine, sessions and migrations. SQLite by default (WAL, writers serialised with BEGIN IMMEDIATE so
concurrent watcher / monitor / submit processes never see "database is locked" mid-transaction);
PostgreSQL through psycopg 3 (``postgresql+psycopg://...``).

:func:`make_read_sessionmaker` gives sessions for reads only: on SQLite they begin with a plain
(deferred) BEGIN, so a poll or a page view never takes the write lock and never waits for, or holds
up, the watcher's transactions (WAL readers see the last committed state)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, Select, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

T = TypeVar("T")
log = logging.getLogger(__name__)
READ_ONLY = "site_read_only"  # execution option: begin without taking SQLite's write lock
MIGRATIONS = Path(__file__).parent / "migrations"


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def make_engine(url: str, **kwargs: object) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
            cursor = dbapi_connection.cursor()
            if ":memory:" not in url:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection):  # type: ignore[no-untyped-def]
            statement = "BEGIN" if connection.get_execution_options().get(READ_ONLY, False) else "BEGIN IMMEDIATE"
            # Straight to the driver (a fifth of an empty transaction's CPU less than exec_driver_sql),
            # its error wrapped as SQLAlchemy would, so `retrying` still sees a lock time-out.
            try:
                connection.connection.dbapi_connection.execute(statement)
            except sqlite3.OperationalError as exc:
                raise OperationalError(statement, None, exc) from exc

        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def make_read_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that only read (same connection pool); a flush in one is a caller's bug."""
    return sessionmaker(engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)


def migrate(url_or_engine: str | Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` with Alembic (idempotent)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if isinstance(url_or_engine, str):
        engine = make_engine(url_or_engine)
        owned = True
    else:
        engine, owned = url_or_engine, False
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        if owned:
            engine.dispose()


def when_reachable(work: Callable[[], T], wait_s: float, what: str = "database") -> T:
    """``work()`` (it connects), again while the server refuses connections, for up to ``wait_s``
    seconds: a service started with its database, or restarted while the database is in crash
    recovery, waits for it instead of exiting. 0: one try."""
    from tenacity import (
        RetryCallState,
        Retrying,
        retry_if_exception_type,
        stop_after_delay,
        wait_exponential_jitter,
    )

    def say(state: RetryCallState) -> None:
        log.warning("%s not reachable yet (%s); retrying", what, state.outcome.exception() if state.outcome else None)

    for attempt in Retrying(retry=retry_if_exception_type(OperationalError), stop=stop_after_delay(wait_s),
                            wait=wait_exponential_jitter(initial=0.2, max=5.0, jitter=0.2),
                            before_sleep=say, reraise=True):
        with attempt:
            return work()
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover


def get_by_key(session: Session, statement: Select[tuple[T]], entity: type[T], key: object) -> T | None:
    """``session.get(entity, key)`` through ``statement``, a select of ``entity`` by its primary key
    bound as ``b_key`` and built once: ``get`` builds its select anew on every call, which costs more
    than the query itself. As ``get``: the session's own object if it holds one, else one query
    (which flushes this transaction's changes first)."""
    held = session.identity_map.get(session.identity_key(entity, key))
    return held if held is not None else session.scalars(statement, {"b_key": key}).first()  # type: ignore[return-value]


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    with factory() as session, session.begin():
        yield session


def retrying(factory: sessionmaker[Session], work: Callable[[Session], T], attempts: int = 5) -> T:
    """Run ``work`` in a transaction, again if a concurrent writer got there first (optimistic
    version check) or the database was briefly locked."""
    for attempt in range(attempts):
        try:
            with transaction(factory) as session:
                return work(session)
        except (StaleDataError, OperationalError) as exc:
            if attempt == attempts - 1 or (isinstance(exc, OperationalError) and "lock" not in str(exc).lower()
                                            and "serializ" not in str(exc).lower()):
                raise
    raise AssertionError("unreachable")

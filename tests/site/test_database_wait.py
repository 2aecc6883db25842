"""A site opened while its PostgreSQL server is down (started together, or in crash recovery after a
kill) waits for it for ``database_wait_s`` and then migrates, instead of exiting; 0 fails at once."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlalchemy.exc import OperationalError

from tests.fixtures.postgres import PG_BIN, PgServer
from worker.site.service import Site, SiteSettings


@pytest.fixture
def late_postgres() -> Iterator[PgServer]:
    """A server of its own, initialised but not started."""
    if not (PG_BIN / "postgres").exists():
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN}")
    pytest.importorskip("psycopg")
    # Not under tmp_path: pytest's directory is root-only, and the server runs as ``postgres``.
    server = PgServer(Path(tempfile.mkdtemp(prefix="late-pg-")))
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


def settings(url: str, wait_s: float) -> SiteSettings:
    # Storage is not reached while the site opens; a syntactically valid string is enough.
    return SiteSettings(database_url=url, database_wait_s=wait_s,
                        storage_connection_string="UseDevelopmentStorage=true")


def test_the_site_waits_for_a_database_that_comes_up_later(late_postgres: PgServer) -> None:
    starter = threading.Timer(2.0, late_postgres.start)
    started = time.monotonic()
    starter.start()
    try:
        site = Site(settings(late_postgres.url, wait_s=60))
    finally:
        starter.join()
    try:
        assert time.monotonic() - started >= 2.0
        assert {"tasks", "pools", "task_events"} <= set(inspect(site.engine).get_table_names())  # migrated
    finally:
        site.close()


def test_without_a_wait_an_unreachable_database_fails_at_once(late_postgres: PgServer) -> None:
    started = time.monotonic()
    with pytest.raises(OperationalError, match="refused|connection failed"):
        Site(settings(late_postgres.url, wait_s=0))
    assert time.monotonic() - started < 10


def test_a_wait_has_an_end(late_postgres: PgServer) -> None:
    started = time.monotonic()
    with pytest.raises(OperationalError):
        Site(settings(late_postgres.url, wait_s=1.5))
    assert 1.5 <= time.monotonic() - started < 15

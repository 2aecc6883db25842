from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from worker.site.db import make_engine, make_sessionmaker, migrate, sqlite_url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "site.db")
    return request.getfixturevalue("postgres_database")


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    migrate(engine)
    yield make_sessionmaker(engine)
    engine.dispose()

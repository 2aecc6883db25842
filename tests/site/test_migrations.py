"""The Alembic migrations produce exactly the models' schema, and can be rolled back."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from worker.site.db import make_engine, migrate
from worker.site.models import Base


def test_migrated_schema_matches_models_and_downgrades(db_url):
    engine = make_engine(db_url)
    try:
        migrate(engine)
        migrate(engine)  # idempotent
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
        assert {"pools", "tasks", "task_events", "workers"} <= set(inspect(engine).get_table_names())
        from alembic import command
        from alembic.config import Config

        from worker.site.db import MIGRATIONS

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
        assert not {"pools", "tasks"} & set(inspect(engine).get_table_names())
    finally:
        engine.dispose()

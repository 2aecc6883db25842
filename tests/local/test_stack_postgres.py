"""The local stack with PostgreSQL as the site database instead of SQLite."""

from __future__ import annotations

import pytest

from tests.fixtures.azurite import require_azurite
from worker.local.client import wait_for
from worker.local.stack import LocalStack
from worker.site.producer import Submission


@pytest.mark.slow
def test_tasks_run_with_a_postgres_site_database(tmp_path, postgres_database):
    require_azurite()
    with LocalStack(tmp_path / "pool", workers=1, database_url=postgres_database, on_output=lambda _l: None) as stack:
        assert stack.profile.database_url == postgres_database
        ok = stack.site.producer.submit(Submission(pool="default", command=["sh", "-c", "echo pg"]))
        bad = stack.site.producer.submit(Submission(pool="default", command=["sh", "-c", "exit 4"]))
        assert wait_for(stack.site, ok.id, timeout=30).state == "finished"
        failed = wait_for(stack.site, bad.id, timeout=30)
        assert (failed.state, failed.exit_code) == ("failed", 4)
        assert stack.site.storage.read_log("default", ok.id, 1, "stdout") == b"pg\n"
    assert not (tmp_path / "pool" / "site.db").exists()

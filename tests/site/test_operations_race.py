"""Two site replicas accepting a create of the same Azure pool at the same moment: both pass the API's
"already provisioning?" check before either commits; the database's partial unique index lets only
one operation into ``provisioning`` (PostgreSQL: the second insert fails; SQLite: writers are
serialized, so the second sees the first). Real databases, the real ``start_create``."""

from __future__ import annotations

import threading
import time
import uuid

from sqlalchemy import func, select

from tests.fixtures.site_service import stack_config
from worker.site import azure_pools
from worker.site.models import PoolOperation
from worker.site.service import Site, SiteSettings


def provisioning(site: Site, name: str) -> int:
    with site.sessions() as s:
        return s.scalar(select(func.count()).select_from(PoolOperation).where(
            PoolOperation.pool == name, PoolOperation.state == azure_pools.PROVISIONING))


def test_a_create_racing_another_replicas_uncommitted_one_is_busy(db_url, azurite):
    site = Site(SiteSettings(database_url=db_url, storage_connection_string=azurite.connection_string))
    name = f"race{uuid.uuid4().hex[:8]}"
    try:
        # Replica A has inserted its operation and not committed yet.
        with site.sessions() as first, first.begin():
            first.add(PoolOperation(id=uuid.uuid4().hex[:16], pool=name, kind="azure_create",
                                    state=azure_pools.PROVISIONING, stack=name, replica="replica-a"))
            first.flush()
            outcome: list[object] = []
            second = threading.Thread(target=lambda: outcome.append(_create(site, name)))
            second.start()  # replica B: its check cannot see A's row yet
            second.join(1.0)  # B is now blocked behind A (the index entry, or SQLite's write lock)
        second.join(30)
        assert not second.is_alive()
        assert isinstance(outcome[0], azure_pools.Busy), outcome
        assert "already being provisioned" in str(outcome[0])
        assert provisioning(site, name) == 1
        # Positive control: once A's operation has ended, the same create starts.
        with site.sessions() as s, s.begin():
            s.execute(PoolOperation.__table__.update().where(PoolOperation.pool == name).values(state="failed"))
        started = _create(site, name)
        assert isinstance(started, dict) and started["state"] == azure_pools.PROVISIONING, started
        deadline = time.monotonic() + 60  # its deployment runs (and ends: here without Azure) before the site closes
        while azure_pools.get(site, started["id"])["state"] == azure_pools.PROVISIONING:
            assert time.monotonic() < deadline, "the started operation never ended"
            time.sleep(0.2)
    finally:
        site.close()


def _create(site: Site, name: str) -> object:
    try:
        return azure_pools.start_create(site, "replica-b", name, stack_config(name))
    except azure_pools.Busy as exc:
        return exc

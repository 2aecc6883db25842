"""Helpers for the agent's tests: real Azurite (and, for the loop, the real emulator)."""

from __future__ import annotations

import itertools
import uuid

import pytest

from tests.agent.harness import Pool, least_rights_queues
from worker.storage import Storage

_names = itertools.count()


@pytest.fixture(scope="session")
def storage(azurite) -> Storage:
    return Storage.from_connection_string(azurite.connection_string)


@pytest.fixture
def competition(storage: Storage) -> str:
    name = f"agent-{uuid.uuid4().hex[:8]}-{next(_names)}"
    storage.ensure_competition(name)
    return name


@pytest.fixture
def pool(emulator, queue_factory, storage, competition, tmp_path):
    """One in-process agent's world: least-rights task/response queues (10 s locks, 2 deliveries)."""
    tasks, responses = least_rights_queues(queue_factory, lock_duration="PT10S", max_delivery_count=2)
    pool = Pool(emulator, storage, competition, tasks, responses, tmp_path)
    yield pool
    pool.close()


@pytest.fixture
def fast_storage_retries(monkeypatch):
    """Storage outages surface in a second instead of ~10 s (production backoff is unchanged)."""
    from worker.agent import blobs

    monkeypatch.setattr(blobs, "RETRY", {"initial_backoff": 0.1, "increment_base": 1.1, "retry_total": 1,
                                         "random_jitter_range": 0})

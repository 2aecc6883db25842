"""Starting and stopping Azurite: its own process group, a free port, nothing left behind."""

from __future__ import annotations

import os

import pytest
from azure.storage.blob import BlobServiceClient

from tests.fixtures.azurite import require_azurite
from worker.local.azurite import AzuriteNotFound, AzuriteProcess, find_azurite
from worker.local.processes import port_open


def test_start_serves_blobs_and_stop_leaves_nothing(tmp_path):
    require_azurite()
    azurite = AzuriteProcess(tmp_path / "az").start()
    pid, port = azurite.process.pid, azurite.port
    assert os.getpgid(pid) == pid  # own process group
    client = BlobServiceClient.from_connection_string(azurite.connection_string)
    client.create_container("persisted")
    assert [c.name for c in client.list_containers()] == ["persisted"]
    client.close()
    azurite.stop()
    assert not port_open("127.0.0.1", port)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert (tmp_path / "az").is_dir()  # a given data dir is kept (it holds the stack's blobs)


def test_missing_binary_from_env_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("POOL_AZURITE_BIN", str(tmp_path / "nope"))
    with pytest.raises(AzuriteNotFound, match="POOL_AZURITE_BIN"):
        find_azurite()

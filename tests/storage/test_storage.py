"""worker.storage against a real Azurite: containers, least-rights SAS per task, logs, cancellation.

The worker's side of each SAS URL is the agent's own blob code (worker.agent.blobs), so these tests
check the rights the site grants against exactly what a worker does with them."""

from __future__ import annotations

import io
import tarfile
import uuid

import pytest
from azure.core.exceptions import HttpResponseError

from worker import storage as st
from worker.agent import blobs
from worker.agent.errors import InfrastructureError
from worker.config import competition_containers


@pytest.fixture
def store(azurite):
    s = st.Storage.from_connection_string(azurite.connection_string)
    yield s
    s.close()


@pytest.fixture
def competition() -> str:
    return f"c-{uuid.uuid4().hex[:10]}"


def _status(exc_info) -> int:
    """The HTTP status behind an SDK error, or behind the worker's InfrastructureError wrapping one."""
    error = exc_info.value
    return (error.__cause__ if isinstance(error, InfrastructureError) else error).status_code


def test_ensure_competition_creates_containers_idempotently(store, competition):
    first = store.ensure_competition(competition)
    store._known_containers.clear()
    assert store.ensure_competition(competition) == first == competition_containers(competition)
    names = {c.name for c in store.service.list_containers(name_starts_with=competition)}
    assert names == set(first.values())


def test_log_sas_can_append_but_not_read_or_touch_other_blobs(store, competition):
    store.ensure_competition(competition)
    urls = store.task_urls(competition, "t1", 1, time_limit_s=60)
    log = blobs.AppendBlob(urls.stdout_url)
    log.create()
    log.create()  # a fresh blob again: a redelivered attempt starts its log over
    log.append(b"hello\n")
    log.append(b"world\n")
    assert store.read_log(competition, "t1", 1, "stdout") == b"hello\nworld\n"
    assert store.read_log(competition, "t1", 1, "stdout", offset=6) == b"world\n"
    assert store.read_log(competition, "t1", 1, "stdout", offset=12) == b""
    assert store.read_log(competition, "t1", 1, "stderr") == b""  # not created yet
    with pytest.raises(HttpResponseError) as denied:
        blobs.client(urls.stdout_url).download_blob().readall()
    assert _status(denied) == 403
    # The same signature on another task's blob is refused.
    other = urls.stdout_url.replace("/tasks/t1/1/", "/tasks/t2/1/")
    with pytest.raises(InfrastructureError) as denied:
        blobs.AppendBlob(other).create()
    assert _status(denied) == 403


@pytest.fixture(params=["urllib3 pool", "requests session"])
def control_path(request, monkeypatch):
    """read_control's two ways to the blob: urllib3's pool, or (where the environment sets a proxy or
    netrc, which requests honours) the agent's requests session."""
    if request.param == "requests session":
        monkeypatch.setattr(blobs, "_CONTROL_POOL", None)
    else:
        assert blobs._CONTROL_POOL is not None  # no proxy or netrc in the test environment
    return request.param


def test_control_sas_is_read_only_and_reports_cancellation(store, competition, control_path):
    store.ensure_competition(competition)
    urls = store.task_urls(competition, "t1", 2, time_limit_s=60)
    assert blobs.read_control(urls.control_url) is None
    store.cancel(competition, "t1", 2, reason="user asked")
    signal = blobs.read_control(urls.control_url)
    assert signal is not None and signal.action == "cancel" and signal.reason == "user asked"
    with pytest.raises(HttpResponseError) as denied:
        blobs.client(urls.control_url).upload_blob(b"{}", overwrite=True)
    assert _status(denied) == 403
    # Attempt 1's control blob is untouched by attempt 2's cancellation.
    assert blobs.read_control(store.task_urls(competition, "t1", 1, 60).control_url) is None
    # A signature for another blob is refused with the service's answer, the SAS left out.
    forged = urls.control_url.replace("/t1/2/", "/t1/3/")
    with pytest.raises(HttpResponseError) as refused:
        blobs.read_control(forged)
    assert _status(refused) == 403 and "sig=" not in str(refused.value) and "HTTP 403" in str(refused.value)


def test_output_sas_can_write_but_not_read(store, competition, tmp_path):
    store.ensure_competition(competition)
    urls = store.task_urls(competition, "t9", 1, time_limit_s=60)
    archive = tmp_path / "output.tar.gz"
    archive.write_bytes(b"archive-bytes")
    blobs.upload_file(urls.output_url, archive)
    assert store.read_output(competition, "t9", 1) == b"archive-bytes"
    assert store.read_output(competition, "t9", 2) is None
    with pytest.raises(HttpResponseError) as denied:
        blobs.client(urls.output_url).download_blob().readall()
    assert _status(denied) == 403


def test_expired_sas_is_refused(azurite, competition):
    store = st.Storage.from_connection_string(azurite.connection_string, sas_margin_s=-3600)
    store.ensure_competition(competition)
    urls = store.task_urls(competition, "t1", 1, time_limit_s=60)
    with pytest.raises(InfrastructureError) as denied:
        blobs.AppendBlob(urls.stdout_url).create()
    assert _status(denied) == 403


def test_bundle_directory_is_content_addressed_and_read_only(store, competition, tmp_path):
    (tmp_path / "prog").mkdir()
    (tmp_path / "prog" / "main.py").write_text("print('hi')\n")
    (tmp_path / "prog" / "sub").mkdir()
    (tmp_path / "prog" / "sub" / "data.txt").write_text("x")
    first = store.upload_bundle(competition, tmp_path / "prog")
    second = store.upload_bundle(competition, tmp_path / "prog")
    assert first == second and first.blob_name == f"sha256/{first.sha256}.tar.gz"
    bundle = store.bundle_for_task(first, "program", time_limit_s=60)
    assert bundle.kind == "archive" and bundle.sha256 == first.sha256 and bundle.size == first.size
    data = blobs.client(bundle.url).download_blob().readall()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert sorted(tar.getnames()) == ["main.py", "sub", "sub/data.txt"]
        assert tar.extractfile("main.py").read() == b"print('hi')\n"
    with pytest.raises(HttpResponseError) as denied:
        blobs.client(bundle.url).upload_blob(b"tampered", overwrite=True)
    assert _status(denied) == 403


def test_bundle_with_symlink_is_rejected(store, competition, tmp_path):
    (tmp_path / "prog").mkdir()
    (tmp_path / "prog" / "link").symlink_to("/etc/passwd")
    with pytest.raises(ValueError, match="symbolic links"):
        store.upload_bundle(competition, tmp_path / "prog")


def test_missing_bundle_path_is_a_clear_error(store, competition, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        store.upload_bundle(competition, tmp_path / "nope")

"""Log streaming, the input cache and output packing against a real Azurite."""

from __future__ import annotations

import hashlib
import os
import tarfile
import time

import pytest

from worker.agent import blobs
from worker.agent.cache import InputCache
from worker.agent.errors import InfrastructureError
from worker.agent.logs import LogStreamer, truncation_marker
from worker.agent.outputs import OutputTooLarge, pack
from worker.protocol import Bundle
from worker.storage import log_blob_name


def streamer_for(storage, competition, cap=1024, interval=0.2, task="t1"):
    urls = storage.task_urls(competition, task, 1, 60)
    s = LogStreamer(blobs.AppendBlob(urls.stdout_url), blobs.AppendBlob(urls.stderr_url),
                    cap_bytes=cap, interval_s=interval)
    s.create()
    return s


def test_log_chunks_readable_while_streaming_and_truncated(storage, competition):
    s = streamer_for(storage, competition, cap=100)
    s.start()
    s.write("stdout", b"hello\n")
    deadline = time.monotonic() + 2
    while storage.read_log(competition, "t1", 1, "stdout") != b"hello\n":
        assert time.monotonic() < deadline, "log chunk not visible within 2 s"
        time.sleep(0.05)
    s.write("stdout", b"x" * 200)
    s.write("stderr", b"err\n")
    s.close()
    out = storage.read_log(competition, "t1", 1, "stdout")
    assert out == b"hello\n" + b"x" * 94 + truncation_marker("stdout", 100)
    assert storage.read_log(competition, "t1", 1, "stderr") == b"err\n"


def test_log_storage_down_is_an_infrastructure_error(storage, competition, fast_storage_retries):
    urls = storage.task_urls(competition, "t2", 1, 60)
    dead = urls.stdout_url.replace(f":{storage.service.url.split(':')[2].split('/')[0]}/", ":1/")
    with pytest.raises(InfrastructureError):
        blobs.AppendBlob(dead).create()


def upload(storage, competition, data: bytes) -> Bundle:
    stored = storage.upload_bundle(competition, data, suffix=".bin")
    return storage.bundle_for_task(stored, "in", 60)


def test_cache_lru_cap(storage, competition, tmp_path):
    kb = 1024
    a, b, c, d = (upload(storage, competition, bytes([i]) * 400 * kb) for i in range(4))
    cache = InputCache(tmp_path / "cache", max_bytes=1000 * kb)

    def use(bundle):
        with cache.open(bundle) as path:
            assert hashlib.sha256(path.read_bytes()).hexdigest() == bundle.sha256
        time.sleep(0.01)  # distinct mtimes

    use(a), use(b), use(c)  # a is evicted to make room for c
    assert {p.name for p in cache.entries()} == {b.sha256, c.sha256}
    use(b)  # a hit: b becomes the most recently used
    use(d)  # c is now the least recently used
    assert {p.name for p in cache.entries()} == {b.sha256, d.sha256}
    assert (cache.hits, cache.misses) == (1, 4)
    assert cache.size() <= 1000 * kb


def test_cache_rejects_wrong_content(storage, competition, tmp_path):
    bundle = upload(storage, competition, b"real content")
    forged = bundle.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(InfrastructureError, match="sha256"), InputCache(tmp_path, 10**6).open(forged):
        pass
    assert InputCache(tmp_path, 10**6).entries() == []


def test_cache_unreachable_storage(tmp_path, fast_storage_retries):
    bundle = Bundle(name="x", url="http://127.0.0.1:1/devstoreaccount1/c/b?sig=secret")
    started = time.monotonic()
    with pytest.raises(InfrastructureError) as info, InputCache(tmp_path, 10**6).open(bundle):
        pass
    assert "secret" not in str(info.value)
    assert time.monotonic() - started < 30


def test_output_pack_and_cap(tmp_path):
    out = tmp_path / "output"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "r.txt").write_text("result")
    (out / "link").symlink_to("/etc/passwd")
    size = pack(out, tmp_path / "o.tar.gz", max_bytes=10**6)
    with tarfile.open(tmp_path / "o.tar.gz") as tar:
        names = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile("sub/r.txt").read() == b"result"
    assert names["link"].issym() and size == (tmp_path / "o.tar.gz").stat().st_size
    import os
    (out / "big").write_bytes(os.urandom(300_000))
    with pytest.raises(OutputTooLarge):
        pack(out, tmp_path / "o2.tar.gz", max_bytes=100_000)


def test_log_blob_names_match_storage_layout():
    assert log_blob_name("t", 2, "stdout") == "tasks/t/2/stdout.log"


def test_environment_settings_are_read_only_where_they_can_matter(monkeypatch, tmp_path):
    """The storage session skips requests' per-request reading of the environment only where no proxy
    variable or netrc could change a request (Linux); otherwise it keeps it."""
    import sys

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name.lower() == "netrc":
            monkeypatch.delenv(name)
    assert blobs._environment_proxies_or_netrc() is False
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert blobs._environment_proxies_or_netrc() is True
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("no_proxy", "localhost")
    assert blobs._environment_proxies_or_netrc() is True
    monkeypatch.delenv("no_proxy")
    (tmp_path / ".netrc").write_text("machine example.invalid login a password b\n")
    assert blobs._environment_proxies_or_netrc() is True
    (tmp_path / ".netrc").unlink()
    monkeypatch.setattr(sys, "platform", "win32")  # proxies from the registry: always read
    assert blobs._environment_proxies_or_netrc() is True

"""The sandbox's curated /etc snapshot."""

from __future__ import annotations

import os
import time

from worker.execution.etc import EtcSnapshot


def test_snapshot_copies_only_listed_entries_and_refreshes(tmp_path):
    src = tmp_path / "etc"
    (src / "ssl" / "certs").mkdir(parents=True)
    (src / "ssl" / "certs" / "ca.pem").symlink_to("/usr/share/ca-certificates/x.crt")
    (src / "ld.so.cache").write_text("v1")
    (src / "pool-agent").mkdir()
    (src / "pool-agent" / "config.yaml").write_text("secret")
    (src / "shadow").write_text("root:hash")
    (src / "ssl" / "private").mkdir(mode=0o700)
    (src / "ssl" / "private" / "host.key").write_text("PRIVATE KEY")
    (src / "ssl" / "openssl.cnf").write_text("conf")
    (src / "ssl" / "secret.pem").write_text("secret")
    (src / "ssl" / "secret.pem").chmod(0o600)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "stub-resolv.conf").write_text("nameserver 127.0.0.53\n")
    (src / "resolv.conf").symlink_to(tmp_path / "run" / "stub-resolv.conf")
    snap = EtcSnapshot("/task/scratch", 65534, 65534, source=src, base=tmp_path / "snapshots")

    offline = snap.path(network=False)
    assert sorted(os.listdir(offline)) == ["group", "ld.so.cache", "passwd", "ssl"]
    assert os.readlink(offline / "ssl" / "certs" / "ca.pem") == "/usr/share/ca-certificates/x.crt"
    assert sorted(os.listdir(offline / "ssl")) == ["certs", "openssl.cnf"]  # private bits stay out
    assert "sandbox:x:65534:65534:sandbox:/task/scratch:/bin/sh" in (offline / "passwd").read_text()
    assert oct((offline / "ld.so.cache").stat().st_mode & 0o777) == "0o644"
    assert snap.path(network=False) == offline  # unchanged sources: same copy

    online = snap.path(network=True)
    assert (online / "resolv.conf").read_text() == "nameserver 127.0.0.53\n" and not (online / "resolv.conf").is_symlink()

    time.sleep(0.01)
    (src / "ld.so.cache").write_text("v2")
    refreshed = snap.path(network=False)
    assert refreshed != offline and not offline.exists()
    assert (refreshed / "ld.so.cache").read_text() == "v2"
    snap.close()
    assert not refreshed.exists() and not online.exists()


def test_unwritable_base_falls_back_to_the_temp_dir(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    blocker = tmp_path / "file"
    blocker.write_text("")
    snap = EtcSnapshot("/task/scratch", 65534, 65534, source=tmp_path / "etc", base=blocker / "sub")
    path = snap.path(network=False)
    assert (path / "hosts").exists() and not str(path).startswith(str(blocker))
    snap.close()

"""`pool node` against real OpenSSH servers on 127.0.0.1: host-key refusal and acceptance, changed keys,
authentication, timeouts, exit codes, parallel hosts, a jump host."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from worker.cli import app

pytestmark = pytest.mark.root  # sshd test servers (tests/fixtures/sshd.py)


def node(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["node", *args], env={"COLUMNS": "200"})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def base_args(user_key: Path, known_hosts: Path, *servers, timeout: float = 10) -> list[str]:
    hosts = [a for s in servers for a in ("--host", f"root@127.0.0.1:{s.port}")]
    return ["--identity", str(user_key), "--no-agent", "--known-hosts", str(known_hosts),
            "--connect-timeout", str(timeout), *hosts]


def trusted(tmp_path: Path, *servers) -> Path:
    known = tmp_path / "known_hosts"
    known.write_text("".join(s.host_key_line for s in servers))
    return known


def test_unknown_host_key_is_refused_with_its_fingerprint(sshd, user_key, tmp_path):
    known = tmp_path / "known_hosts"
    rc, out = node(*base_args(user_key, known, sshd), "exec", "--", "echo", "hello")
    assert rc == 1
    assert "unknown host key" in out and sshd.fingerprint in out and "--accept-new-host-keys" in out, out
    assert "hello" not in out
    assert not known.exists()


def test_accept_new_host_keys_records_the_key_then_it_is_trusted(sshd, user_key, tmp_path):
    known = tmp_path / "ssh" / "known_hosts"
    rc, out = node(*base_args(user_key, known, sshd), "--accept-new-host-keys", "exec", "--", "echo", "first")
    assert rc == 0 and "first" in out, out
    assert known.read_text().split() == sshd.host_key_line.split()
    rc, out = node(*base_args(user_key, known, sshd), "exec", "--", "echo", "second")
    assert rc == 0 and "second" in out, out


def test_changed_host_key_is_refused_even_with_accept_new(sshd_factory, user_key, tmp_path):
    server = sshd_factory()
    impostor_key = sshd_factory().host_key  # another server's key, recorded for this one's address
    known = tmp_path / "known_hosts"
    kind, data = impostor_key.with_suffix(".pub").read_text().split()[:2]
    known.write_text(f"[127.0.0.1]:{server.port} {kind} {data}\n")
    rc, out = node(*base_args(user_key, known, server), "--accept-new-host-keys", "exec", "--", "echo", "x")
    assert rc == 1 and "host key mismatch" in out and server.fingerprint in out, out
    assert "ssh-keygen -R" in out
    assert known.read_text().count("\n") == 1  # nothing added


def test_authentication_failure_is_one_clear_line(sshd_factory, user_key, tmp_path):
    from tests.fixtures.sshd import keygen

    other = keygen(tmp_path / "other_key")
    server = sshd_factory(authorized=[other.with_suffix(".pub").read_text()])
    rc, out = node(*base_args(user_key, trusted(tmp_path, server), server), "exec", "--", "true")
    assert rc == 1 and "authentication failed for root@127.0.0.1" in out and str(user_key) in out, out
    assert "BEGIN OPENSSH PRIVATE KEY" not in out
    # Positive control: the key it accepts works.
    rc, out = node(*base_args(other, trusted(tmp_path, server), server), "exec", "--", "echo", "in")
    assert rc == 0 and "in" in out


def test_unreachable_and_silent_hosts_time_out_with_a_reason(user_key, tmp_path):
    from worker.local.processes import free_port

    closed = free_port()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)  # accepts TCP, never says a word: the SSH handshake must time out
    try:
        t0 = time.monotonic()
        rc, out = node("--identity", str(user_key), "--no-agent", "--known-hosts", str(tmp_path / "kh"),
                       "--connect-timeout", "1", "--host", f"root@127.0.0.1:{closed}",
                       "--host", f"root@127.0.0.1:{silent.getsockname()[1]}", "exec", "--", "true")
        elapsed = time.monotonic() - t0
    finally:
        silent.close()
    assert rc == 1
    assert f"127.0.0.1:{closed}: unreachable" in out and "refused" in out, out
    assert "no SSH handshake within 1s" in out, out
    assert elapsed < 20, elapsed  # generous: bounded by the 1 s timeouts, not by TCP's minutes


def test_exec_reports_exit_codes_and_output(sshd, user_key, tmp_path):
    args = base_args(user_key, trusted(tmp_path, sshd), sshd)
    rc, out = node(*args, "exec", "--", "sh -c 'echo to-stdout; echo to-stderr >&2; exit 3'")
    assert rc == 1
    assert "to-stdout" in out and "to-stderr" in out
    assert "command failed with exit code 3: to-stderr" in out, out
    rc, out = node(*args, "exec", "--", "echo", "fine")
    assert rc == 0 and "fine" in out and "1 ok, 0 failed" in out


def test_command_timeout(sshd, user_key, tmp_path):
    args = base_args(user_key, trusted(tmp_path, sshd), sshd)
    t0 = time.monotonic()
    rc, out = node(*args, "exec", "--timeout", "1", "--", "sleep", "30")
    assert rc == 1 and "command timed out after 1s" in out, out
    assert time.monotonic() - t0 < 20


@pytest.mark.slow
def test_hosts_are_worked_on_in_parallel_up_to_forks(sshd_factory, user_key, tmp_path):
    servers = [sshd_factory() for _ in range(3)]
    args = base_args(user_key, trusted(tmp_path, *servers), *servers)
    probe = ["python3", "-c", "import time; a = time.time(); time.sleep(1.5); print('SPAN', a, time.time())"]

    def spans(forks: str) -> list[tuple[float, float]]:
        rc, out = node(*args, "--forks", forks, "exec", "--", *probe)
        assert rc == 0 and "3 ok, 0 failed" in out, out
        found = sorted((float(a), float(b)) for _, a, b in (line.split() for line in out.splitlines()
                                                            if line.startswith("SPAN ")))
        assert len(found) == 3, out
        return found

    parallel = spans("3")
    assert all(parallel[i][1] > parallel[i + 1][0] for i in range(2)), parallel  # they overlap
    serial = spans("1")
    assert all(serial[i][1] <= serial[i + 1][0] for i in range(2)), serial  # one after the other


def test_a_failing_host_does_not_stop_the_others(sshd_factory, user_key, tmp_path):
    good = sshd_factory()
    bad = sshd_factory(authorized=[])
    rc, out = node(*base_args(user_key, trusted(tmp_path, good, bad), good, bad), "exec", "--", "echo", "reached")
    assert rc == 1 and "reached" in out and "1 ok, 1 failed" in out, out
    assert f"127.0.0.1:{bad.port}: authentication failed" in out


def test_jump_host_carries_the_connection(sshd_factory, user_key, tmp_path):
    target = sshd_factory()
    bastion = sshd_factory()
    known = trusted(tmp_path, target, bastion)
    args = [*base_args(user_key, known, target), "--jump", f"root@127.0.0.1:{bastion.port}"]
    rc, out = node(*args, "exec", "--", "echo", "through the bastion")
    assert rc == 0 and "through the bastion" in out, out
    # The same through a bastion that forbids forwarding fails: the route really is the bastion.
    closed = sshd_factory(extra_config="AllowTcpForwarding no\n")
    known.write_text(known.read_text() + closed.host_key_line)
    rc, out = node(*base_args(user_key, known, target), "--jump", f"root@127.0.0.1:{closed.port}",
                   "exec", "--", "echo", "nope")
    assert rc == 1 and "via jump host" in out and "nope" not in out.replace("echo nope", ""), out
    # An untrusted bastion is refused like any host.
    rc, out = node(*base_args(user_key, trusted(tmp_path, target), target), "--jump",
                   f"root@127.0.0.1:{bastion.port}", "exec", "--", "true")
    assert rc == 1 and "jump host: unknown host key" in out, out


def test_inventory_targets_and_limit_over_ssh(sshd_factory, user_key, tmp_path):
    a, b = sshd_factory(), sshd_factory()
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(f"""
all:
  children:
    workers:
      hosts:
        gpu-1: {{ansible_host: 127.0.0.1, ansible_port: {a.port}}}
        gpu-2: {{ansible_host: 127.0.0.1, ansible_port: {b.port}}}
      vars:
        ansible_user: root
        ansible_ssh_private_key_file: {user_key}
""")
    known = trusted(tmp_path, a, b)
    common = ["-i", str(inventory), "--no-agent", "--known-hosts", str(known)]
    rc, out = node(*common, "exec", "--", "echo from $SSH_CONNECTION")
    assert rc == 0 and "2 ok, 0 failed" in out and f"127.0.0.1 {a.port}" in out and f"127.0.0.1 {b.port}" in out
    rc, out = node(*common, "--limit", "workers:!gpu-1", "exec", "--", "echo", "only")
    assert rc == 0 and "1 ok" in out and "gpu-2" in out and "gpu-1" not in out, out


def test_parallel_first_contact_records_every_key_once(sshd_factory, user_key, tmp_path):
    servers = [sshd_factory() for _ in range(4)]
    known = tmp_path / "known_hosts"
    rc, out = node(*base_args(user_key, known, *servers), "--accept-new-host-keys", "exec", "--", "true")
    assert rc == 0, out
    assert sorted(known.read_text().splitlines()) == sorted(s.host_key_line.strip() for s in servers)


def test_sessions_are_closed(sshd, user_key, tmp_path):
    before = threading.active_count()
    rc, _ = node(*base_args(user_key, trusted(tmp_path, sshd), sshd), "exec", "--", "true")
    assert rc == 0
    time.sleep(0.5)
    assert threading.active_count() <= before + 1  # no paramiko transport thread left behind


def test_streamed_output_and_interrupt(sshd, user_key, tmp_path):
    """What `logs --follow` relies on: lines arrive as they are printed, no timeout, Ctrl-C ends it."""
    from worker.node.inventory import parse_host
    from worker.node.ssh import CANCEL, NodeError, Session, SSHOptions

    options = SSHOptions(known_hosts=trusted(tmp_path, sshd), identity=user_key, use_agent=False, command_timeout=1)
    lines: list[tuple[float, str]] = []

    def on_line(text: str) -> None:
        lines.append((time.monotonic(), text))
        if len(lines) == 3:
            CANCEL.set()

    CANCEL.clear()
    try:
        with Session(parse_host(f"root@127.0.0.1:{sshd.port}"), options) as session, \
                pytest.raises(NodeError, match="interrupted"):
            session.run("for i in 1 2 3 4; do echo line $i; sleep 0.7; done; sleep 60", timeout=0, on_line=on_line)
    finally:
        CANCEL.clear()
    assert [text for _, text in lines] == ["line 1", "line 2", "line 3"]
    assert lines[2][0] - lines[0][0] > 1.0  # streamed one by one, not at the end


def test_become_runs_through_sudo_without_prompting(sshd, user_key, tmp_path):
    import shutil

    if not shutil.which("sudo"):
        pytest.skip("sudo is not installed (scripts/install-system-deps)")
    args = base_args(user_key, trusted(tmp_path, sshd), sshd)
    probe = "echo \"uid=$(id -u) it's $SUDO_USER\""  # quotes and $ survive the sudo -n sh -c wrapping
    rc, out = node(*args, "--become", "exec", "--", probe)
    assert rc == 0 and "uid=0 it's root" in out, out
    rc, out = node(*args, "exec", "--", probe)  # control: without --become, no SUDO_USER
    assert rc == 0 and "uid=0 it's" in out and "it's root" not in out, out

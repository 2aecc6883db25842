"""The adversarial suite through the real system: each attack is a submitted task, run by a real
agent (driver bwrap) of a real local stack (emulator, Azurite, site watcher). Each test asserts
the attack was contained, that the task's status names the reason, and that the SAME worker then
runs a normal task correctly.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.fixtures.azurite import require_azurite
from tests.fixtures.local_stack import supervised
from tests.sandbox.conftest import HAVE_BWRAP, IS_ROOT
from worker.local.client import wait_for
from worker.protocol import Resources
from worker.site.models import Task
from worker.site.producer import Submission

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (HAVE_BWRAP and IS_ROOT), reason="needs bubblewrap and root (cgroups, loop disks)"),
]
POOL = "default"
WORKER = f"{POOL}-w1"


@pytest.fixture(scope="module")
def stack() -> Iterator:
    from worker.local.stack import LocalStack

    require_azurite()
    # The agent's work dir must be traversable by the sandbox uid (as /var/lib/pool-agent is).
    data_dir = Path(tempfile.mkdtemp(prefix="pool-sandbox-stack-", dir="/var/tmp"))
    os.chmod(data_dir, 0o711)
    try:
        local = LocalStack(data_dir, workers=1, driver="bwrap", on_output=lambda _line: None).start(timeout=90)
        with supervised(local):
            yield local
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def run(stack, command: list[str], timeout: float = 90, **kw) -> Task:
    task_id = stack.site.producer.submit(Submission(pool=POOL, command=command, max_attempts=1, **kw)).id
    return wait_for(stack.site, task_id, timeout=timeout)


def logs(stack, task: Task, stream: str = "stdout") -> str:
    return stack.site.storage.read_log(POOL, task.id, task.attempt, stream).decode(errors="replace")


def agent_process(stack) -> psutil.Process:
    (agent,) = stack.agents[POOL]
    assert agent.alive, f"the agent died: see {agent.log_path}"
    return psutil.Process(agent.process.pid)


@pytest.fixture
def healthy(stack):
    """After the attack: the same worker (same process) runs a normal task correctly."""
    before = agent_process(stack).pid

    def check() -> None:
        program = Path(tempfile.mkdtemp())
        (program / "main.py").write_text("import pathlib\npathlib.Path('../output/answer.txt').write_text('42')\n"
                                         "print('normal task ok')\n")
        task = run(stack, ["python3", "../program/main.py"], program=program, time_limit_s=60)
        shutil.rmtree(program)
        assert (task.state, task.exit_code, task.worker_id) == ("finished", 0, WORKER), task.reason
        assert logs(stack, task) == "normal task ok\n"
        with tarfile.open(fileobj=io.BytesIO(stack.site.storage.read_output(POOL, task.id, 1))) as tar:
            assert tar.extractfile("answer.txt").read() == b"42"
        assert agent_process(stack).pid == before

    return check


def test_fork_bomb(stack, healthy):
    task = run(stack, ["sh", "-c", "bomb() { bomb | bomb & }; bomb; sleep 60"], time_limit_s=60)
    assert (task.state, task.kill_reason) == ("failed", "processes"), task.reason
    assert "process limit" in task.reason
    healthy()


def test_memory_hog(stack, healthy):
    task = run(stack, ["python3", "-c", "x = b'x' * (800 * 2**20); print('survived')"],
               resources=Resources(memory_mb=100))
    assert (task.state, task.kill_reason) == ("failed", "memory"), task.reason
    assert "memory limit 100 MiB" in task.reason and "survived" not in logs(stack, task)
    healthy()


def test_scratch_disk_fill(stack, healthy):
    task = run(stack, ["sh", "-c", "dd if=/dev/zero of=fill bs=1M count=4096; sleep 60"], resources=Resources(disk_mb=32))
    assert (task.state, task.kill_reason) == ("failed", "disk"), task.reason
    healthy()


def test_one_gigabyte_stdout_flood(stack, healthy):
    task = run(stack, ["sh", "-c", "head -c 1G /dev/zero | tr '\\0' x"], timeout=180)
    assert (task.state, task.kill_reason) == ("failed", "output"), task.reason
    stored = stack.site.storage.read_log(POOL, task.id, 1, "stdout")
    assert len(stored) < 128 * 1024**2  # the log stops at its cap
    healthy()


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A server on every host address: loopback (like the emulator and Azurite) and the others."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))
    srv.listen(8)
    yield srv.getsockname()[1]
    srv.close()


CONNECT = """
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close(); print(target, "CONNECTED")
    except OSError as e:
        print(target, "refused", e.errno)
"""


def test_network_egress_and_the_local_stack_on_loopback(stack, host_listener, healthy):
    profile = stack.profile
    targets = [f"127.0.0.1:{profile.emulator.port}", f"127.0.0.1:{profile.emulator.http_port}",
               f"127.0.0.1:{stack.azurite.port}", f"127.0.0.1:{host_listener}", "1.1.1.1:443",
               "169.254.169.254:80"]
    for entries in psutil.net_if_addrs().values():
        targets += [f"{e.address}:{host_listener}" for e in entries
                    if e.family == socket.AF_INET and not e.address.startswith("127.")]
    socket.create_connection(("127.0.0.1", profile.emulator.port), timeout=2).close()  # control: it listens
    task = run(stack, ["python3", "-c", CONNECT, *targets])
    assert task.state == "finished", task.reason
    out = logs(stack, task)
    assert "CONNECTED" not in out and len(out.splitlines()) == len(targets), out
    healthy()


def test_agent_config_credentials_and_cache_are_invisible(stack, healthy):
    # A first task leaves an input in the worker's cache.
    data = Path(tempfile.mkdtemp())
    (data / "secret-input.txt").write_text("cached secret of another submission")
    first = run(stack, ["true"], inputs={"private": data})
    assert first.state == "finished"
    shutil.rmtree(data)
    home = stack.data_dir / "agents" / WORKER
    secrets = [home / "config.yaml", home / "cache", home / "work", stack.data_dir / "keys",
               stack.data_dir / "profile.yaml", stack.data_dir / "emulator.yaml", stack.data_dir / "site.db",
               Path("/root"), Path("/etc/shadow")]
    probe = """
import os, sys
for path in sys.argv[1:]:
    try:
        content = open(path).read(200) if os.path.isfile(path) else os.listdir(path)
        print(path, "READABLE", content)
    except OSError as e:
        print(path, "hidden", e.errno)
print("env", sorted(k for k in os.environ if "CONNECTION" in k or "KEY" in k or "SAS" in k))
print("task", sorted(os.listdir("/task")), sorted(os.listdir("/task/inputs")))
"""
    task = run(stack, ["python3", "-c", probe, *map(str, secrets)])
    out = logs(stack, task)
    assert task.state == "finished", task.reason
    assert "READABLE" not in out and "secret" not in out.replace("secret-input", ""), out
    assert "env []" in out and "task ['inputs', 'output', 'program', 'scratch'] []" in out
    assert (home / "config.yaml").read_text().count("connection_string") >= 1  # control: it holds secrets
    healthy()


def test_writing_outside_scratch(stack, healthy):
    program = Path(tempfile.mkdtemp())
    (program / "run.sh").write_text(
        "for t in ../program/run.sh ../program/new ../inputs/x /usr/evil /etc/evil /evil /task/evil; do\n"
        "  (echo pwned > $t) 2>/dev/null && echo \"WROTE $t\"\ndone\necho done\n")
    task = run(stack, ["sh", "../program/run.sh"], program=program)
    shutil.rmtree(program)
    assert task.state == "finished" and logs(stack, task) == "done\n", logs(stack, task)
    assert not Path("/usr/evil").exists() and not Path("/evil").exists()
    healthy()


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _member(name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


@pytest.mark.parametrize("member", [
    _member("../../../escaped.txt"),
    _member("/abs-escaped.txt"),
    _member("passwd", kind=tarfile.SYMTYPE, link="/etc/passwd"),
    _member("up", kind=tarfile.SYMTYPE, link="../../../../"),
], ids=["dotdot", "absolute", "symlink-out", "symlink-up"])
def test_path_traversal_and_symlinks_in_an_input_archive(stack, healthy, member):
    stored = stack.site.storage.upload_bundle(POOL, _tar([_member("ok.txt"), member]))
    task = run(stack, ["cat", "../inputs/data/ok.txt"], inputs={"data": stored})
    assert task.state == "failed" and task.kill_reason is None
    assert "bundle data" in task.reason and member[0].name in task.reason, task.reason
    work = stack.data_dir / "agents" / WORKER / "work"
    assert not list(work.rglob("escaped.txt")) and not Path("/abs-escaped.txt").exists()
    healthy()


def test_symlink_inside_the_archive_stays_inside(stack, healthy):
    stored = stack.site.storage.upload_bundle(POOL, _tar([_member("ok.txt", b"fine"),
                                                          _member("alias", kind=tarfile.SYMTYPE, link="ok.txt")]))
    task = run(stack, ["cat", "../inputs/data/alias"], inputs={"data": stored})
    assert task.state == "finished" and logs(stack, task) == "fine"
    healthy()


def test_double_fork_to_outlive_the_time_limit(stack, healthy):
    marker = f"{uuid.uuid4().int % 10**6}.75"
    script = f"setsid sh -c 'sleep {marker}' &\n(nohup sleep {marker} >/dev/null 2>&1 &)\nsleep {marker}\n"
    task = run(stack, ["sh", "-c", script], time_limit_s=2)
    assert (task.state, task.kill_reason) == ("timed_out", "time"), task.reason
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []
    healthy()


def test_daemon_left_behind_by_a_finished_task(stack, healthy):
    marker = f"{uuid.uuid4().int % 10**6}.125"
    task = run(stack, ["sh", "-c", f"setsid sh -c 'sleep {marker}' </dev/null >/dev/null 2>&1 & echo bye"])
    assert task.state == "finished"
    assert [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])] == []
    healthy()


def test_signalling_and_ptracing_the_agent(stack, healthy):
    agent_pid = agent_process(stack).pid
    probe = """
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
pid = int(sys.argv[1])
for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP):
    try:
        os.kill(pid, sig); print("SIGNALLED", sig)
    except OSError as e:
        print("kill", e.errno)
print("ptrace", libc.ptrace(16, pid, None, None), ctypes.get_errno())
try:
    os.kill(-1, signal.SIGKILL)
except OSError as e:
    print("kill -1", e.errno)
"""
    task = run(stack, ["python3", "-c", probe, str(agent_pid)])
    out = logs(stack, task)
    assert "SIGNALLED" not in out and "ptrace 0" not in out, out
    assert agent_process(stack).status() != psutil.STATUS_STOPPED
    healthy()


def test_suid_attempt(stack, healthy):
    program = Path(tempfile.mkdtemp())
    shutil.copy("/usr/bin/id", program / "suid-id")
    os.chmod(program / "suid-id", 0o4755)
    suid_host = [p for p in ("/usr/bin/su", "/usr/bin/passwd", "/usr/bin/newgrp", "/usr/bin/mount") if Path(p).exists()]
    script = "../program/suid-id -u; ls -l ../program/suid-id | cut -c1-10\n"
    script += "".join(f"stat -c '%A %n' {p}\n" for p in suid_host)
    script += "python3 -c 'import os; print(\"euid\", os.geteuid())'\n"
    task = run(stack, ["sh", "-c", script], program=program)
    shutil.rmtree(program)
    out = logs(stack, task).splitlines()
    assert out[0] == "65534"  # never root, whatever the bundle says
    assert out[1] == "-r-xr-xr-x"  # the agent stripped the setuid bit while extracting
    assert "euid 65534" in out
    healthy()


def test_sleeping_past_the_time_limit(stack, healthy):
    task = run(stack, ["sh", "-c", "trap '' TERM INT; sleep 300"], time_limit_s=2)
    assert (task.state, task.kill_reason) == ("timed_out", "time"), task.reason
    assert "time limit exceeded" in task.reason
    healthy()


def test_closing_stdout_and_writing_to_the_tty(stack, healthy):
    script = "exec 1>&-; echo escaped > /dev/tty || echo 'no tty' >&2; echo still here >&2; exit 0"
    task = run(stack, ["sh", "-c", script])
    assert task.state == "finished", task.reason
    err = logs(stack, task, "stderr")
    assert "no tty" in err and "still here" in err
    healthy()


def test_output_symlink_to_the_agents_config_uploads_no_secret(stack, healthy):
    config = stack.data_dir / "agents" / WORKER / "config.yaml"
    script = f"ln -s {config} ../output/config.yaml; ln -s /etc/shadow ../output/shadow; echo x > ../output/real.txt"
    task = run(stack, ["sh", "-c", script])
    assert task.state == "finished", task.reason
    with tarfile.open(fileobj=io.BytesIO(stack.site.storage.read_output(POOL, task.id, 1))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["config.yaml"].issym() and members["config.yaml"].linkname == str(config)
        assert members["shadow"].issym()
        assert tar.extractfile("real.txt").read() == b"x\n"
    healthy()

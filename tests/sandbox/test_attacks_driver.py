"""Attacks a hostile submission can try, run through the bwrap driver and the real supervisor.

Each test asserts the attack was contained, that the result names the reason when a limit stopped
it, and that the same driver then runs a normal task correctly. Where an attack is only harmful
because of what the host holds, a control shows the attack works outside the sandbox, so the test
can fail. (The same attacks are submitted through the agent and the local stack in
``test_attacks_agent.py``.)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tests.sandbox.conftest import needs_bwrap, needs_root, run_spec
from worker.execution.bwrap import BwrapDriver
from worker.protocol import KillReason

pytestmark = [needs_bwrap, needs_root]

PY = "/usr/bin/python3"


@pytest.fixture(scope="module")
def driver(bwrap_driver) -> BwrapDriver:
    if bwrap_driver.cgroup_host.version == "none":
        pytest.skip(f"no usable cgroups here: {bwrap_driver.cgroup_host.why}")
    return bwrap_driver


@pytest.fixture
def healthy(driver, make_task):
    """After the attack: the same driver runs a normal task and returns its output."""

    def check() -> None:
        task = make_task(name=f"normal-{uuid.uuid4().hex[:6]}")
        (task.program / "main.py").write_text(
            "import os, sys\nopen(os.path.join(sys.argv[1], 'answer.txt'), 'w').write(str(6 * 7))\nprint('ok')\n")
        ran = run_spec(driver, task.spec([PY, "/task/program/main.py", "../output"]))
        assert ran.result.succeeded, (ran.result, ran.err)
        assert ran.out == "ok\n"
        assert (task.output / "answer.txt").read_text() == "42"

    return check


def _marked_processes(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in (proc.info["cmdline"] or [])):
            found.append(proc)
    return found


def test_fork_bomb(driver, make_task, healthy):
    task = make_task("bomb() { bomb | bomb & }; bomb; sleep 30\n")
    ran = run_spec(driver, task.spec(["/bin/sh", "/task/program/main.sh"], max_processes=32, wall_time_s=20))
    assert ran.result.kill_reason is KillReason.PROCESSES, ran.result
    assert "process limit 32" in (ran.result.detail or "")
    assert ran.result.duration_s < 15
    healthy()


def test_memory_hog(driver, make_task, healthy):
    task = make_task()
    argv = [PY, "-c", "x = b'x' * (600 * 2**20); print('survived', len(x))"]
    ran = run_spec(driver, task.spec(argv, memory_bytes=100 * 1024**2))
    assert ran.result.kill_reason is KillReason.MEMORY, ran.result
    assert "survived" not in ran.out
    healthy()


def test_memory_hog_in_a_child_process(driver, make_task, healthy):
    task = make_task()
    script = "import subprocess, sys, time\n" \
             "subprocess.run([sys.executable, '-c', \"x = b'x' * (600 * 2**20)\"])\ntime.sleep(30)\n"
    ran = run_spec(driver, task.spec([PY, "-c", script], memory_bytes=100 * 1024**2))
    assert ran.result.kill_reason is KillReason.MEMORY, ran.result
    assert ran.result.duration_s < 15
    healthy()


def test_scratch_disk_fill(driver, make_task, healthy):
    task = make_task()
    before = shutil.disk_usage(task.root).free
    ran = run_spec(driver, task.spec(["/bin/sh", "-c", "dd if=/dev/zero of=fill bs=1M count=1024; sleep 30"],
                                     scratch_bytes=32 * 1024**2))
    assert ran.result.kill_reason is KillReason.DISK, ran.result
    assert ran.result.duration_s < 15
    assert not (task.scratch / "fill").exists()  # it lived on the task's own capped filesystem
    assert shutil.disk_usage(task.root).free > before - 64 * 1024**2
    healthy()


def test_output_dir_fill_shares_the_cap(driver, make_task, healthy):
    task = make_task()
    ran = run_spec(driver, task.spec(["/bin/sh", "-c", "dd if=/dev/zero of=../output/fill bs=1M count=1024"],
                                     scratch_bytes=32 * 1024**2))
    assert ran.result.kill_reason is KillReason.DISK, ran.result
    assert (task.output / "fill").stat().st_size <= 32 * 1024**2
    healthy()


def test_tmp_fill_is_capped_and_private(driver, make_task, healthy):
    task = make_task()
    ran = run_spec(driver, task.spec(["/bin/sh", "-c", ("dd if=/dev/zero of=/tmp/fill bs=1M count=256 2>&1; "
                                      "stat -c %s /tmp/fill")], tmp_bytes=8 * 1024**2))
    assert "No space left on device" in ran.out
    assert int(ran.out.split()[-1]) <= 8 * 1024**2
    assert not Path("/tmp/fill").exists()
    healthy()


def test_file_size_limit(driver, make_task, healthy):
    task = make_task()
    ran = run_spec(driver, task.spec(["/bin/sh", "-c", "dd if=/dev/zero of=big bs=1M count=20"],
                                     file_size_bytes=4 * 1024**2))
    assert ran.result.kill_reason is KillReason.DISK, ran.result
    assert "SIGXFSZ" in (ran.result.detail or "")
    healthy()


def test_stdout_flood(driver, make_task, healthy):
    task = make_task()
    ran = run_spec(driver, task.spec(["/bin/sh", "-c", "head -c 1G /dev/zero"]), max_output_bytes=2 * 1024**2)
    assert ran.result.kill_reason is KillReason.OUTPUT, ran.result
    assert ran.output_bytes["stdout"] < 64 * 1024**2
    healthy()


def test_cpu_time_limit(driver, make_task, healthy):
    task = make_task()
    ran = run_spec(driver, task.spec([PY, "-c", "while True: pass"], cpu_time_s=1, wall_time_s=20))
    assert ran.result.kill_reason is KillReason.TIME, ran.result
    assert "cpu time" in (ran.result.detail or "")
    healthy()


def test_open_files_limit(driver, make_task, healthy):
    task = make_task()
    script = "fs = []\ntry:\n    while True: fs.append(open('/dev/null'))\nexcept OSError as e:\n    print(len(fs), e.errno)\n"
    ran = run_spec(driver, task.spec([PY, "-c", script], open_files=50))
    count, err = ran.out.split()
    assert int(count) < 50 and err == "24"  # EMFILE
    healthy()


@pytest.fixture
def loopback_server():
    """A real TCP server on 127.0.0.1 and on the host's other addresses (like the emulator/Azurite)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    accepted: list[tuple] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, addr = srv.accept()
            except (TimeoutError, OSError):
                continue
            accepted.append(addr)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1], accepted
    stop.set()
    thread.join()
    srv.close()


def _host_addresses() -> list[str]:
    addrs = []
    for entries in psutil.net_if_addrs().values():
        for e in entries:
            if e.family == socket.AF_INET and not e.address.startswith("127."):
                addrs.append(e.address)
    return addrs


CONNECT = """
import socket, sys
for host in sys.argv[2:]:
    try:
        socket.create_connection((host, int(sys.argv[1])), timeout=2).close()
        print(host, "CONNECTED")
    except OSError as e:
        print(host, "refused", e.errno)
"""


def test_network_egress_and_loopback_services(driver, make_task, loopback_server, healthy):
    port, accepted = loopback_server
    hosts = ["127.0.0.1", *_host_addresses(), "1.1.1.1"]
    # Control: from the host, the server is reachable (so "refused" below means the sandbox, not the server).
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    task = make_task()
    ran = run_spec(driver, task.spec([PY, "-c", CONNECT, str(port), *hosts]))
    assert "CONNECTED" not in ran.out, ran.out
    assert len(ran.out.splitlines()) == len(hosts)
    assert len(accepted) == 1  # only the control
    healthy()


def test_opt_in_network_still_cannot_reach_loopback(driver, make_task, loopback_server, healthy):
    port, _accepted = loopback_server
    others = _host_addresses()
    if not others:
        pytest.skip("no non-loopback address on this host to prove outbound works")
    task = make_task()
    try:
        ran = run_spec(driver, task.spec([PY, "-c", CONNECT, str(port), "127.0.0.1", "127.0.0.2", others[0]],
                                         network=True))
    finally:
        from worker.execution import netfilter

        netfilter.remove()
    lines = dict(line.split(" ", 1) for line in ran.out.splitlines())
    assert lines["127.0.0.1"].startswith("refused") and lines["127.0.0.2"].startswith("refused")
    assert lines[others[0]] == "CONNECTED"  # outbound works: the network really was opted in
    healthy()


def test_agent_config_credentials_and_home_are_invisible(driver, make_task, work_root, monkeypatch, healthy):
    monkeypatch.setenv("SERVICEBUS_CONNECTION_STRING", "Endpoint=sb://secret")
    agent_config = work_root / "agent.yaml"
    agent_config.write_text("servicebus: {task_queue_connection_string: secret}\n")
    agent_config.chmod(0o644)  # even world-readable: it is simply not in the sandbox's view
    task = make_task()
    probe = f"""
import os
for path in [{str(agent_config)!r}, "/root", "/home", "/etc/shadow", "/etc/pool-agent", "/var/lib",
             "/proc/1/environ", {str(work_root)!r} + "/cache", "/run", "/work"]:
    try:
        data = open(path).read() if os.path.isfile(path) else os.listdir(path)
        print(path, "READABLE", str(data)[:80])
    except OSError as e:
        print(path, "hidden", e.errno)
print("env", "secret" in str(os.environ))
print("pid1", open("/proc/1/cmdline").read().split(chr(0))[0])
"""
    ran = run_spec(driver, task.spec([PY, "-c", probe]))
    lines = ran.out.splitlines()
    readable = [line for line in lines if "READABLE" in line]
    # /proc/1/environ is the sandbox's own init (bwrap), not the agent: allowed, and holds no secret.
    assert all(line.startswith("/proc/1/environ") for line in readable), readable
    assert "secret" not in ran.out
    assert "env False" in lines and "pid1 /usr/bin/bwrap" in lines
    healthy()


def test_other_tasks_and_input_cache_are_invisible(driver, make_task, work_root, healthy):
    other = make_task(name="other-task")
    (other.scratch / "their-secret.txt").write_text("secret")
    cache = work_root / "cache"
    cache.mkdir()
    (cache / "bundle.tar").write_text("cached input of another competition")
    task = make_task()
    probe = f"""
import os
print("task", sorted(os.listdir("/task")))
for path in [{str(work_root)!r}, {str(other.scratch / "their-secret.txt")!r}, {str(cache / "bundle.tar")!r}]:
    try:
        print(path, "READ", open(path).read() if os.path.isfile(path) else os.listdir(path))
    except OSError as e:
        print(path, "hidden", e.errno)
"""
    ran = run_spec(driver, task.spec([PY, "-c", probe]))
    lines = ran.out.splitlines()
    assert lines[0] == "task ['inputs', 'output', 'program', 'scratch']"  # only its own directories
    assert [line.rsplit(" ", 2)[-2:] for line in lines[1:]] == [["hidden", "2"]] * 3
    healthy()


def test_writing_outside_scratch(driver, make_task, healthy):
    task = make_task("echo original\n")
    (task.inputs / "data").mkdir()
    targets = ["/usr/evil", "/etc/evil", "/evil", "/task/program/main.sh", "/task/inputs/data/evil",
               "/proc/sys/kernel/hostname", str(task.root / "evil"), "/dev/evil"]
    probe = "for t in " + " ".join(targets) + "; do (echo pwned > $t) 2>/dev/null && echo \"WROTE $t\"; done; true"
    ran = run_spec(driver, task.spec(["/bin/sh", "-c", probe]))
    assert "WROTE" not in ran.out, ran.out
    assert (task.program / "main.sh").read_text() == "echo original\n"
    assert not (task.root / "evil").exists() and not Path("/usr/evil").exists()
    healthy()


def test_symlinks_in_inputs_do_not_reach_the_host(driver, make_task, work_root, healthy):
    other = make_task(name="victim")
    (other.scratch / "secret.txt").write_text("victim secret")
    (other.scratch / "secret.txt").chmod(0o644)
    task = make_task()
    data = task.inputs / "data"
    data.mkdir()
    (data / "shadow").symlink_to("/etc/shadow")
    (data / "victim").symlink_to(other.scratch / "secret.txt")
    (data / "up").symlink_to("../../../victim/scratch/secret.txt")
    # Control: on the host, the relative link does lead to the victim's file.
    assert (data / "victim").read_text() == "victim secret"
    ran = run_spec(driver, task.spec(["/bin/sh", "-c", "cat /task/inputs/data/* 2>&1; true"]))
    assert "victim secret" not in ran.out and "root:" not in ran.out
    assert ran.out.count("No such file or directory") == 3
    healthy()


def test_double_fork_daemon_cannot_outlive_the_task(driver, make_task, healthy):
    marker = f"{uuid.uuid4().int % 10**6}.25"
    task = make_task(f"setsid sh -c 'sleep {marker}' </dev/null >/dev/null 2>&1 &\n"
                     f"(sh -c 'sleep {marker} & ' &)\nnohup sleep {marker} >/dev/null 2>&1 &\necho started\n")
    ran = run_spec(driver, task.spec(["/bin/sh", "/task/program/main.sh"]))
    assert ran.out == "started\n" and ran.result.exit_code == 0
    assert _marked_processes(marker) == []
    healthy()


def test_double_fork_past_the_time_limit(driver, make_task, healthy):
    marker = f"{uuid.uuid4().int % 10**6}.5"
    task = make_task(f"setsid sh -c 'sleep {marker}' &\n(sleep {marker} &)\nsleep {marker}\n")
    ran = run_spec(driver, task.spec(["/bin/sh", "/task/program/main.sh"], wall_time_s=1.0))
    assert ran.result.kill_reason is KillReason.TIME
    assert _marked_processes(marker) == []
    healthy()


@pytest.fixture
def victim():
    """A process standing in for the agent (signalling the real test runner would be a bad idea)."""
    proc = subprocess.Popen(["/bin/sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


def test_signalling_and_ptracing_the_agent(driver, make_task, victim, healthy):
    probe = f"""
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
for pid in ({victim.pid}, {os.getpid()}):
    try:
        os.kill(pid, signal.SIGKILL); print(pid, "KILLED")
    except OSError as e:
        print(pid, "kill", e.errno)
    r = libc.ptrace(16, pid, None, None)  # PTRACE_ATTACH
    print(pid, "ptrace", r, ctypes.get_errno())
try:
    os.kill(-1, signal.SIGKILL)  # everything this uid may signal
except OSError as e:
    print("kill -1", e.errno)
"""
    task = make_task()
    ran = run_spec(driver, task.spec([PY, "-c", probe]))
    assert "KILLED" not in ran.out
    assert victim.poll() is None  # the agent stand-in is alive
    assert " ptrace 0 " not in ran.out
    healthy()


def test_seccomp_denies_kernel_attack_surface(driver, make_task, healthy):
    if not driver.use_seccomp:
        pytest.skip("seccomp filter not supported on this architecture")
    probe = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
print("traceme", libc.ptrace(0, 0, None, None), ctypes.get_errno())
print("unshare", libc.unshare(0x10000000), ctypes.get_errno())
print("mount", libc.mount(b"none", b"/tmp", b"tmpfs", 0, None), ctypes.get_errno())
print("bpf", libc.syscall(321, 0, 0, 0), ctypes.get_errno())
print("getpid_ok", os.getpid() > 0)
"""
    task = make_task()
    ran = run_spec(driver, task.spec([PY, "-c", probe]))
    lines = dict(line.split(" ", 1) for line in ran.out.splitlines())
    for call in ("traceme", "unshare", "mount", "bpf"):
        assert lines[call] == "-1 1", (call, ran.out)  # EPERM
    assert lines["getpid_ok"] == "True"
    healthy()


def test_suid_binary_gives_no_privilege(driver, make_task, healthy):
    task = make_task()
    suid = task.program / "suid-id"
    shutil.copy("/usr/bin/id", suid)
    os.chown(suid, 0, 0)
    suid.chmod(0o4755)
    # Control: on the host, the same binary run by the sandbox uid does become root.
    control = subprocess.run(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(suid), "-u"],
                             capture_output=True, text=True, check=True)
    assert control.stdout.strip() == "0"
    ran = run_spec(driver, task.spec(["/task/program/suid-id", "-u"]))
    assert ran.out.strip() == "65534"
    healthy()


def test_sleeping_past_the_time_limit(driver, make_task, healthy):
    task = make_task()
    started = time.monotonic()
    ran = run_spec(driver, task.spec(["/bin/sh", "-c", "trap '' TERM INT HUP; sleep 120"], wall_time_s=1.0))
    assert ran.result.kill_reason is KillReason.TIME
    assert time.monotonic() - started < 10
    healthy()


def test_closing_stdout_and_writing_to_the_tty(driver, make_task, healthy):
    probe = """
import fcntl, os, termios
os.close(1)
for path in ("/dev/tty", "/dev/console", "/dev/pts/0"):
    try:
        fd = os.open(path, os.O_WRONLY); os.write(fd, b"escaped"); os.write(2, f"WROTE {path}\\n".encode())
    except OSError as e:
        os.write(2, f"{path} {e.errno}\\n".encode())
try:
    fcntl.ioctl(2, termios.TIOCSTI, b"x"); os.write(2, b"TIOCSTI worked\\n")
except OSError as e:
    os.write(2, f"TIOCSTI {e.errno}\\n".encode())
"""
    task = make_task()
    ran = run_spec(driver, task.spec([PY, "-c", probe]))
    assert "WROTE" not in ran.err and "worked" not in ran.err, ran.err
    assert ran.result.exit_code == 0
    healthy()

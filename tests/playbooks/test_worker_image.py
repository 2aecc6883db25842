"""The proof: image-linux.yml turns a real Debian root filesystem into a worker that boots and works.

debootstrap bookworm (cached) -> image-linux.yml through Ansible's chroot connection (minimal ML
profile) -> boot with systemd-nspawn (shares the host network) -> the agent came up by itself and
processes a task from the emulator on the host (logs in Azurite) -> image tests (testinfra over SSH)
-> rotate-credentials.yml (old keys removed afterwards, a task still runs) -> patch.yml with a
task running (drained, not lost; forced reboot; agent back) -> one SIGTERM halts the machine.
The tests of this module run in order and share one booted machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fixtures.rootfs import (
    NspawnMachine,
    allow_userns_sysctls,
    chroot_mounts,
    enable_root_ssh,
    fresh_rootfs,
    wait_for,
)
from tests.playbooks.harness import REPO, build_wheel, run_playbook, tail
from worker.local.processes import free_port

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.timeout(1500)]

SERVICE = "pool-agent"
CONFIG = "/etc/pool-agent/agent.yaml"


@dataclass
class Worker:
    root: Path
    work: Path
    machine: NspawnMachine
    port: int
    key: Path
    log: Path
    inventory: Path
    ssh_config: Path
    notes: dict = field(default_factory=dict)

    def ssh(self, command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(["ssh", "-F", str(self.ssh_config), "worker", command], capture_output=True,
                              text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{command!r} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc

    def reachable(self) -> bool:
        try:
            return self.ssh("true", check=False, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def unit(self, *props: str) -> dict[str, str]:
        out = self.ssh(f"systemctl show {SERVICE} " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def diagnostics(self) -> str:
        parts = [f"--- ansible log ---\n{tail(self.log)}", f"--- console ---\n{self.machine.console()[-4000:]}"]
        with contextlib.suppress(Exception):
            parts.append("--- journal ---\n" + self.ssh(f"journalctl -u {SERVICE} --no-pager -n 80", check=False,
                                                         timeout=15).stdout)
        return "\n".join(parts)


# --- the pool on the host: emulator queues with least-rights policies, Azurite containers ----------
@dataclass
class Pool:
    competition: str
    task_queue: str
    response_queue: str
    emulator: object
    storage: object
    policies: dict[str, dict] = field(default_factory=dict)
    received: dict[str, list] = field(default_factory=dict)
    presences: list = field(default_factory=list)  # idle reports of the booted agent

    def servicebus_settings(self, generation: str) -> dict:
        listen, send = f"listen-{generation}", f"send-{generation}"
        return {
            "auth": "connection_string",
            "task_queue": self.task_queue,
            "response_queue": self.response_queue,
            "task_queue_connection_string": self.emulator.connection_string(listen, entity=self.task_queue),
            "response_queue_connection_string": self.emulator.connection_string(send, entity=self.response_queue),
        }

    def set_policies(self, *generations: str) -> None:
        """(Re)define the queue-level keys: Listen on the task queue, Send on the response queue."""
        from worker.emulator.launcher import generate_key

        for gen in generations:
            self.policies.setdefault(gen, {"listen": generate_key(), "send": generate_key()})
        self.emulator.create_queue(self.task_queue, lock_duration="PT30S", policies=[
            {"name": f"listen-{g}", "key": self.policies[g]["listen"], "rights": ["Listen"]} for g in generations])
        self.emulator.create_queue(self.response_queue, policies=[
            {"name": f"send-{g}", "key": self.policies[g]["send"], "rights": ["Send"]} for g in generations])

    def submit(self, command: list[str], time_limit_s: float = 120) -> str:
        from azure.servicebus import ServiceBusClient, ServiceBusMessage

        from worker.protocol import CONTENT_TYPE, Task, encode

        task_id = f"img-{uuid.uuid4().hex[:10]}"
        urls = self.storage.task_urls(self.competition, task_id, 1, time_limit_s)
        task = Task(task_id=task_id, competition=self.competition, command=command, stdout_url=urls.stdout_url,
                    stderr_url=urls.stderr_url, control_url=urls.control_url, output_url=urls.output_url,
                    time_limit_s=time_limit_s, reply_to=self.response_queue)
        client = ServiceBusClient.from_connection_string(self.emulator.connection_string())
        with client, client.get_queue_sender(self.task_queue) as sender:
            sender.send_messages(ServiceBusMessage(encode(task), message_id=task.message_id,
                                                   content_type=CONTENT_TYPE))
        return task_id

    def statuses(self, task_id: str, until: set[str], timeout: float) -> list:
        """Every status of ``task_id`` received so far, once one has a state in ``until``."""
        from azure.servicebus import ServiceBusClient

        from worker.protocol import Presence
        from worker.wire import decode_reports

        def done() -> bool:
            return any(s.state.value in until for s in self.received.get(task_id, []))

        deadline = time.monotonic() + timeout
        client = ServiceBusClient.from_connection_string(self.emulator.connection_string())
        with client, client.get_queue_receiver(self.response_queue) as receiver:
            while not done() and time.monotonic() < deadline:
                for msg in receiver.receive_messages(max_message_count=20, max_wait_time=2):
                    receiver.complete_message(msg)
                    for report in decode_reports(msg):  # one status, a task's statuses, or a presence
                        if isinstance(report, Presence):  # the idle agent saying it is alive
                            self.presences.append(report)
                        else:
                            self.received.setdefault(report.task_id, []).append(report)
        seen = sorted(self.received.get(task_id, []), key=lambda s: (s.attempt, s.seq))
        if not done():
            raise AssertionError(f"task {task_id}: no status in {until} within {timeout}s; saw "
                                 f"{[s.state.value for s in seen]}")
        return seen

    def stdout(self, task_id: str) -> str:
        return self.storage.read_log(self.competition, task_id, 1, "stdout").decode()

    def stderr(self, task_id: str) -> str:
        return self.storage.read_log(self.competition, task_id, 1, "stderr").decode()


@pytest.fixture(scope="module")
def pool(emulator, azurite) -> Iterator[Pool]:
    from worker.config import competition_queues
    from worker.storage import Storage

    competition = f"img-{uuid.uuid4().hex[:8]}"
    storage = Storage.from_connection_string(azurite.connection_string)
    storage.ensure_competition(competition)
    task_queue, response_queue = competition_queues(competition)
    p = Pool(competition, task_queue, response_queue, emulator, storage)
    p.set_policies("a")
    yield p
    storage.close()


# --- the worker ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def worker(debian_base_tarball: Path, pool: Pool, tmp_path_factory) -> Iterator[Worker]:
    work = tmp_path_factory.mktemp("worker")
    log = work / "ansible.log"
    # COMPUTE_POOLS_TEST_WHEEL: test the image with a given wheel (e.g. a release) instead of this tree.
    given = os.environ.get("COMPUTE_POOLS_TEST_WHEEL")
    wheel = Path(given) if given else build_wheel(work / "dist")
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    port = free_port()
    ssh_config = work / "ssh_config"
    ssh_config.write_text(
        f"Host worker\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {key}\n"
        "  IdentitiesOnly yes\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
        "  BatchMode yes\n  ConnectTimeout 5\n")
    with fresh_rootfs(debian_base_tarball) as root:
        chroot_inventory = work / "chroot.ini"
        chroot_inventory.write_text(f"rootfs ansible_connection=community.general.chroot ansible_host={root} "
                                    "ansible_python_interpreter=/usr/bin/python3\n")
        extra = {
            "worker_agent_wheel": str(wheel),
            # minimal keeps CI fast; COMPUTE_POOLS_IMAGE_PROFILE=full (+ _FEATURES=torch) checks the image's.
            "ml_base_profile": os.environ.get("COMPUTE_POOLS_IMAGE_PROFILE", "minimal"),
            "ml_base_features": [f for f in os.environ.get("COMPUTE_POOLS_IMAGE_FEATURES", "").split(",") if f],
            "worker_agent_pool": pool.competition,
            "worker_agent_servicebus": pool.servicebus_settings("a"),
            "worker_agent_shutdown_grace_s": 60,
            "worker_agent_config_extra": {"receive_wait_s": 2, "heartbeat_interval_s": 2},
        }
        t0 = time.monotonic()
        with chroot_mounts(root):
            result = run_playbook("image-linux.yml", chroot_inventory, log, extra)
        assert result.returncode == 0, f"image-linux.yml failed in the chroot:\n{tail(log)}"
        provision_s = time.monotonic() - t0

        enable_root_ssh(root, port, (key.with_suffix(".pub")).read_text())
        allow_userns_sysctls(root)
        ssh_inventory = work / "ssh.ini"
        ssh_inventory.write_text(
            f"[workers]\nworker ansible_host=127.0.0.1 ansible_port={port} ansible_user=root "
            f"ansible_ssh_private_key_file={key} ansible_python_interpreter=/usr/bin/python3 "
            "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'\n")
        machine = NspawnMachine(root, f"worker-{uuid.uuid4().hex[:6]}", work / "console.log")
        w = Worker(root, work, machine, port, key, log, ssh_inventory, ssh_config,
                   notes={"provision_s": provision_s, "wheel": wheel, "vars": extra})
        t0 = time.monotonic()
        machine.start()
        try:
            try:
                wait_for(lambda: w.reachable() or not machine.running() and "stopped", 90, 1, "SSH into the booted worker")
                assert machine.running(), f"the container exited:\n{machine.console()[-3000:]}"
            except (TimeoutError, AssertionError) as exc:
                raise AssertionError(f"{exc}\n{machine.console()[-4000:]}") from None
            w.notes["boot_to_ssh_s"] = time.monotonic() - t0
            yield w
        finally:
            if machine.running():
                machine.halt()


def _wait_active(w: Worker, timeout: float = 60) -> dict[str, str]:
    def active():
        props = w.unit("ActiveState", "MainPID", "NRestarts")
        return props if props.get("ActiveState") == "active" else None

    try:
        return wait_for(active, timeout, 1, "the agent to be active")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{w.diagnostics()}") from None


# --- the tests, in order ---------------------------------------------------------------------------
def test_agent_started_by_itself_at_boot(worker: Worker):
    assert worker.ssh(f"systemctl is-enabled {SERVICE}").stdout.strip() == "enabled"
    props = _wait_active(worker)
    # Nobody started it: the only start request was the boot transaction (multi-user.target).
    assert worker.ssh("systemctl is-system-running --wait", check=False, timeout=60).stdout.strip() in {
        "running", "degraded"}
    assert props["NRestarts"] == "0", worker.diagnostics()
    owner = worker.ssh(f"ps -o user= -p {props['MainPID']}").stdout.strip()
    assert owner == "pool-agent"


def test_config_rendered_in_the_agents_format(worker: Worker, pool: Pool, tmp_path: Path):
    from worker.config import load_agent_config

    stat = worker.ssh(f"stat -c '%U %G %a' {CONFIG}").stdout.split()
    assert stat == ["pool-agent", "pool-agent", "600"]
    local = tmp_path / "agent.yaml"
    local.write_text(worker.ssh(f"cat {CONFIG}").stdout)
    cfg = load_agent_config(local)
    assert cfg.servicebus.task_queue == pool.task_queue
    assert cfg.servicebus.task_queue_connection_string == pool.servicebus_settings("a")["task_queue_connection_string"]
    assert cfg.execution.driver == "bwrap"
    assert cfg.pool == pool.competition and cfg.shutdown_grace_s == 60 and cfg.receive_wait_s == 2


def test_agent_processes_a_task_from_the_hosts_emulator(worker: Worker, pool: Pool):
    task_id = pool.submit(["python", "-c", "import numpy, os; print('sum', numpy.arange(10).sum(), os.getuid())"])
    try:
        statuses = pool.statuses(task_id, {"finished", "failed", "timed_out", "cancelled"}, timeout=90)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{worker.diagnostics()}") from None
    final = [s for s in statuses if s.state.terminal][-1]
    assert final.state.value == "finished" and final.exit_code == 0, (final, pool.stdout(task_id), pool.stderr(task_id))
    assert "sum 45" in pool.stdout(task_id)
    first = statuses[0]
    assert first.host is not None and first.host.driver == "bwrap"
    assert pool.presences and pool.presences[0].host is not None, "the booted agent never reported itself idle"


def test_image_tests_pass_on_the_booted_worker(worker: Worker):
    """images/linux/tests (what Packer runs on a build VM) over SSH with pytest-testinfra."""
    report = worker.work / "image-tests.txt"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "images/linux/tests"),
         "--hosts=ssh://worker", f"--ssh-config={worker.ssh_config}", "-o", "addopts=", "--timeout=300"],
        capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
    report.write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    summary = [line for line in proc.stdout.splitlines() if re.search(r"\d+ passed", line)]
    assert summary and "skipped" not in summary[-1], proc.stdout[-3000:]  # this worker has a config


def test_install_worker_over_ssh_is_idempotent(worker: Worker, pool: Pool):
    """install-worker.yml (the existing-VM path) over SSH on the provisioned worker changes nothing."""
    before = _wait_active(worker)
    result = run_playbook("install-worker.yml", worker.inventory, worker.log, {**worker.notes["vars"]})
    assert result.returncode == 0, tail(worker.log)
    recap = tail(worker.log, 600)
    assert re.search(r"worker\s+: ok=\d+\s+changed=0\s+unreachable=0\s+failed=0", recap), recap
    assert _wait_active(worker)["MainPID"] == before["MainPID"]


def _one_delivery(statuses: list) -> None:
    """The task was received once and ran to its end on that first delivery, and no status of that
    delivery went missing: the attempt number alone would not show a redelivery (a drained-too-late
    task handed back, or lost with its worker, comes back with the same attempt)."""
    from worker.agent.reporter import SEQ_PER_DELIVERY

    received = [s for s in statuses if s.state.value == "received"]
    assert len(received) == 1, f"received {len(received)} times: {[(s.state.value, s.seq) for s in statuses]}"
    deliveries = {s.seq // SEQ_PER_DELIVERY for s in statuses}
    assert len(deliveries) == 1, f"statuses of several deliveries: {sorted(deliveries)}"
    first = deliveries.pop()
    assert first == 0, f"not the first delivery: delivery count {first}"  # AMQP delivery-count: 0 = first
    offsets = sorted(s.seq - first * SEQ_PER_DELIVERY for s in statuses)
    assert offsets == list(range(len(offsets))), f"statuses missing (seq gaps): {offsets}"
    assert statuses[-1].state.value == "finished" and statuses[-1].attempt == 1


def test_rotate_credentials_without_losing_the_agent(worker: Worker, pool: Pool):
    before = _wait_active(worker)
    pool.set_policies("a", "b")  # new keys published next to the old ones
    # A task runs while the credentials rotate: the agent restarts only after it finished (drain).
    running_id = pool.submit(["python", "-c", "import time; time.sleep(8); print('ran through the rotation')"])
    pool.statuses(running_id, {"running"}, timeout=60)
    result = run_playbook("rotate-credentials.yml", worker.inventory, worker.log, {
        "worker_agent_servicebus": pool.servicebus_settings("b"),
        "worker_agent_pool": pool.competition,
        "worker_agent_shutdown_grace_s": 60,
        "worker_agent_config_extra": {"receive_wait_s": 2, "heartbeat_interval_s": 2},
    })
    assert result.returncode == 0, tail(worker.log)
    after = _wait_active(worker)
    assert after["MainPID"] != before["MainPID"], "the agent was not restarted with the new config"
    assert pool.servicebus_settings("b")["task_queue_connection_string"] in worker.ssh(f"cat {CONFIG}").stdout
    _one_delivery(pool.statuses(running_id, {"finished", "failed", "timed_out", "cancelled"}, timeout=60))
    assert "ran through the rotation" in pool.stdout(running_id)
    pool.set_policies("b")  # old keys revoked: only the new config can work now
    task_id = pool.submit(["python", "-c", "print('rotated')"])
    statuses = pool.statuses(task_id, {"finished", "failed", "timed_out", "cancelled"}, timeout=90)
    assert statuses[-1].state.value == "finished", worker.diagnostics()
    assert "rotated" in pool.stdout(task_id)


def test_patch_drains_a_running_task_reboots_and_brings_the_agent_back(worker: Worker, pool: Pool):
    before = _wait_active(worker)
    task_id = pool.submit(["python", "-c", "import time; time.sleep(8); print('survived the drain')"])
    pool.statuses(task_id, {"running"}, timeout=60)
    boots = worker.machine.boots
    result = run_playbook("patch.yml", worker.inventory, worker.log,
                          {"patch_force_reboot": True, "patch_verify_seconds": 5, "patch_reboot_timeout": 300})
    assert result.returncode == 0, tail(worker.log)
    # The drain let the running task finish (grace 60 s > 8 s): finished on its first attempt.
    statuses = pool.statuses(task_id, {"finished", "failed", "timed_out", "cancelled"}, timeout=60)
    _one_delivery(statuses)  # finished on its first delivery: counted, not only its attempt number
    assert "survived the drain" in pool.stdout(task_id)
    assert worker.machine.boots == boots + 1, "patch.yml did not reboot the machine"
    after = _wait_active(worker)
    assert after["MainPID"] != before["MainPID"]
    task_id = pool.submit(["python", "-c", "print('after patch')"])
    assert pool.statuses(task_id, {"finished", "failed"}, timeout=90)[-1].state.value == "finished"


# --- pool node (issue 14): operate the booted worker over SSH with paramiko -----------------------
def _node(w: Worker, *args: str, known: bool = True) -> tuple[int, str]:
    """`pool node` against the playbooks' own inventory; every call is kept in a transcript."""
    from typer.testing import CliRunner

    from worker.cli import app

    common = ["-i", str(w.inventory), "--no-agent", "--known-hosts", str(w.work / "known_hosts")]
    result = CliRunner().invoke(app, ["node", *common, *args], env={"COLUMNS": "160"})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    with (w.work / "pool-node-transcript.txt").open("a") as fh:
        fh.write(f"$ pool node -i hosts.ini {' '.join(args)}\n{result.output}(exit {result.exit_code})\n\n")
    return result.exit_code, result.output


def _node_state(w: Worker) -> dict:
    return json.loads(w.ssh("/opt/pool-agent/venv/bin/pool agent status --json", check=False).stdout)


def test_pool_node_first_contact_then_status_idle_then_busy(worker: Worker, pool: Pool):
    _wait_active(worker)
    rc, out = _node(worker, "status")
    assert rc == 1 and "unknown host key" in out and "--accept-new-host-keys" in out, out
    rc, out = _node(worker, "--accept-new-host-keys", "status")
    assert rc == 0 and "1 ok, 0 failed" in out, out
    wait_for(lambda: _node_state(worker).get("state") == "idle", 30, 1, "the agent idle")
    rc, out = _node(worker, "status")
    assert rc == 0 and "active" in out and "idle" in out, out
    # The state file is the operator's (root's), not the sandboxed task's: a task cannot see it.
    probe = pool.submit(["python", "-c", ("import os, time; time.sleep(12); "
                         "print('state file visible:', os.path.exists('/var/lib/pool-agent/agent-state.json'))")])
    pool.statuses(probe, {"running"}, timeout=60)
    rc, out = _node(worker, "status")
    assert rc == 0 and "busy" in out and probe in out, out
    pool.statuses(probe, {"finished", "failed"}, timeout=60)
    assert "state file visible: False" in pool.stdout(probe)
    assert worker.ssh("test -f /var/lib/pool-agent/agent-state.json", check=False).returncode == 0  # positive control


def test_pool_node_drain_finishes_the_task_and_takes_no_new_one_until_resume(worker: Worker, pool: Pool):
    first = pool.submit(["python", "-c", "import time; time.sleep(15); print('first finished')"])
    pool.statuses(first, {"running"}, timeout=60)
    rc, out = _node(worker, "drain")
    assert rc == 0 and ("draining" in out or "drain pending" in out), out
    second = pool.submit(["python", "-c", "print('second finished')"])
    statuses = pool.statuses(first, {"finished", "failed", "timed_out", "cancelled"}, timeout=60)
    assert statuses[-1].state.value == "finished" and "first finished" in pool.stdout(first)
    rc, out = _node(worker, "drain", "--wait", "60")
    assert rc == 0 and "drained" in out, out
    with pytest.raises(AssertionError, match="no status"):
        pool.statuses(second, {"received"}, timeout=8)  # four receive waits: not taken
    rc, out = _node(worker, "resume")
    assert rc == 0, out
    assert pool.statuses(second, {"finished", "failed"}, timeout=60)[-1].state.value == "finished"
    assert "second finished" in pool.stdout(second)
    worker.notes["drained_task"] = second


def test_pool_node_logs_show_the_agents_journal(worker: Worker):
    rc, out = _node(worker, "logs", "--lines", "40")
    assert rc == 0 and "pool-agent" in out, out
    assert f"task {worker.notes['drained_task']} attempt 1 received" in out, out
    assert "drain requested: taking no new task" in out and "drain lifted" in out, out


def test_pool_node_restart_brings_a_new_agent_process(worker: Worker):
    before = _wait_active(worker)["MainPID"]
    rc, out = _node(worker, "restart", "--timeout", "120")
    assert rc == 0 and "→" in out, out
    assert _wait_active(worker)["MainPID"] != before


def test_pool_node_upgrade_agent_installs_a_rebuilt_wheel(worker: Worker, pool: Pool, tmp_path: Path):
    import shutil

    # A rebuilt wheel whose code says so: the same tree with another __version__.
    tree = tmp_path / "tree"
    shutil.copytree(REPO / "worker", tree / "worker", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    init = tree / "worker/__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]+"', '__version__ = "0.1.0+node-upgrade"', init.read_text()))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(tree)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("compute_pools-*.whl"))
    before = _wait_active(worker)["MainPID"]
    rc, out = _node(worker, "upgrade-agent", str(wheel), "--timeout", "300")
    assert rc == 0 and "0.1.0+node-upgrade" in out, out
    assert _wait_active(worker)["MainPID"] != before
    rc, out = _node(worker, "status")
    assert rc == 0 and "0.1.0+node-upgrade" in out and "idle" in out, out
    assert not _node_state(worker)["drain_requested"]  # the upgrade's own drain was lifted
    task_id = pool.submit(["python", "-c", "print('after upgrade')"])
    assert pool.statuses(task_id, {"finished", "failed"}, timeout=90)[-1].state.value == "finished"
    rc, out = _node(worker, "exec", "--", "ls /opt/pool-agent/dist")
    assert rc == 0 and wheel.name in out
    rc, out = _node(worker, "exec", "--", "/opt/pool-agent/venv/bin/pool agent status")  # on the worker itself
    assert rc == 0 and "idle" in out and "0.1.0+node-upgrade" in out, out


def test_halts_cleanly_on_one_sigterm(worker: Worker):
    t0 = time.monotonic()
    rc = worker.machine.halt(timeout=60)
    elapsed = time.monotonic() - t0
    assert rc == 0, worker.machine.console()[-3000:]
    assert elapsed < 60
    worker.notes["halt_s"] = elapsed
    print(json.dumps({k: (round(v, 1) if isinstance(v, float) else str(v)) for k, v in worker.notes.items()
                      if k != "vars"}))

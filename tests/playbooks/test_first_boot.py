"""First-boot proofs: the exact cloud-init document the Pulumi program renders, booted for real.

For each image path of a Linux pool, the stack config goes through the whole Pulumi program under
Pulumi's mocks (the only mocked answer: listQueueKeys returns a real queue policy of the host's
emulator); the scale set's custom data is written unchanged as the NoCloud user-data of a Debian 12
root filesystem with cloud-init (cached), which systemd-nspawn boots sharing the host network:

- marketplace path: the plain cloud image; cloud-init runs the first-boot script, which clones the
  repository (``install.source`` = ``file:///srv/compute-pools``, a snapshot of this checkout placed
  in the tree, standing in for the https URL), builds the wheel and runs install-worker.yml;
- gallery path: the same base turned into our image by image-linux.yml (no config baked in); the
  custom data only writes the config and the termination watcher and restarts the agent.

In both, the agent then processes a task from the host's emulator (logs in Azurite), and the
termination watcher unit is installed, enabled and running.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fixtures.rootfs import (
    NspawnMachine,
    allow_userns_sysctls,
    cache_root,
    chroot_mounts,
    fresh_rootfs,
    seed_nocloud,
    wait_for,
)
from tests.infra.conftest import GALLERY, SSH_KEY
from tests.infra.rendered import render_custom_data
from tests.playbooks.harness import REPO, build_wheel, run_playbook, tail
from tests.playbooks.test_worker_image import Pool

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.timeout(1500)]

SERVICE = "pool-agent"
WATCHER = "pool-termination-watch.service"
SOURCE_IN_TREE = "srv/compute-pools"
LINUX_GALLERY = GALLERY.replace("windows", "linux")
TERMINAL = {"finished", "failed", "timed_out", "cancelled"}
# Fast polling for the test; everything else is the program's default.
AGENT = {"receive_wait_s": 2, "heartbeat_interval_s": 2}


def make_pool(emulator, azurite) -> Pool:
    """Queues named as the program names them, with the program's worker rule names and real keys."""
    from worker.config import competition_queues
    from worker.emulator.launcher import generate_key
    from worker.storage import Storage

    competition = f"fb-{uuid.uuid4().hex[:8]}"
    storage = Storage.from_connection_string(azurite.connection_string)
    storage.ensure_competition(competition)
    task_queue, response_queue = competition_queues(competition)
    pool = Pool(competition, task_queue, response_queue, emulator, storage)
    emulator.create_queue(task_queue, lock_duration="PT30S",
                          policies=[{"name": "worker-listen", "key": generate_key(), "rights": ["Listen"]}])
    emulator.create_queue(response_queue,
                          policies=[{"name": "worker-send", "key": generate_key(), "rights": ["Send"]}])
    return pool


def custom_data_for(pool: Pool, workers: dict) -> str:
    """The program's custom data for this pool (worker keys = the emulator's queue policies)."""
    def queue_key(rule: str, queue: str) -> str | None:
        if rule.startswith("worker-"):
            return pool.emulator.connection_string(rule, entity=queue)
        return None  # the site's keys: the harness's placeholder (they never reach a worker)

    config = {"competition": pool.competition,
              "workers": {"os": "linux", "ssh_public_key": SSH_KEY, "agent": AGENT, **workers}}
    return render_custom_data(config, queue_key)


def snapshot_checkout(dest: Path) -> None:
    """A git repository (branch main, one commit) of this checkout's files, committed or not."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "-co", "--exclude-standard"],
                            capture_output=True, check=True).stdout.split(b"\0")
    files = [f for f in listed if f and not f.startswith((b".venv", b".tools")) and (REPO / f.decode()).is_file()]
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(REPO), "--null", "-T", "-", "-cf", str(dest / ".snapshot.tar")],
                   input=b"\0".join(files), check=True, capture_output=True)
    subprocess.run(["tar", "-C", str(dest), "-xf", str(dest / ".snapshot.tar")], check=True)
    (dest / ".snapshot.tar").unlink()
    git = ["git", "-C", str(dest), "-c", "user.name=first-boot", "-c", "user.email=first-boot@localhost"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "snapshot of the checkout under test"], check=True)


@dataclass
class Booted:
    root: Path
    machine: NspawnMachine
    started: float
    notes: dict = field(default_factory=dict)

    def cloud_init_result(self) -> dict | None:
        path = self.root / "var/lib/cloud/data/result.json"
        with contextlib.suppress(OSError, ValueError):
            return json.loads(path.read_text())["v1"]
        return None

    def diagnostics(self) -> str:
        out = self.root / "var/log/cloud-init-output.log"
        return (f"--- cloud-init-output.log ---\n{tail(out, 8000)}\n"
                f"--- console ---\n{self.machine.console()[-4000:]}")

    def container_pid(self) -> int:
        """PID (on the host) of the container's init: the child of systemd-nspawn."""
        assert self.machine.proc is not None
        children = Path(f"/proc/{self.machine.proc.pid}/task/{self.machine.proc.pid}/children").read_text().split()
        assert children, "systemd-nspawn has no child"
        return int(children[0])

    def run(self, command: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
        """A command inside the booted container (its namespaces, its systemd)."""
        return subprocess.run(["nsenter", "-t", str(self.container_pid()), "-m", "-u", "-i", "-n", "-p", *command],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def systemctl(self, *args: str) -> str:
        return self.run(["systemctl", *args]).stdout.strip()


@contextlib.contextmanager
def boot(root: Path, user_data: str, log: Path) -> Iterator[Booted]:
    seed_nocloud(root, user_data, f"i-{uuid.uuid4().hex[:8]}")
    allow_userns_sysctls(root)  # test harness only: bwrap inside nspawn (see tests/fixtures/rootfs.py)
    # The shared pip cache only: apt's archive cache is locked per directory, and a provisioning chroot
    # of another test session holding it would fail the VM's apt installs.
    pip_cache = cache_root() / "pip"
    pip_cache.mkdir(parents=True, exist_ok=True)
    machine = NspawnMachine(root, f"firstboot-{uuid.uuid4().hex[:6]}", log, binds=[(pip_cache, "/root/.cache/pip")])
    booted = Booted(root, machine, time.monotonic())
    machine.start()
    try:
        yield booted
    finally:
        if machine.running():
            booted.notes["halt_rc"] = machine.halt()


def run_a_task(booted: Booted, pool: Pool, timeout: float) -> None:
    """Submit a task at once (it waits in the queue while the VM installs) and see it processed."""
    task_id = pool.submit(["python", "-c", "import os, sys; print('first boot ok', sys.version_info[:2], os.getuid())"])
    deadline = time.monotonic() + timeout
    while True:
        try:
            statuses = pool.statuses(task_id, TERMINAL, timeout=10)
            break
        except AssertionError:
            result = booted.cloud_init_result()
            if result is not None and result.get("errors"):
                raise AssertionError(f"cloud-init reported errors: {result['errors']}\n{booted.diagnostics()}") \
                    from None
            if not booted.machine.running():
                raise AssertionError(f"the container exited\n{booted.diagnostics()}") from None
            if time.monotonic() > deadline:
                raise AssertionError(f"no result for {task_id} within {timeout}s\n{booted.diagnostics()}") from None
    booted.notes["boot_to_task_done_s"] = round(time.monotonic() - booted.started, 1)
    final = [s for s in statuses if s.state.terminal][-1]
    assert final.state.value == "finished" and final.exit_code == 0, (final, pool.stdout(task_id),
                                                                        pool.stderr(task_id), booted.diagnostics())
    assert "first boot ok (3, 11) " in pool.stdout(task_id)
    assert statuses[0].host is not None and statuses[0].host.driver == "bwrap"


def check_cloud_init_and_units(booted: Booted) -> None:
    result = wait_for(booted.cloud_init_result, 120, 1, "cloud-init to finish")
    assert result["errors"] == [], f"{result}\n{booted.diagnostics()}"
    for unit in (f"{SERVICE}.service", WATCHER):
        assert booted.systemctl("is-enabled", unit) == "enabled", booted.diagnostics()
        # Both must also be recorded as enabled on disk (what the next boot starts); the link is absolute
        # inside the tree, so check the link itself.
        assert (booted.root / "etc/systemd/system/multi-user.target.wants" / unit).is_symlink(), unit
    assert booted.systemctl("is-active", WATCHER) == "active", booted.systemctl("status", WATCHER, "--no-pager")
    assert booted.systemctl("is-active", f"{SERVICE}.service") == "active"
    owner = booted.run(["stat", "-c", "%U %a", "/etc/pool-agent/agent.yaml"]).stdout.split()
    assert owner == ["pool-agent", "600"]


@pytest.fixture
def pool(emulator, azurite) -> Iterator[Pool]:
    p = make_pool(emulator, azurite)
    yield p
    p.storage.close()


def test_marketplace_first_boot_installs_the_worker_and_runs_a_task(cloud_init_base_tarball: Path, pool: Pool,
                                                                    tmp_path: Path):
    user_data = custom_data_for(pool, {
        "install": {"source": f"file:///{SOURCE_IN_TREE}", "ref": "main",
                    # The image proof's ML profile (CI speed); the default (full) is the same role.
                    "extra_vars": {"ml_base_profile": "minimal"}}})
    assert "first-boot.sh" in user_data and "git clone" in user_data  # the marketplace document
    with fresh_rootfs(cloud_init_base_tarball) as root:
        snapshot_checkout(root / SOURCE_IN_TREE)
        with boot(root, user_data, tmp_path / "console.log") as booted:
            run_a_task(booted, pool, timeout=540)
            check_cloud_init_and_units(booted)
            assert (root / "var/lib/cloud/seed/nocloud/user-data").read_text() == user_data
            assert (root / "opt/pool-agent/venv/bin/pool").exists(), "the playbook's venv is missing"
            assert (root / "var/lib/pool-bootstrap/src/.git").is_dir()  # installed from the clone
        print(json.dumps({"path": "marketplace", **booted.notes}))


def test_gallery_image_first_boot_runs_a_task_with_the_rendered_config(cloud_init_base_tarball: Path, pool: Pool,
                                                                       tmp_path: Path):
    user_data = custom_data_for(pool, {"gallery_image_id": LINUX_GALLERY})
    assert "first-boot.sh" in user_data and "git clone" not in user_data  # config only
    wheel = build_wheel(tmp_path / "dist")
    log = tmp_path / "ansible.log"
    with fresh_rootfs(cloud_init_base_tarball) as root:
        inventory = tmp_path / "chroot.ini"
        inventory.write_text(f"image ansible_connection=community.general.chroot ansible_host={root} "
                             "ansible_python_interpreter=/usr/bin/python3\n")
        t0 = time.monotonic()
        with chroot_mounts(root):  # what Packer does on a build VM: no config baked in
            result = run_playbook("image-linux.yml", inventory, log,
                                  {"worker_agent_wheel": str(wheel), "ml_base_profile": "minimal"})
        assert result.returncode == 0, f"image-linux.yml failed in the chroot:\n{tail(log)}"
        assert not (root / "etc/pool-agent/agent.yaml").exists()
        build_s = round(time.monotonic() - t0, 1)
        with boot(root, user_data, tmp_path / "console.log") as booted:
            booted.notes["image_build_s"] = build_s
            run_a_task(booted, pool, timeout=180)
            check_cloud_init_and_units(booted)
        print(json.dumps({"path": "gallery", **booted.notes}))


def test_snapshot_is_what_the_first_boot_clones(tmp_path: Path):
    """The marketplace proof installs this checkout (uncommitted changes included), not main's."""
    snapshot_checkout(tmp_path / "src")
    assert (tmp_path / "src/infra/custom_data.py").read_text() == (REPO / "infra/custom_data.py").read_text()
    assert not (tmp_path / "src/.venv").exists()
    head = subprocess.run(["git", "-C", str(tmp_path / "src"), "branch", "--show-current"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert head == "main"
    assert os.access(tmp_path / "src/playbooks/install-worker.yml", os.R_OK)

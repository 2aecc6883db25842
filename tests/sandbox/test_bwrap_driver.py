"""The bwrap driver on this host: it runs programs, reports its limits, cleans up after itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.sandbox.conftest import needs_bwrap, needs_root, run_spec
from worker.execution import get_driver
from worker.execution.bwrap import BwrapDriver, gpu_device_nodes
from worker.protocol import KillReason

pytestmark = [needs_bwrap]


@pytest.fixture(scope="module")
def driver(bwrap_driver) -> BwrapDriver:
    return bwrap_driver


def test_registry_gives_the_bwrap_driver():
    assert isinstance(get_driver("bwrap"), BwrapDriver)


def test_runs_a_program_in_scratch_and_collects_output(driver, make_task):
    task = make_task('echo "args: $*"; pwd; echo result > "$1/result.txt"; echo oops >&2; exit 3\n')
    ran = run_spec(driver, task.spec(["/bin/sh", "/task/program/main.sh", "/task/output"]))
    assert ran.result.exit_code == 3 and ran.result.kill_reason is None
    assert ran.out.splitlines() == ["args: /task/output", "/task/scratch"]
    assert ran.err == "oops\n"
    assert (task.output / "result.txt").read_text() == "result\n"


def test_identity_capabilities_and_environment(driver, make_task, monkeypatch):
    monkeypatch.setenv("AGENT_SECRET", "do-not-leak")
    task = make_task()
    spec = task.spec(["/bin/sh", "-c", ("id -u; id -g; hostname; grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' "
                      "/proc/self/status; env | sort")], env={"TASK_VAR": "given"})
    ran = run_spec(driver, spec)
    lines = ran.out.splitlines()
    assert lines[:3] == ["65534", "65534", "sandbox"]
    status = dict(line.split(":\t") for line in lines[3:7])
    assert status["CapEff"] == status["CapBnd"] == "0000000000000000"
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == ("2" if driver.use_seccomp else "0")
    env = dict(line.split("=", 1) for line in lines[7:])
    assert env["TASK_VAR"] == "given" and "AGENT_SECRET" not in env
    assert env["HOME"] == "/task/scratch"


def test_enforced_limits_say_how(driver):
    limits = driver.enforced_limits()
    for key in ("memory", "processes", "cpu_time", "file_size", "open_files", "disk", "network", "tmp"):
        assert limits[key], key
    if driver.cgroup_host.version == "v1":
        assert limits["memory"].startswith("cgroup v1") and limits["processes"].startswith("cgroup v1")


@needs_root
def test_cleans_up_cgroups_mounts_and_state(driver, make_task):
    task = make_task()
    execution = driver.start(task.spec(["/bin/sh", "-c", "echo hi > out; echo done"]))
    cg = execution.cgroup
    disk = execution.disk
    assert cg is not None and disk is not None
    assert all(p.exists() for p in cg.procs_files)
    run = execution.result()
    assert run.exit_code == 0
    assert not any(p.parent.exists() for p in cg.procs_files)
    assert execution.disk is None
    # The disk went back to the pool, emptied; closing the pool unmounts it and deletes its image.
    assert disk in driver.disks._idle
    assert sorted(os.listdir(disk.mountpoint)) == ["output", "scratch"]
    assert not os.listdir(disk.path("scratch")) and not os.listdir(disk.path("output"))
    assert not list(task.root.glob(".sandbox*"))  # nothing of the driver's inside the task directory
    driver.disks.close()
    assert str(disk.mountpoint) not in Path("/proc/self/mounts").read_text()
    assert not disk.image.exists()


def test_file_inputs_and_readonly_mounts(driver, make_task):
    task = make_task()
    (task.inputs / "data").mkdir()
    (task.inputs / "data" / "x.csv").write_text("1,2\n")
    ran = run_spec(driver, task.spec(["/bin/sh", "-c", ("cat /task/inputs/data/x.csv; "
                                      "touch /task/inputs/data/new 2>&1 || echo denied")]))
    assert ran.out.splitlines()[0] == "1,2"
    assert "denied" in ran.out and not (task.inputs / "data" / "new").exists()


def test_refuses_a_symlinked_mount_source(driver, make_task, tmp_path):
    from dataclasses import replace

    from worker.execution.base import Mount

    task = make_task()
    (task.root / "evil").symlink_to("/etc")
    spec = task.spec(["/bin/true"])
    with pytest.raises(ValueError, match="symlink"):
        driver.start(replace(spec, mounts=[*spec.mounts, Mount(task.root / "evil", "/task/evil")]))


@needs_root
def test_untraversable_work_dir_gives_a_clear_error(driver, make_task):
    task = make_task()
    os.chmod(task.root, 0o700)
    with pytest.raises(PermissionError, match="0711"):
        driver.start(task.spec(["/bin/true"]))


def test_wall_clock_kill_reports_time(driver, make_task):
    task = make_task()
    ran = run_spec(driver, task.spec(["/bin/sleep", "60"], wall_time_s=1.0))
    assert ran.result.kill_reason is KillReason.TIME
    assert ran.result.duration_s < 10


def test_gpu_nodes_bound_when_asked(driver, make_task, tmp_path):
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidia0", "nvidia1", "nvidia10", "nvidiactl", "nvidia-uvm", "nvidia-modeset"):
        (dev / name).touch()
    (dev / "nvidia-caps").mkdir()
    (dev / "nvidia-caps" / "nvidia-cap1").touch()
    assert gpu_device_nodes(2, dev) == [str(dev / "nvidia0"), str(dev / "nvidia1"), str(dev / "nvidiactl"),
                                        str(dev / "nvidia-uvm"), str(dev / "nvidia-modeset"),
                                        str(dev / "nvidia-caps" / "nvidia-cap1")]
    assert gpu_device_nodes(0, dev) == []
    with pytest.raises(ValueError, match="asks for 4 GPU"):
        gpu_device_nodes(4, dev)
    # The command line binds exactly those nodes (built, not run: this host has no GPU).
    gpu_driver = BwrapDriver(dev_root=dev)
    from worker.execution.bwrap import BwrapExecution

    task = make_task()
    spec = task.spec(["/bin/true"])
    ex = BwrapExecution.__new__(BwrapExecution)
    ex.driver, ex.spec, ex._fds, ex.cgroup, ex.disk = gpu_driver, spec, [], None, None
    argv = ex._argv(gpu_device_nodes(1, dev))
    for fd in ex._fds:
        os.close(fd)
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "--dev-bind"]
    assert binds == [str(dev / n) for n in ("nvidia0", "nvidiactl", "nvidia-uvm", "nvidia-modeset")] + [
        str(dev / "nvidia-caps" / "nvidia-cap1")]
    assert "/sys" in argv


def test_disk_mode_falls_back_to_tmpfs_without_loop_devices(monkeypatch):
    from worker.execution import scratchfs
    from worker.execution.base import DriverUnavailable

    monkeypatch.setattr(scratchfs, "unavailable_reason", lambda: "loop mounts need root")
    assert BwrapDriver().disk == "tmpfs"
    with pytest.raises(DriverUnavailable, match="loop mounts need root"):
        BwrapDriver(disk="loop")
    with pytest.raises(ValueError, match="disk must be"):
        BwrapDriver(disk="zfs")


def test_tmpfs_scratch_is_capped_and_a_fill_is_named(make_task):
    driver = BwrapDriver(disk="tmpfs")
    task = make_task()
    ran = run_spec(driver, task.spec(["/bin/sh", "-c", "dd if=/dev/zero of=big bs=1M count=64 2>&1; sleep 30"],
                                     scratch_bytes=8 * 1024**2))
    assert ran.result.kill_reason is KillReason.DISK, ran.result
    assert "scratch limit 8 MiB" in (ran.result.detail or "")
    assert ran.result.duration_s < 10
    assert not (task.scratch / "big").exists()  # RAM-backed: nothing reached the host disk
    # a task that stays below the cap is not disturbed
    ran = run_spec(driver, task.spec(["/bin/sh", "-c", "dd if=/dev/zero of=ok bs=1M count=4 2>/dev/null; echo ok"],
                                     scratch_bytes=8 * 1024**2))
    assert ran.result.succeeded and ran.out == "ok\n"

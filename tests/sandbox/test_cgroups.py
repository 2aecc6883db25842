"""cgroup detection and per-task cgroups. v2 is checked against a fake hierarchy (this host is
hybrid: its controllers live on v1, so a real v2 task cgroup cannot be made here); v1 for real."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.sandbox.conftest import needs_root
from worker.execution import cgroups
from worker.execution.base import Limits

LIMITS = Limits(wall_time_s=10, memory_bytes=64 * 1024**2, max_processes=20)


def _fake_v2(tmp_path: Path, controllers: str = "cpuset cpu io memory pids") -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    agent = root / "system.slice" / "pool-agent.service"
    agent.mkdir(parents=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (agent / "cgroup.controllers").write_text(controllers + "\n")
    (agent / "cgroup.subtree_control").write_text("\n")
    (agent / "cgroup.procs").write_text("4242\n4243\n")
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text("0::/system.slice/pool-agent.service\n")
    return root, self_cgroup


def test_v2_delegated_cgroup_moves_agent_to_a_leaf_and_enables_controllers(tmp_path):
    root, self_cgroup = _fake_v2(tmp_path)
    host = cgroups.detect(root, self_cgroup)
    agent = root / "system.slice" / "pool-agent.service"
    assert host.version == "v2" and host.v2_parent == agent
    assert host.v2_controllers == {"memory", "pids", "cpu"}
    assert (agent / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (agent / "agent" / "cgroup.procs").exists()  # our processes left the parent
    assert "memory.max" in host.describe()["memory"]


def test_v2_task_cgroup_limits_and_counters(tmp_path):
    root, self_cgroup = _fake_v2(tmp_path)
    host = cgroups.detect(root, self_cgroup)
    cg = host.create("pool-t1", LIMITS)
    assert isinstance(cg, cgroups.CgroupV2)
    assert (cg.path / "memory.max").read_text() == str(64 * 1024**2)
    assert (cg.path / "memory.oom.group").read_text() == "1"
    assert (cg.path / "pids.max").read_text() == "20"
    assert cg.procs_files == [cg.path / "cgroup.procs"]
    assert cg.oom_kills() == 0
    (cg.path / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    (cg.path / "pids.events").write_text("max 3\n")
    (cg.path / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    assert (cg.oom_kills(), cg.pids_refused(), cg.cpu_seconds()) == (1, 3, 2.5)


def test_v2_without_memory_controller_falls_back(tmp_path):
    root, self_cgroup = _fake_v2(tmp_path, controllers="cpu io")
    host = cgroups.detect(root, self_cgroup)
    assert host.version == "none"
    assert "memory and pids needed" in host.why


def test_v2_prepare_false_does_not_touch_the_agent(tmp_path):
    root, self_cgroup = _fake_v2(tmp_path)
    host = cgroups.detect(root, self_cgroup, prepare=False)
    assert host.version == "none" and "not enabled" in host.why
    assert not (root / "system.slice" / "pool-agent.service" / "agent").exists()


def test_hybrid_fake_uses_v1(tmp_path):
    root = tmp_path / "cgroup"
    (root / "unified").mkdir(parents=True)
    (root / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    for ctrl in ("memory", "pids"):
        (root / ctrl / "agents").mkdir(parents=True)
        (root / ctrl / "cgroup.procs").write_text("")
    self_cgroup = tmp_path / "self"
    self_cgroup.write_text("9:pids:/agents\n4:memory:/agents\n0::/\n")
    host = cgroups.detect(root, self_cgroup)
    assert host.version == "v1"
    assert host.v1_parents == {"memory": root / "memory" / "agents", "pids": root / "pids" / "agents"}
    assert "v2:" in host.why


@needs_root
def test_v1_or_v2_for_real_on_this_host():
    host = cgroups.detect()
    if host.version == "none":
        pytest.skip(f"no usable cgroups: {host.why}")
    cg = host.create(f"pool-test-{time.monotonic_ns()}", LIMITS)
    assert cg is not None
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", 'for f; do echo $$ > "$f"; done; exec sleep 30', "sh",
                                 *map(str, cg.procs_files)])
        deadline = time.monotonic() + 5
        while proc.pid not in cg.pids() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.pid in cg.pids()
        cg.kill_all()
        assert proc.wait(timeout=5) == -9
        assert cg.pids() == []
    finally:
        cg.remove()
    assert not any(p.parent.exists() for p in cg.procs_files)


@needs_root
def test_sweep_removes_a_dead_agents_cgroups_only():
    host = cgroups.detect()
    if host.version == "none":
        pytest.skip(f"no usable cgroups: {host.why}")
    dead = subprocess.Popen(["/bin/true"])
    dead.wait()
    stale = host.create(f"pool-{dead.pid}-t1-abc", LIMITS)
    mine = host.create(cgroups.task_cgroup_name("t2", "def"), LIMITS)
    assert stale is not None and mine is not None
    straggler = subprocess.Popen(["/bin/sh", "-c", 'for f; do echo $$ > "$f"; done; exec sleep 60', "sh",
                                  *map(str, stale.procs_files)])
    try:
        deadline = time.monotonic() + 5
        while straggler.pid not in stale.pids() and time.monotonic() < deadline:
            time.sleep(0.01)
        removed = host.sweep_stale()
        assert {p.name for p in removed} == {f"pool-{dead.pid}-t1-abc"}
        assert straggler.wait(timeout=5) == -9
        assert not any(p.parent.exists() for p in stale.procs_files)
        assert all(p.parent.exists() for p in mine.procs_files)
    finally:
        straggler.kill()
        straggler.wait()
        mine.remove()
        stale.remove()

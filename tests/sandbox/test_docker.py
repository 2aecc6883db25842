"""The docker driver's command line (unit), and a real run when an engine answers (skipped here:
this machine has the docker client but no engine)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.sandbox.conftest import run_spec
from worker.execution.base import DriverUnavailable, ExecutionSpec, Limits, Mount
from worker.execution.docker import DockerDriver, build_run_command
from worker.protocol import KillReason


def _spec(**kw) -> ExecutionSpec:
    base = {"task_id": "T1", "argv": ["python", "main.py", "--flag"], "scratch_dir": Path("/w/T1/scratch"),
                "output_dir": Path("/w/T1/output"),
                "mounts": [Mount(Path("/w/T1/program"), "/task/program"), Mount(Path("/w/T1/inputs"), "/task/inputs")],
                "env": {"SEED": "1"},
                "limits": Limits(wall_time_s=60, memory_bytes=512 * 1024**2, max_processes=100, cpu_time_s=9.5,
                              file_size_bytes=1024, open_files=64, scratch_bytes=2048, tmp_bytes=4096)}
    base.update(kw)
    return ExecutionSpec(**base)


def _pairs(cmd: list[str], flag: str) -> list[str]:
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == flag]


def test_command_line_isolates_and_limits():
    cmd = build_run_command(_spec(), "pool-t1-x", image="comp/image:1")
    assert cmd[:4] == ["docker", "run", "--name", "pool-t1-x"]
    assert cmd[-4:] == ["comp/image:1", "python", "main.py", "--flag"]
    assert _pairs(cmd, "--network") == ["none"]
    assert _pairs(cmd, "--cap-drop") == ["ALL"] and _pairs(cmd, "--security-opt") == ["no-new-privileges"]
    assert "--read-only" in cmd and _pairs(cmd, "--user") == ["65534:65534"]
    assert _pairs(cmd, "--memory") == [str(512 * 1024**2)] and _pairs(cmd, "--memory-swap") == [str(512 * 1024**2)]
    assert _pairs(cmd, "--pids-limit") == ["100"]
    assert set(_pairs(cmd, "--ulimit")) == {"core=0:0", "nofile=64:64", "fsize=1024:1024", "cpu=10:11"}
    assert _pairs(cmd, "--tmpfs") == ["/tmp:rw,nosuid,nodev,noexec,size=4096"]
    assert _pairs(cmd, "--mount") == [
        "type=bind,source=/w/T1/program,target=/task/program,readonly",
        "type=bind,source=/w/T1/inputs,target=/task/inputs,readonly",
        "type=tmpfs,target=/task/scratch,tmpfs-size=2048,tmpfs-mode=1777",
        "type=bind,source=/w/T1/output,target=/task/output",
    ]
    assert _pairs(cmd, "--workdir") == ["/task/scratch"]
    assert "SEED=1" in _pairs(cmd, "--env")
    assert "--gpus" not in cmd and "--rm" not in cmd  # kept until inspected for OOMKilled


def test_network_gpus_and_image_choice():
    cmd = build_run_command(_spec(network=True, gpus=2, image="task/own:2"), "n", engine="podman",
                            image="default/img", network="pool-egress")
    assert cmd[0] == "podman" and _pairs(cmd, "--network") == ["pool-egress"] and _pairs(cmd, "--gpus") == ["2"]
    assert "task/own:2" in cmd and "default/img" not in cmd


def test_bad_image_is_a_clear_error():
    with pytest.raises(ValueError, match="needs an image"):
        build_run_command(_spec(), "n")
    with pytest.raises(ValueError, match="not an image"):
        build_run_command(_spec(), "n", image="--privileged")


def _engine_problem() -> str | None:
    try:
        DockerDriver().check_available()
    except DriverUnavailable as exc:
        return str(exc)
    return None


def test_check_available_says_what_is_missing():
    problem = _engine_problem()
    if problem is None:
        pytest.skip("an engine is running here")
    assert "docker" in problem


ENGINE_PROBLEM = _engine_problem()


@pytest.mark.slow
@pytest.mark.skipif(ENGINE_PROBLEM is not None, reason=f"no container engine: {ENGINE_PROBLEM}")
def test_real_container_memory_kill_and_normal_run(make_task):
    image = "python:3.11-slim"
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False).returncode != 0:
        pytest.skip(f"image {image} not present locally (no registry access in tests)")
    driver = DockerDriver(image=image)
    task = make_task()
    ran = run_spec(driver, task.spec(["python", "-c", "x = b'x' * (600 * 2**20)"], memory_bytes=100 * 1024**2))
    assert ran.result.kill_reason is KillReason.MEMORY
    ran = run_spec(driver, task.spec(["python", "-c", "open('../output/a', 'w').write('1')"]))
    assert ran.result.succeeded and (task.output / "a").read_text() == "1"
    assert shutil.which("docker")

"""The bwrap driver when the agent is NOT root (the image's service runs as a dedicated user):
no uid switch, tmpfs scratch, rlimit fallbacks where no cgroup is delegated, network refused.
Run for real by executing the driver as uid 65534 in a child Python."""

from __future__ import annotations

import json
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sandbox.conftest import HAVE_BWRAP, IS_ROOT

REPO = Path(__file__).resolve().parents[2]
SCRIPT = r"""
import json, os, sys, tempfile
from dataclasses import replace
from pathlib import Path
from worker.execution.bwrap import BwrapDriver
from worker.execution.base import ExecutionSpec, Limits, Mount
from tests.sandbox.conftest import supervise

root = Path(tempfile.mkdtemp())
driver = BwrapDriver()
driver.check_available()
out = {"disk": driver.disk, "uid": driver.host_uid, "limits": driver.enforced_limits()}

def spec(i, argv):
    t = root / f"t{i}"
    for s in ("program", "inputs", "scratch", "output"):
        (t / s).mkdir(parents=True)
    return ExecutionSpec(task_id=f"n{i}", argv=argv, scratch_dir=t / "scratch", output_dir=t / "output",
                         mounts=[Mount(t / "program", "/task/program"), Mount(t / "inputs", "/task/inputs")],
                         limits=Limits(wall_time_s=20, memory_bytes=200 << 20, max_processes=64,
                                       scratch_bytes=8 << 20, tmp_bytes=8 << 20))

ran = supervise(driver.start(spec(0, ["/bin/sh", "-c", "id -u; echo hi > ../output/x"])), 20)
out["normal"] = [ran.result.exit_code, ran.out, os.listdir(root / "t0" / "output")]
ran = supervise(driver.start(spec(3, ["/bin/sh", "-c", "dd if=/dev/zero of=f bs=1M count=20; sleep 30"])), 20)
out["fill"] = [ran.result.kill_reason, ran.result.duration_s]
ran = supervise(driver.start(spec(1, ["python3", "-c", "x = b'x' * (600 * 2**20)"])), 20)
out["hog"] = [ran.result.exit_code, "MemoryError" in ran.err]
try:
    driver.start(replace(spec(2, ["true"]), network=True))
    out["network"] = "started"
except ValueError as exc:
    out["network"] = str(exc)
import shutil
shutil.rmtree(root)
print(json.dumps(out))
"""


def _python_for_nobody() -> list[str] | None:
    site_packages = ":".join(site.getsitepackages())
    for python in (sys.executable, "/usr/bin/python3"):
        cmd = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", "env",
               f"PYTHONPATH={REPO}:{site_packages}", "HOME=/tmp", python]
        probe = subprocess.run([*cmd, "-c", "import worker.execution.bwrap, pydantic"], capture_output=True,
                               check=False, cwd="/")
        if probe.returncode == 0:
            return cmd
    return None


@pytest.mark.skipif(not (HAVE_BWRAP and IS_ROOT), reason="needs bubblewrap, and root to become another user")
def test_driver_as_an_unprivileged_agent():
    cmd = _python_for_nobody()
    if cmd is None:
        pytest.skip("no Python interpreter with this repository's packages is usable by uid 65534 here")
    proc = subprocess.run([*cmd, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=False, cwd="/")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["uid"] == 65534 and out["disk"] == "tmpfs"
    assert "not root" in out["limits"]["uid"] and "NOT possible" in out["limits"]["network"]
    exit_code, stdout, outputs = out["normal"]
    assert exit_code == 0 and stdout.split() == ["65534"] and outputs == ["x"]
    reason, duration = out["fill"]
    assert reason == "disk" and duration < 10  # the tmpfs scratch is capped, and the fill is named
    if "cgroup" not in out["limits"]["memory"]:  # no delegated cgroup for this uid: the rlimit fallback
        assert out["limits"]["memory"].startswith("rlimit RLIMIT_AS")
        assert out["hog"] == [1, True]
    assert "not root" in out["network"]

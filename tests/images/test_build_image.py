"""scripts/build-image: the real script as a subprocess, with the real packer for validation and a fake
packer executable (machine-readable output like packer 1.6.6's) for builds and failures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts/build-image"
GALLERY_ID = ("/subscriptions/0000/resourceGroups/imgs/providers/Microsoft.Compute/galleries/computepools/"
              "images/compute-pools-worker-linux/versions/1.0.0")
MANAGED_ID = "/subscriptions/0000/resourceGroups/imgs/providers/Microsoft.Compute/images/worker-20261129"

FAKE_PACKER = r'''#!/usr/bin/env python3
import json, os, sys, time
with open(os.environ["FAKE_PACKER_RECORD"], "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "path": os.environ["PATH"]}) + "\n")
def mr(kind, *data):
    esc = [d.replace(",", "%!(PACKER_COMMA)").replace("\n", "\\n") for d in data]
    print(",".join([str(int(time.time())), "azure-arm.worker", kind, *esc]), flush=True)
if sys.argv[1] == "validate":
    print("The configuration is valid." if os.environ.get("FAKE_VALIDATE", "ok") == "ok" else "Error: broken")
    sys.exit(0 if os.environ.get("FAKE_VALIDATE", "ok") == "ok" else 1)
mr("ui", "say", "==> azure-arm.worker: Running builder ...")
mr("ui", "message", "    azure-arm.worker: ok: [default]")
mr("ui", "say", "==> azure-arm.worker: Provisioning with Ansible...")
if os.environ.get("FAKE_BUILD") == "fail":
    mr("ui", "error", "==> azure-arm.worker: ansible-playbook failed, exit 2")
    mr("error-count", "1")
    sys.exit(1)
mr("artifact-count", "1")
mr("artifact", "0", "builder-id", "Azure.ResourceManagement.VMImage")
mr("artifact", "0", "id", os.environ["FAKE_MANAGED_ID"])
mr("artifact", "0", "string", "Azure.ResourceManagement.VMImage:\n\nOSType: Linux\nManagedImageId: "
   + os.environ["FAKE_MANAGED_ID"] + "\nManagedImageSharedImageGalleryId: " + os.environ["FAKE_GALLERY_ID"] + "\n")
mr("artifact", "0", "end")
'''


@pytest.fixture
def fake_packer(tmp_path: Path) -> tuple[Path, Path]:
    exe = tmp_path / "bin" / "packer"
    exe.parent.mkdir()
    exe.write_text(FAKE_PACKER)
    exe.chmod(0o755)
    return exe, tmp_path / "packer-calls.jsonl"


@pytest.fixture
def var_file(tmp_path: Path) -> Path:
    wheel = tmp_path / "compute_pools-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    path = tmp_path / "my.pkrvars.hcl"
    text = (REPO / "images/linux/example.pkrvars.hcl").read_text()
    path.write_text(text.replace('"dist/compute_pools-0.1.0-py3-none-any.whl"', f'"{wheel}"'))
    return path


def build_image(*args: str, env: dict[str, str] | None = None, script: Path = SCRIPT,
                python: str = sys.executable, cwd: Path = REPO) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PKR_VAR_")}
    full_env.update(env or {})
    return subprocess.run([python, str(script), *args], capture_output=True, text=True, env=full_env, cwd=cwd,
                          timeout=180, check=False)


def calls(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


@pytest.mark.skipif(shutil.which("packer") is None, reason="packer is not installed")
@pytest.mark.parametrize("os_name", ["linux", "windows"])
def test_validate_only_with_the_real_packer(os_name, tmp_path):
    log = tmp_path / "validate.log"
    result = build_image(os_name, "--validate-only", "--var-file", f"images/{os_name}/example.pkrvars.hcl",
                         "--log-file", str(log))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "template is valid" in result.stdout
    assert log.exists()


def test_build_streams_progress_logs_and_reports_the_gallery_image(fake_packer, var_file, tmp_path):
    exe, record = fake_packer
    log = tmp_path / "build.log"
    result = build_image("linux", "--var-file", str(var_file), "--var", "image_version=1.0.1", "--packer", str(exe),
                         "--log-file", str(log), env={"FAKE_PACKER_RECORD": str(record), "FAKE_GALLERY_ID": GALLERY_ID,
                                                      "FAKE_MANAGED_ID": MANAGED_ID})
    assert result.returncode == 0, result.stderr
    assert f"image: {GALLERY_ID}" in result.stdout
    assert f"managed image: {MANAGED_ID}" in result.stdout
    assert "==> azure-arm.worker: Provisioning with Ansible..." in result.stdout  # progress lines
    assert "ok: [default]" not in result.stdout and "ok: [default]" in log.read_text()  # details: log only
    validate, build = calls(record)
    assert validate["argv"][0] == "validate" and build["argv"][:2] == ["build", "-machine-readable"]
    assert build["cwd"] == str(REPO / "images/linux")
    assert ["-var-file", str(var_file)] == build["argv"][build["argv"].index("-var-file"):][:2]
    assert "image_version=1.0.1" in build["argv"]
    wheel_arg = next(a for a in build["argv"] if a.startswith("agent_wheel="))
    assert Path(wheel_arg.split("=", 1)[1]).is_absolute()
    # packer's ansible provisioner finds ansible-playbook on the PATH it was given
    assert any((Path(d) / "ansible-playbook").exists() for d in build["path"].split(os.pathsep))


def test_build_failure_says_why_and_where_the_log_is(fake_packer, var_file, tmp_path):
    exe, record = fake_packer
    log = tmp_path / "build.log"
    result = build_image("linux", "--var-file", str(var_file), "--packer", str(exe), "--log-file", str(log),
                         env={"FAKE_PACKER_RECORD": str(record), "FAKE_BUILD": "fail"})
    assert result.returncode == 1
    assert "ansible-playbook failed" in result.stderr and str(log) in result.stderr
    assert "image:" not in result.stdout


def test_invalid_template_stops_before_building(fake_packer, var_file, tmp_path):
    exe, record = fake_packer
    result = build_image("linux", "--var-file", str(var_file), "--packer", str(exe), "--log-file",
                         str(tmp_path / "l.log"), env={"FAKE_PACKER_RECORD": str(record), "FAKE_VALIDATE": "bad"})
    assert result.returncode == 1 and "does not validate" in result.stderr
    assert [c["argv"][0] for c in calls(record)] == ["validate"]


def test_missing_packer(tmp_path, var_file):
    result = build_image("linux", "--var-file", str(var_file), "--packer", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert "packer is not installed" in result.stderr


def test_missing_azure_credentials(fake_packer, tmp_path):
    exe, record = fake_packer
    partial = tmp_path / "partial.pkrvars.hcl"
    partial.write_text('subscription_id = "0000"\nimage_version = "1.0.0"\n')
    result = build_image("linux", "--var-file", str(partial), "--packer", str(exe),
                         env={"FAKE_PACKER_RECORD": str(record)})
    assert result.returncode == 2
    assert "Azure credentials are missing: tenant_id, client_id, client_secret" in result.stderr
    assert calls(record) == []  # nothing started


def test_credentials_from_the_environment(fake_packer, var_file, tmp_path):
    exe, record = fake_packer
    text = var_file.read_text().replace('client_secret          = "from-the-environment-preferably"\n', "")
    var_file.write_text(text)
    env = {"FAKE_PACKER_RECORD": str(record), "FAKE_GALLERY_ID": GALLERY_ID, "FAKE_MANAGED_ID": MANAGED_ID}
    assert build_image("linux", "--var-file", str(var_file), "--packer", str(exe), env=env).returncode == 2
    env["PKR_VAR_client_secret"] = "s3cret"
    result = build_image("linux", "--var-file", str(var_file), "--packer", str(exe), "--log-file",
                         str(tmp_path / "b.log"), env=env)
    assert result.returncode == 0, result.stderr


def test_missing_wheel(fake_packer, var_file, tmp_path):
    exe, record = fake_packer
    result = build_image("linux", "--var-file", str(var_file), "--var", "agent_wheel=/nonexistent.whl",
                         "--packer", str(exe), env={"FAKE_PACKER_RECORD": str(record)})
    assert result.returncode == 2 and "pip wheel --no-deps" in result.stderr


def test_missing_ansible(fake_packer, var_file, tmp_path):
    """A checkout without .venv, run by a Python without Ansible, on a PATH without ansible-playbook."""
    exe, _ = fake_packer
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy2(SCRIPT, checkout / "scripts/build-image")
    shutil.copytree(REPO / "images", checkout / "images")
    result = build_image("linux", "--var-file", str(var_file), "--packer", str(exe),
                         script=checkout / "scripts/build-image", python="/usr/bin/python3",
                         env={"PATH": "/usr/bin:/bin"}, cwd=checkout)
    assert result.returncode == 2
    assert "ansible-playbook is not installed" in result.stderr

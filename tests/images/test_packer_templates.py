"""The Packer templates: formatted, and valid for Debian's packer 1.6.6 (Azure itself is not reachable:
builds are untested here; Windows is validated only)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKER = shutil.which("packer")
pytestmark = pytest.mark.skipif(PACKER is None, reason="packer is not installed (scripts/install-system-deps)")


def packer(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # The ansible provisioner makes `packer validate` run `ansible-playbook --version`.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "CHECKPOINT_DISABLE": "1"}
    return subprocess.run([PACKER, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("os_name", ["linux", "windows"])
def test_template_validates(os_name):
    template = REPO / "images" / os_name
    result = packer("validate", "-var-file=example.pkrvars.hcl", ".", cwd=template)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("os_name", ["linux", "windows"])
def test_template_is_formatted(os_name):
    result = packer("fmt", "-check", ".", cwd=REPO / "images" / os_name)
    assert result.returncode == 0, f"run `packer fmt images/{os_name}`: {result.stdout}"


@pytest.mark.parametrize("os_name", ["linux", "windows"])
def test_validate_catches_a_missing_variable(os_name, tmp_path):
    """The check above can fail: without the var file the required variables are unset."""
    copy = tmp_path / "images" / os_name
    shutil.copytree(REPO / "images" / os_name, copy)
    (tmp_path / "playbooks").symlink_to(REPO / "playbooks")
    result = packer("validate", ".", cwd=copy)
    assert result.returncode != 0
    assert "subscription_id" in result.stdout + result.stderr


def test_split_into_variables_source_build():
    for os_name in ("linux", "windows"):
        files = {p.name for p in (REPO / "images" / os_name).glob("*.pkr.hcl")}
        assert files == {"variables.pkr.hcl", "source.pkr.hcl", "build.pkr.hcl"}, os_name

"""Image tests for a Linux worker (pytest-testinfra), driven by the same toolset file as ml_base.

Run against a machine: ``pytest images/linux/tests --hosts=ssh://root@HOST`` (Packer runs them on the
build VM; tests/playbooks runs them on a booted root filesystem). Checks that need an agent config
(present on provisioned workers, absent from generalized images) are skipped without one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

TOOLSET = json.loads((Path(__file__).resolve().parents[3] / "playbooks/toolset/toolset-linux.json").read_text())
MANIFEST = "/etc/compute-pools/toolset.json"
USER = "pool-agent"
SERVICE = "pool-agent"
VENV = "/opt/pool-agent/venv"
CONFIG = "/etc/pool-agent/agent.yaml"
HOME = "/var/lib/pool-agent"


def selected(section: str, profile: str, features: list[str]) -> list[dict]:
    """The toolset entries ml_base installs for a profile and features (same rule as the role)."""
    return [e for e in TOOLSET.get(section, [])
            if profile in e["profiles"] and ("feature" not in e or e["feature"] in features)]


@pytest.fixture(scope="module")
def manifest(host) -> dict:
    f = host.file(MANIFEST)
    assert f.exists, f"{MANIFEST} is missing: ml_base did not run"
    return json.loads(f.content_string)


@pytest.fixture(scope="module")
def has_config(host) -> bool:
    return host.file(CONFIG).exists


# --- ml_base ------------------------------------------------------------------------------------
def test_manifest_matches_the_toolset(manifest):
    for section in ("apt_packages", "python_packages"):
        assert manifest[section] == selected(section, manifest["profile"], manifest["features"]), section


def test_system_packages_installed(host, manifest):
    missing = [e["name"] for e in manifest["apt_packages"] if not host.package(e["name"]).is_installed]
    assert not missing, f"not installed: {missing}"


def test_python_packages_importable_at_their_versions(host, manifest):
    python = f"{TOOLSET['ml_env']}/bin/python"
    for entry in manifest["python_packages"]:
        cmd = host.run(f"{python} -c 'import importlib.metadata as m, {entry['import']}; print(m.version(\"{entry['name']}\"))'")
        assert cmd.rc == 0, f"{entry['name']}: {cmd.stderr}"
        version = cmd.stdout.strip().split("+")[0]
        assert version in SpecifierSet(entry.get("version", "")), f"{entry['name']} {version} not {entry.get('version')}"


def test_python_on_path_is_the_ml_environment(host, manifest):
    assert host.file(TOOLSET["ml_python_link"]).contains(f"exec {TOOLSET['ml_env']}/bin/python")
    cmd = host.run(f"runuser -u {USER} -- env PATH=/usr/local/bin:/usr/bin:/bin python -c 'import numpy; print(numpy.arange(4).sum())'")
    assert cmd.rc == 0 and cmd.stdout.strip() == "6", cmd.stderr


# --- worker_agent -------------------------------------------------------------------------------
def test_service_user(host):
    user = host.user(USER)
    assert user.exists
    assert user.shell in ("/usr/sbin/nologin", "/sbin/nologin")
    assert user.uid < 1000, "not a system account"
    assert user.home == HOME


def test_state_directories_belong_to_the_service(host):
    for path in (HOME, f"{HOME}/work", f"{HOME}/cache"):
        d = host.file(path)
        assert d.is_directory and d.user == USER and d.mode == 0o750, path


def test_install_is_not_writable_by_the_service(host):
    d = host.file(VENV)
    assert d.user == "root" and not d.mode & 0o022
    assert host.run(f"runuser -u {USER} -- touch {VENV}/x").rc != 0


def test_agent_installed(host):
    cmd = host.run(f"{VENV}/bin/pool agent --help")
    assert cmd.rc == 0 and "--config" in cmd.stdout, cmd.stderr


def test_unit_enabled_and_hardened(host):
    assert host.service(SERVICE).is_enabled
    props = dict(line.split("=", 1) for line in host.check_output(
        f"systemctl show {SERVICE} -p NoNewPrivileges -p ProtectSystem -p PrivateTmp -p Delegate -p User "
        "-p Restart -p KillMode -p KillSignal -p TimeoutStopUSec -p ExecStart").splitlines())
    assert props["NoNewPrivileges"] == "yes"
    assert props["ProtectSystem"] == "strict"
    assert props["PrivateTmp"] == "yes"
    assert props["Delegate"] == "yes"
    assert props["User"] == USER
    assert props["Restart"] == "always"
    assert props["KillMode"] == "mixed" and props["KillSignal"] == "15"
    assert f"--config {CONFIG}" in props["ExecStart"]


def test_config_private_and_valid(host, has_config):
    if not has_config:
        pytest.skip("no agent config on this machine (a generalized image gets it at deployment)")
    f = host.file(CONFIG)
    assert f.user == USER and f.group == USER and f.mode == 0o600
    cmd = host.run(f"runuser -u {USER} -- {VENV}/bin/pool agent --config {CONFIG} --check")
    assert cmd.rc == 0, cmd.stdout + cmd.stderr


def test_agent_running(host, has_config):
    if not has_config:
        pytest.skip("no agent config on this machine: the service waits for one (ConditionPathExists)")
    assert host.service(SERVICE).is_running


# --- sandbox ------------------------------------------------------------------------------------
def test_bubblewrap_works_under_the_service_sandboxing(host):
    """bwrap as the service user with the unit's own hardening (systemd-run copies its properties)."""
    props = f"-p User={USER} -p NoNewPrivileges=yes -p ProtectSystem=strict -p ProtectHome=yes -p PrivateTmp=yes " \
            "-p PrivateDevices=yes -p ProtectKernelModules=yes -p ProtectKernelLogs=yes -p ProtectClock=yes " \
            "-p RestrictSUIDSGID=yes -p LockPersonality=yes -p SystemCallArchitectures=native " \
            "-p CapabilityBoundingSet= -p Delegate=yes"
    cmd = host.run(f"systemd-run --quiet --wait --pipe --collect {props} "
                   "bwrap --unshare-all --die-with-parent --hostname sandbox --ro-bind / / --proc /proc --dev /dev --tmpfs /tmp "
                   "-- /bin/sh -c 'id -u; hostname'")
    assert cmd.rc == 0, cmd.stderr
    assert cmd.stdout.split() == [str(host.user(USER).uid), "sandbox"]


def test_user_namespaces_allowed(host):
    assert int(host.file("/proc/sys/user/max_user_namespaces").content_string) > 0
    assert host.file("/etc/sysctl.d/60-compute-pools-sandbox.conf").contains("user.max_user_namespaces")


# --- os_updates ---------------------------------------------------------------------------------
def test_unattended_security_updates(host):
    assert host.package("unattended-upgrades").is_installed
    assert host.file("/etc/apt/apt.conf.d/20auto-upgrades").contains('Unattended-Upgrade "1"')
    conf = host.file("/etc/apt/apt.conf.d/52compute-pools-unattended-upgrades")
    assert conf.contains("Debian-Security") and conf.contains('Automatic-Reboot "false"')

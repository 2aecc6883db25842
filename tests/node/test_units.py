"""Command construction (Linux shell, --become, Windows PowerShell — the latter UNTESTED on Windows) and
inventory parsing, without SSH."""

from __future__ import annotations

import base64
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from worker.cli import app
from worker.node.inventory import InventoryError, Target, load_inventory, parse_host, select_targets
from worker.node.remote import Remote, powershell


def decode_powershell(command: str) -> str:
    words = command.split()
    assert words[:5] == ["powershell", "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass"]
    assert words[5] == "-EncodedCommand" and len(words) == 7
    return base64.b64decode(words[6]).decode("utf-16-le")


LINUX = Target(name="w1", address="10.0.0.4", user="ops")
WINDOWS = Target(name="win1", address="10.0.0.5", user="Administrator", windows=True)


def test_linux_commands_follow_the_roles_paths():
    remote = Remote(LINUX)
    assert remote.status() == "/opt/pool-agent/venv/bin/pool agent status --json --config /etc/pool-agent/agent.yaml"
    assert remote.drain(30) == "/opt/pool-agent/venv/bin/pool agent drain --wait 30 --config /etc/pool-agent/agent.yaml"
    assert remote.restart() == "systemctl restart pool-agent"
    assert remote.logs(20, True) == "journalctl -u pool-agent --no-pager -o short-iso -n 20 -f"
    assert remote.exec(["echo", "a b"]) == "echo 'a b'"
    assert remote.exec(["echo $HOME"]) == "echo $HOME"  # one word: a shell command line as given
    install = remote.install_wheel("/tmp/pool-node-x/compute_pools-0.2-py3-none-any.whl",
                                   "compute_pools-0.2-py3-none-any.whl")
    assert "install -m 0644 /tmp/pool-node-x/compute_pools-0.2-py3-none-any.whl " \
           "/opt/pool-agent/dist/compute_pools-0.2-py3-none-any.whl" in install
    assert "/opt/pool-agent/venv/bin/pip install --quiet --no-deps --force-reinstall" in install
    assert "rm -rf /tmp/pool-node-x" in install


def test_become_wraps_in_sudo_without_prompting_and_inventory_overrides_paths():
    target = Target(name="w", address="h", vars={"worker_agent_venv": "/srv/agent venv",
                                                 "worker_agent_service_name": "agent2"})
    remote = Remote(target, become=True)
    status = remote.status()
    assert status.startswith("sudo -n sh -c ")
    inner = shlex.split(status)[4]
    assert shlex.split(inner)[:3] == ["/srv/agent venv/bin/pool", "agent", "status"]
    assert remote.restart() == "sudo -n sh -c 'systemctl restart agent2'"
    assert remote.service_state() == "systemctl is-active agent2 || true"  # no root needed to ask


def test_windows_commands_are_encoded_powershell():
    remote = Remote(WINDOWS, become=True)  # --become is ignored on Windows (log in as an administrator)
    script = decode_powershell(remote.status())
    assert "$ErrorActionPreference = 'Stop'" in script
    assert r"& 'C:\pool-agent\venv\Scripts\pool.exe' agent 'status' '--json' --config " \
           r"'C:\ProgramData\pool-agent\agent.yaml'" in script
    assert script.rstrip().endswith("exit $LASTEXITCODE")
    assert "Restart-Service -Name 'pool-agent'" in decode_powershell(remote.restart())
    assert "Get-Service -Name 'pool-agent'" in decode_powershell(remote.service_state())
    logs = decode_powershell(remote.logs(30, True))
    assert r"Get-Content -Path 'C:\ProgramData\pool-agent\agent.log' -Tail 30 -Wait" in logs
    install = decode_powershell(remote.install_wheel("C:/pool-agent/dist/x.whl", "x.whl"))
    assert r"& 'C:\pool-agent\venv\Scripts\python.exe' -m pip install --no-deps --force-reinstall" in install
    assert r"'C:\pool-agent\dist\x.whl'" in install
    assert remote.upload_dir("t") == "C:/pool-agent/dist" and remote.sftp_path("C:/a/b") == "/C:/a/b"
    assert decode_powershell(remote.exec(["Get-Date;", "hostname"])).splitlines()[1] == "Get-Date; hostname"


def test_powershell_quoting_survives_quotes():
    script = decode_powershell(powershell("Write-Output 'it''s' \"x\""))
    assert script.endswith("Write-Output 'it''s' \"x\"")


def test_parse_host():
    assert parse_host("root@10.1.2.3:2222") == Target(name="10.1.2.3:2222", address="10.1.2.3", user="root", port=2222)
    assert parse_host("node7").where == "node7:22"
    assert parse_host("[::1]:2200").address == "::1"
    with pytest.raises(InventoryError):
        parse_host("a b")


def test_ini_and_yaml_inventories_give_the_same_targets(tmp_path: Path):
    ini = tmp_path / "hosts.ini"
    ini.write_text("""
[linux]
gpu-1 ansible_host=10.0.0.1 ansible_port=2201
gpu-2 ansible_host=10.0.0.2 ansible_ssh_private_key_file=~/keys/pool
[windows]
win-1 ansible_host=10.0.0.9 ansible_shell_type=powershell
[linux:vars]
ansible_user=ops
worker_agent_venv=/srv/venv
[all:vars]
ansible_user=admin
""")
    yml = tmp_path / "hosts.yml"
    yml.write_text("""
all:
  vars: {ansible_user: admin}
  children:
    linux:
      vars: {ansible_user: ops, worker_agent_venv: /srv/venv}
      hosts:
        gpu-1: {ansible_host: 10.0.0.1, ansible_port: 2201}
        gpu-2: {ansible_host: 10.0.0.2, ansible_ssh_private_key_file: ~/keys/pool}
    windows:
      hosts:
        win-1: {ansible_host: 10.0.0.9, os: windows}
""")
    for path in (ini, yml):
        targets = {t.name: t for t in load_inventory(path)}
        assert set(targets) == {"gpu-1", "gpu-2", "win-1"}
        assert targets["gpu-1"].where == "ops@10.0.0.1:2201" and not targets["gpu-1"].windows
        assert targets["gpu-2"].key_file == str(Path("~/keys/pool").expanduser())
        assert targets["gpu-1"].var("worker_agent_venv") == "/srv/venv"
        assert targets["win-1"].windows and targets["win-1"].user == "admin" and targets["win-1"].port == 22
        assert [t.name for t in load_inventory(path, "linux:!gpu-2")] == ["gpu-1"]
        assert [t.name for t in load_inventory(path, "gpu*")] == ["gpu-1", "gpu-2"]
        assert sorted(t.name for t in load_inventory(path, "win-1,gpu-2")) == ["gpu-2", "win-1"]


def test_targets_need_a_source_and_limit_applies_to_hosts(tmp_path: Path):
    with pytest.raises(InventoryError, match="no target hosts"):
        select_targets(None, [], None)
    with pytest.raises(InventoryError, match="does not exist"):
        select_targets(tmp_path / "missing.ini", [], None)
    picked = select_targets(None, ["a.example", "b.example"], "a*")
    assert [t.name for t in picked] == ["a.example"]


@pytest.mark.parametrize("command", [["node"], ["node", "status"], ["node", "logs"], ["node", "drain"],
                                     ["node", "resume"], ["node", "restart"], ["node", "upgrade-agent"],
                                     ["node", "exec"], ["node", "list"], ["agent", "status"], ["agent", "drain"],
                                     ["agent", "resume"]], ids=" ".join)
def test_every_command_explains_itself(command):
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Usage: pool " + " ".join(command) in result.output


def test_pool_help_does_not_import_paramiko_or_ansible():
    import subprocess
    import sys

    code = "import sys; from worker.cli import app; print('paramiko' in sys.modules, 'ansible' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_list_connects_to_nothing(tmp_path: Path):
    ini = tmp_path / "hosts.ini"
    ini.write_text("[w]\nw1 ansible_host=192.0.2.1 ansible_user=ops\n")  # TEST-NET: nothing answers
    result = CliRunner().invoke(app, ["node", "-i", str(ini), "--jump", "bastion.example", "list"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "192.0.2.1" in result.output and "bastion.example" in result.output

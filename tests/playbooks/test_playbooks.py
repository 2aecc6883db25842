"""Playbooks and roles without a machine: lint, syntax, the agent config the role renders (with the
role's own template and the agent's loader as validator), and the toolset/Pester consistency that is
all Windows gets here (untested on Windows)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.playbooks.harness import BIN, PLAYBOOKS, REPO, ansible_env, run_playbook, tail
from worker.config import load_agent_config

PLAYBOOK_FILES = ["image-linux.yml", "image-windows.yml", "install-worker.yml", "patch.yml", "rotate-credentials.yml"]


@pytest.mark.slow
def test_ansible_lint_production_profile():
    proc = subprocess.run([str(BIN / "ansible-lint"), "--profile", "production", "--nocolor"], cwd=PLAYBOOKS,
                          capture_output=True, text=True, env=ansible_env(), timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_syntax_check_with_the_example_inventory():
    for playbook in PLAYBOOK_FILES:
        proc = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", "inventory/example.yml",
                               playbook], cwd=PLAYBOOKS, capture_output=True, text=True, env=ansible_env(),
                              timeout=120, check=False)
        assert proc.returncode == 0, f"{playbook}: {proc.stdout}{proc.stderr}"


def test_roles_are_conventional():
    for role in ("ml_base", "worker_agent", "sandbox", "os_updates"):
        base = PLAYBOOKS / "roles" / role
        assert (base / "defaults/main.yml").exists() and (base / "tasks/main.yml").exists(), role
        meta = yaml.safe_load((base / "meta/main.yml").read_text())
        platforms = {p["name"] for p in meta["galaxy_info"]["platforms"]}
        assert {"Debian", "Ubuntu", "Windows"} <= platforms, role


# --- the agent config, rendered by the role ---------------------------------------------------------
RENDER_PLAY = """
- name: Render the agent config with the worker_agent role
  hosts: localhost
  connection: local
  gather_facts: true
  tasks:
    - name: Render
      ansible.builtin.include_role:
        name: worker_agent
        tasks_from: config.yml
"""


def _render(tmp_path: Path, servicebus: dict, extra: dict | None = None) -> tuple[subprocess.CompletedProcess, Path]:
    play = tmp_path / "render.yml"
    play.write_text(RENDER_PLAY)
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    config = tmp_path / "etc" / "agent.yaml"
    config.parent.mkdir(exist_ok=True)
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True,
                                                     check=True).stdout.strip()
    group = subprocess.run(["id", "-gn"], capture_output=True, text=True, check=True).stdout.strip()
    log = tmp_path / "ansible.log"
    variables = {
        "worker_agent_servicebus": servicebus, "worker_agent_config_path": str(config),
        "worker_agent_user": user, "worker_agent_group": group, "worker_agent_venv": str(BIN.parent),
        "worker_agent_service_state": "stopped", "worker_agent_pool": "demo", **(extra or {}),
    }
    # run_playbook takes playbooks relative to playbooks/: point at the temporary play by absolute path
    proc = run_playbook(str(play), inventory, log, variables, env={"ANSIBLE_ROLES_PATH": str(PLAYBOOKS / "roles")})
    return proc, config


SERVICEBUS = {
    "auth": "connection_string",
    "task_queue": "demo-tasks",
    "response_queue": "demo-responses",
    "task_queue_connection_string": "Endpoint=sb://127.0.0.1:5672/;SharedAccessKeyName=listen;SharedAccessKey=k1;EntityPath=demo-tasks",
    "response_queue_connection_string": "Endpoint=sb://127.0.0.1:5672/;SharedAccessKeyName=send;SharedAccessKey=k2;EntityPath=demo-responses",
}


@pytest.mark.slow
def test_rendered_config_is_the_agents_format(tmp_path):
    proc, config = _render(tmp_path, SERVICEBUS, {
        "worker_agent_execution": {"driver": "bwrap", "limits": {"memory_bytes": "2GiB"}},
        "worker_agent_config_extra": {"heartbeat_interval_s": 3},
        "worker_agent_worker_id": "box-1",
    })
    assert proc.returncode == 0, tail(tmp_path / "ansible.log")
    cfg = load_agent_config(config)
    assert cfg.servicebus.task_queue == "demo-tasks"
    assert cfg.servicebus.response_queue_connection_string == SERVICEBUS["response_queue_connection_string"]
    assert cfg.execution.driver == "bwrap" and cfg.execution.limits.memory_bytes == 2 * 1024**3
    assert cfg.heartbeat_interval_s == 3 and cfg.worker_id == "box-1" and cfg.pool == "demo"
    assert cfg.shutdown_grace_s == 300 and cfg.cache.max_bytes == 10 * 1024**3
    assert str(cfg.work_dir) == "/var/lib/pool-agent/work"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    # the secrets never reach Ansible's output
    assert "SharedAccessKey=k1" not in (tmp_path / "ansible.log").read_text()


@pytest.mark.slow
def test_invalid_config_is_refused_and_the_old_one_kept(tmp_path):
    proc, config = _render(tmp_path, SERVICEBUS)
    assert proc.returncode == 0, tail(tmp_path / "ansible.log")
    before = config.read_text()
    broken = {k: v for k, v in SERVICEBUS.items() if k != "response_queue_connection_string"}
    proc, config = _render(tmp_path, broken)
    assert proc.returncode != 0
    assert config.read_text() == before
    assert "failed to validate" in (tmp_path / "ansible.log").read_text()


# --- the toolset selection: the role's rule and the image tests' rule agree --------------------------
SELECTIONS = [("minimal", []), ("full", []), ("full", ["torch"]), ("full", ["torch", "cuda"])]


def test_role_selects_what_the_image_tests_expect(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("image_tests", REPO / "images/linux/tests/test_image.py")
    image_tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(image_tests)

    plays = []
    for i, (profile, features) in enumerate(SELECTIONS):
        plays.append({
            "name": f"Select {profile} {features}", "hosts": "localhost", "connection": "local", "gather_facts": False,
            "vars": {"ml_base_profile": profile, "ml_base_features": features,
                     "ml_base_toolset_file": str(PLAYBOOKS / "toolset/toolset-linux.json")},
            "tasks": [
                {"name": "Select", "ansible.builtin.include_role": {"name": "ml_base", "tasks_from": "select.yml"}},
                {"name": "Save", "ansible.builtin.copy": {"content": "{{ ml_base_selected | to_json }}",
                                                          "dest": str(tmp_path / f"selected-{i}.json"),
                                                          "mode": "0644"}},
            ],
        })
    play = tmp_path / "select.yml"
    play.write_text(yaml.safe_dump(plays, sort_keys=False))
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    proc = run_playbook(str(play), inventory, tmp_path / "ansible.log")
    assert proc.returncode == 0, tail(tmp_path / "ansible.log")
    for i, (profile, features) in enumerate(SELECTIONS):
        got = json.loads((tmp_path / f"selected-{i}.json").read_text())
        for section in ("apt_packages", "python_packages"):
            assert got[section] == image_tests.selected(section, profile, features), (profile, features, section)
    full_torch = json.loads((tmp_path / "selected-2.json").read_text())
    assert "torch" in [p["name"] for p in full_torch["python_packages"]]
    assert "nvidia-driver" not in [p["name"] for p in full_torch["apt_packages"]]


# --- toolsets and the Windows side (static: no Windows machine here) --------------------------------
def _toolset(name: str) -> dict:
    return json.loads((PLAYBOOKS / "toolset" / f"toolset-{name}.json").read_text())


@pytest.mark.parametrize("name", ["linux", "windows"])
def test_toolset_entries_are_well_formed(name):
    toolset = _toolset(name)
    for section in ("apt_packages", "choco_packages", "python_packages"):
        for entry in toolset.get(section, []):
            assert set(entry["profiles"]) <= {"minimal", "full"}, entry
            assert entry["name"] and ("import" in entry or section != "python_packages"), entry
    minimal = [e["name"] for e in toolset["python_packages"] if "minimal" in e["profiles"] and "feature" not in e]
    assert "numpy" in minimal


def test_pester_tests_match_the_roles_and_toolset():
    pester = (REPO / "images/windows/tests/Worker.Tests.ps1").read_text()
    defaults = yaml.safe_load((PLAYBOOKS / "roles/worker_agent/defaults/main.yml").read_text())
    toolset = _toolset("windows")

    def norm(path: str) -> str:
        return path.replace("\\", "/")

    assert f"MlPython = '{norm(toolset['ml_env'])}/Scripts/python.exe'" in pester
    assert f"ConfigPath = '{norm(defaults['worker_agent_win_config_path'])}'" in pester
    assert f"AgentDir = '{norm(defaults['worker_agent_win_dir'])}'" in pester
    assert f"Name='{defaults['worker_agent_service_name']}'" in pester
    assert "toolset-windows.json" in pester
    code = re.sub(r"'[^']*'|\"[^\"]*\"|#.*", "", pester)  # brackets balance outside strings and comments
    for open_, close in ("{}", "()", "[]"):
        assert code.count(open_) == code.count(close), open_

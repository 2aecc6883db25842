"""What a worker VM receives at first boot: the agent config, rendered in exactly the agent's format.

The config is built as a ``worker.config.AgentConfig`` and written with ``dump_agent_config`` — the
same loader the agent uses accepts it. Linux gets a cloud-init document (the config file, a
termination watcher, and either a restart of the image's agent service or, on a marketplace image,
the install playbook); Windows gets the bare config as custom data, which Azure stores in
``C:\\AzureData\\CustomData.bin`` and a Custom Script extension moves into place (see workers.py).

Paths, user and service names follow playbooks/roles/worker_agent/defaults/main.yml.
"""

from __future__ import annotations

import base64
import json
import posixpath
import shlex
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from worker.config import AgentConfig, dump_agent_config, parse_agent_config
from worker.stackconfig import InstallSettings

LINUX_CONFIG_PATH = "/etc/pool-agent/agent.yaml"
WINDOWS_CONFIG_PATH = r"C:\ProgramData\pool-agent\agent.yaml"
WINDOWS_WORK_DIR = r"C:\ProgramData\pool-agent\work"
SERVICE_USER = "pool-agent"
BOOTSTRAP_DIR = "/var/lib/pool-bootstrap"
WATCHER_PATH = "/usr/local/lib/pool-agent/termination_watch.py"

DEFAULT_DRIVER = {"linux": "bwrap", "windows": "jobobject"}  # sandboxed by default: code from strangers


@dataclass(frozen=True)
class QueueAccess:
    """How the agent reaches its two queues (plain values: resolved inside an ``apply``)."""

    task_queue: str
    response_queue: str
    auth: str = "connection_string"
    task_queue_connection_string: str | None = None
    response_queue_connection_string: str | None = None
    fully_qualified_namespace: str | None = None
    managed_identity_client_id: str | None = None


def build_agent_config(competition: str, os: str, access: QueueAccess, extra: dict[str, Any]) -> AgentConfig:
    """The AgentConfig of a pool's workers; ``extra`` holds the stack's other agent settings."""
    servicebus: dict[str, Any] = {"auth": access.auth, "task_queue": access.task_queue,
                                  "response_queue": access.response_queue}
    if access.auth == "connection_string":
        servicebus["task_queue_connection_string"] = access.task_queue_connection_string
        servicebus["response_queue_connection_string"] = access.response_queue_connection_string
    else:
        servicebus["fully_qualified_namespace"] = access.fully_qualified_namespace
        servicebus["managed_identity_client_id"] = access.managed_identity_client_id
    data: dict[str, Any] = {**extra, "pool": competition, "servicebus": servicebus}
    data.setdefault("execution", {})
    data["execution"] = {"driver": DEFAULT_DRIVER[os], **data["execution"]}
    if os == "windows":
        data.setdefault("work_dir", WINDOWS_WORK_DIR)
    return parse_agent_config(data, f"agent config for pool {competition}")


def _watcher_source() -> str:
    return resources.files("infra").joinpath("termination_watch.py").read_text()


def linux_cloud_init(config: AgentConfig, *, config_path: str = LINUX_CONFIG_PATH, service: str = "pool-agent",
                     install: InstallSettings | None = None) -> str:
    """A ``#cloud-config`` document. ``install`` set = marketplace image: run the install playbook."""
    agent_yaml = dump_agent_config(config)
    owner = f"{SERVICE_USER}:{SERVICE_USER}"
    watcher_unit = "\n".join([
        "[Unit]",
        "Description=Hand the current task back before Azure deletes or evicts this VM",
        "After=network-online.target",
        "[Service]",
        f"ExecStart=/usr/bin/python3 {WATCHER_PATH} --stop-command 'systemctl stop {service}'",
        "Restart=always",
        "RestartSec=5",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])
    finish = [
        # The file is written by cloud-init as root; the service user must own it (mode stays 0600).
        f"chown {owner} {shlex.quote(config_path)}",
        "systemctl daemon-reload",
        "systemctl enable --now pool-termination-watch.service",
        f"systemctl enable {service}",
        f"systemctl restart {service}",
    ]
    files: list[dict[str, Any]] = [
        {"path": config_path, "owner": "root:root", "permissions": "0600", "encoding": "b64",
         "content": base64.b64encode(agent_yaml.encode()).decode()},
        {"path": WATCHER_PATH, "owner": "root:root", "permissions": "0755", "content": _watcher_source()},
        {"path": "/etc/systemd/system/pool-termination-watch.service", "permissions": "0644",
         "content": watcher_unit},
    ]
    document: dict[str, Any] = {"write_files": files}
    if install is None:
        script = ["#!/bin/bash", "set -euo pipefail", *finish]
    else:
        document["package_update"] = True
        document["packages"] = ["git", "python3-venv", "python3-pip"]
        playbook_dir, playbook_file = posixpath.split(install.playbook)
        extra_vars = {"worker_agent_service_state": "stopped", "worker_agent_config_path": config_path,
                      **install.extra_vars}
        files.append({"path": f"{BOOTSTRAP_DIR}/inventory.ini", "permissions": "0644",
                      "content": "[workers]\nlocalhost ansible_connection=local "
                                 "ansible_python_interpreter=/usr/bin/python3\n"})
        files.append({"path": f"{BOOTSTRAP_DIR}/vars.json", "permissions": "0600",
                      "content": json.dumps(extra_vars, indent=2)})
        script = [
            "#!/bin/bash",
            "# First boot of a marketplace image: install the worker with the project's own playbook.",
            "set -euo pipefail",
            f"cd {BOOTSTRAP_DIR}",
            f"git clone --depth 1 --branch {shlex.quote(install.ref)} {shlex.quote(install.source)} src",
            "python3 -m venv venv",
            "venv/bin/pip install --quiet ansible wheel",
            "venv/bin/pip wheel --quiet --no-deps -w dist ./src",
            "wheel=$(ls \"$PWD\"/dist/*.whl)",
            # From the playbook's folder, so that its ansible.cfg (roles path, interpreter) applies.
            f"cd src/{shlex.quote(playbook_dir or '.')}",
            (f"{BOOTSTRAP_DIR}/venv/bin/ansible-playbook -i {BOOTSTRAP_DIR}/inventory.ini "
             f"{shlex.quote(playbook_file)} -e @{BOOTSTRAP_DIR}/vars.json -e \"worker_agent_wheel=$wheel\""),
            *finish,
        ]
    files.append({"path": f"{BOOTSTRAP_DIR}/first-boot.sh", "owner": "root:root", "permissions": "0700",
                  "content": "\n".join(script) + "\n"})
    document["runcmd"] = [[f"{BOOTSTRAP_DIR}/first-boot.sh"]]
    return "#cloud-config\n" + yaml.safe_dump(document, sort_keys=False, width=1000)


def windows_custom_data(config: AgentConfig) -> str:
    """Windows does not run custom data: it is the agent config itself, moved by the extension."""
    return dump_agent_config(config)


def windows_setup_command(config_path: str = WINDOWS_CONFIG_PATH, service: str = "pool-agent") -> str:
    """The Custom Script extension's command: put the config in place for the service account only,
    then restart the agent service the image installed."""
    directory = config_path.rsplit("\\", 1)[0]
    ps = "; ".join([
        "$ErrorActionPreference = 'Stop'",
        f"New-Item -ItemType Directory -Force -Path '{directory}' | Out-Null",
        f"Copy-Item -Force 'C:\\AzureData\\CustomData.bin' '{config_path}'",
        f"icacls '{config_path}' /inheritance:r /grant:r 'SYSTEM:F' 'Administrators:F' '{SERVICE_USER}:R' | Out-Null",
        f"Set-Service -Name '{service}' -StartupType Automatic",
        f"Restart-Service -Name '{service}'",
    ])
    return f'powershell.exe -NoProfile -ExecutionPolicy Bypass -Command "{ps}"'


def encode(custom_data: str) -> str:
    """Azure takes custom data base64-encoded (at most 64 KiB once encoded)."""
    encoded = base64.b64encode(custom_data.encode()).decode()
    if len(encoded) > 65535:
        raise ValueError(f"custom data is {len(encoded)} bytes encoded; Azure allows 65535")
    return encoded

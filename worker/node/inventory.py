"""Targets for ``pool node``: an Ansible inventory (INI or YAML — the one the playbooks use, read by
Ansible's own InventoryManager, so groups, group_vars/host_vars and ``--limit`` patterns mean what
they mean to ``ansible-playbook``) and/or ``--host user@name:port``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The worker_agent role's defaults (playbooks/roles/worker_agent/defaults/main.yml); an inventory
# may override them with the same variable names.
LINUX_DEFAULTS = {
    "worker_agent_venv": "/opt/pool-agent/venv",
    "worker_agent_install_dir": "/opt/pool-agent",
    "worker_agent_config_path": "/etc/pool-agent/agent.yaml",
    "worker_agent_service_name": "pool-agent",
}
WINDOWS_DEFAULTS = {
    "worker_agent_win_dir": r"C:\pool-agent",
    "worker_agent_win_config_path": r"C:\ProgramData\pool-agent\agent.yaml",
    "worker_agent_service_name": "pool-agent",
}


class InventoryError(ValueError):
    pass


@dataclass(frozen=True)
class Target:
    name: str
    address: str
    user: str | None = None
    port: int = 22
    key_file: str | None = None
    windows: bool = False
    vars: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def where(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.address}:{self.port}"

    def var(self, name: str) -> str:
        defaults = WINDOWS_DEFAULTS if self.windows else LINUX_DEFAULTS
        value = self.vars.get(name, defaults.get(name))
        if value is None:
            raise KeyError(name)
        return str(value)


def is_windows(hostvars: dict[str, Any]) -> bool:
    return (str(hostvars.get("ansible_shell_type", "")).lower() == "powershell"
            or str(hostvars.get("os", "")).lower() == "windows"
            or str(hostvars.get("ansible_os_family", "")).lower() == "windows")


_HOST_RE = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]]+\]|[^:@\s]+)(?::(?P<port>\d+))?$")


def parse_host(spec: str, windows: bool = False) -> Target:
    """``[user@]host[:port]`` (IPv6 in brackets)."""
    m = _HOST_RE.match(spec.strip())
    if not m:
        raise InventoryError(f"--host {spec!r}: expected [user@]host[:port]")
    host = m["host"].strip("[]")
    return Target(name=host if not m["port"] else f"{host}:{m['port']}", address=host, user=m["user"],
                  port=int(m["port"] or 22), windows=windows)


def _template(value: Any, variables: dict[str, Any], loader: Any) -> Any:
    if isinstance(value, str) and "{{" in value:
        from ansible.template import Templar

        return Templar(loader=loader, variables=variables).template(value)
    return value


def load_inventory(path: Path, limit: str | None = None) -> list[Target]:
    """The inventory's hosts (after ``limit``, an Ansible host pattern), in inventory order."""
    if not path.exists():
        raise InventoryError(f"inventory {path} does not exist")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from ansible.inventory.manager import InventoryManager
        from ansible.parsing.dataloader import DataLoader
        from ansible.vars.manager import VariableManager

    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[str(path)])
    if not inventory.list_hosts("all"):
        raise InventoryError(f"inventory {path} has no hosts (or Ansible could not parse it)")
    variables = VariableManager(loader=loader, inventory=inventory)
    if limit:
        inventory.subset(limit)
    targets = []
    for host in inventory.get_hosts("all"):
        hv = variables.get_vars(host=host, include_hostvars=False)
        get = lambda key, default=None, hv=hv: _template(hv.get(key, default), hv, loader)
        key = get("ansible_ssh_private_key_file") or get("ansible_private_key_file")
        targets.append(Target(
            name=host.name,
            address=str(get("ansible_host") or get("ansible_ssh_host") or host.name),
            user=get("ansible_user") or get("ansible_ssh_user"),
            port=int(get("ansible_port") or get("ansible_ssh_port") or 22),
            key_file=str(Path(str(key)).expanduser()) if key else None,
            windows=is_windows(hv),
            vars={k: get(k) for k in (*LINUX_DEFAULTS, *WINDOWS_DEFAULTS, "pool_agent_command") if k in hv},
        ))
    return targets


def select_targets(inventory: Path | None, hosts: list[str], limit: str | None, windows: bool = False) -> list[Target]:
    targets = load_inventory(inventory, limit) if inventory else []
    extra = [parse_host(h, windows) for h in hosts]
    if limit and extra:
        import fnmatch

        extra = [t for t in extra if any(fnmatch.fnmatch(t.name, p) or fnmatch.fnmatch(t.address, p)
                                         for p in re.split(r"[:,]", limit) if p and not p.startswith("!"))]
    names = {t.name for t in targets}
    targets += [t for t in extra if t.name not in names]
    if not targets:
        raise InventoryError("no target hosts: give --inventory (and a --limit that matches) or --host")
    return targets

"""The commands ``pool node`` runs on a worker, per OS: a POSIX shell on Linux (systemd, journald, the
image's paths) and PowerShell on Windows (the NSSM service the worker_agent role installs, its
agent.log). Paths and the unit name follow the worker_agent role's variables, which an inventory may
override. Windows is UNTESTED on Windows: only the command construction is tested."""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass

from worker.node.inventory import Target


def powershell(script: str) -> str:
    """A command line for OpenSSH for Windows (whatever its default shell): the script is passed
    encoded (UTF-16LE base64), so no quoting of cmd.exe or PowerShell can bite."""
    wrapped = "$ErrorActionPreference = 'Stop'; $ProgressPreference = 'SilentlyContinue'\n" + script
    encoded = base64.b64encode(wrapped.encode("utf-16-le")).decode()
    return f"powershell -NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand {encoded}"


def ps_quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass
class Remote:
    target: Target
    become: bool = False

    @property
    def windows(self) -> bool:
        return self.target.windows

    # -- building blocks ---------------------------------------------------------------------------
    def _sh(self, command: str, root: bool = True) -> str:
        """A shell command line; as root through ``sudo -n`` with --become (never prompts)."""
        if self.become and root:
            return "sudo -n sh -c " + shlex.quote(command)
        return command

    def pool_agent(self, *args: str) -> str:
        """``pool agent ARGS --config CONFIG`` with the agent's own installation."""
        if self.windows:
            exe = self.target.vars.get("pool_agent_command") or (
                self.target.var("worker_agent_win_dir") + r"\venv\Scripts\pool.exe")
            config = self.target.var("worker_agent_win_config_path")
            return powershell(f"& {ps_quote(exe)} agent {' '.join(ps_quote(a) for a in args)} --config "
                              f"{ps_quote(config)}\nexit $LASTEXITCODE")
        exe = self.target.vars.get("pool_agent_command") or shlex.quote(self.target.var("worker_agent_venv") + "/bin/pool")
        config = self.target.var("worker_agent_config_path")
        return self._sh(f"{exe} agent {shlex.join(args)} --config {shlex.quote(config)}")

    # -- the operations ------------------------------------------------------------------------------
    def status(self) -> str:
        return self.pool_agent("status", "--json")

    def drain(self, wait_s: float = 0) -> str:
        return self.pool_agent("drain", *(["--wait", f"{wait_s:g}"] if wait_s else []))

    def resume(self) -> str:
        return self.pool_agent("resume")

    def service_state(self) -> str:
        """Prints one word: active/inactive/failed/activating… (Windows: the service status mapped so)."""
        service = self.target.var("worker_agent_service_name")
        if self.windows:
            return powershell(f"$s = (Get-Service -Name {ps_quote(service)}).Status\n"
                              "if ($s -eq 'Running') { 'active' } elseif ($s -eq 'Stopped') { 'inactive' } "
                              "else { \"$s\".ToLower() }")
        return f"systemctl is-active {shlex.quote(service)} || true"

    def restart(self) -> str:
        """A graceful restart: the agent finishes its task (within its grace) before it stops."""
        service = self.target.var("worker_agent_service_name")
        if self.windows:
            return powershell(f"Restart-Service -Name {ps_quote(service)}")
        return self._sh(f"systemctl restart {shlex.quote(service)}")

    def logs(self, lines: int, follow: bool) -> str:
        if self.windows:  # NSSM writes the agent's output next to its config
            log = self.target.var("worker_agent_win_config_path").rsplit("\\", 1)[0] + r"\agent.log"
            return powershell(f"Get-Content -Path {ps_quote(log)} -Tail {int(lines)}" + (" -Wait" if follow else ""))
        service = self.target.var("worker_agent_service_name")
        return self._sh(f"journalctl -u {shlex.quote(service)} --no-pager -o short-iso -n {int(lines)}"
                        + (" -f" if follow else ""))

    def upload_dir(self, token: str) -> str:
        """Where SFTP puts a wheel first (as the login user)."""
        if self.windows:
            return self.target.var("worker_agent_win_dir").replace("\\", "/") + "/dist"
        return f"/tmp/pool-node-{token}"

    def sftp_path(self, path: str) -> str:
        return "/" + path if self.windows and ":" in path[:3] else path

    def install_wheel(self, uploaded: str, wheel_name: str) -> str:
        """Put the wheel where the role keeps it and install it into the agent's venv (no dependency
        changes: a wheel that needs new dependencies goes through the worker_agent playbook)."""
        if self.windows:
            python = self.target.var("worker_agent_win_dir") + r"\venv\Scripts\python.exe"
            return powershell(f"& {ps_quote(python)} -m pip install --no-deps --force-reinstall "
                              f"--disable-pip-version-check {ps_quote(uploaded.replace('/', chr(92)))}\n"
                              "exit $LASTEXITCODE")
        dist = self.target.var("worker_agent_install_dir") + "/dist/" + wheel_name
        pip = self.target.var("worker_agent_venv") + "/bin/pip"
        upload_dir = uploaded.rsplit("/", 1)[0]
        return self._sh(
            f"install -m 0644 {shlex.quote(uploaded)} {shlex.quote(dist)}"
            f" && {shlex.quote(pip)} install --quiet --no-deps --force-reinstall --disable-pip-version-check "
            f"{shlex.quote(dist)}; rc=$?; rm -rf {shlex.quote(upload_dir)}; exit $rc")

    def exec(self, argv: list[str]) -> str:
        if self.windows:  # PowerShell parses the words itself
            return powershell(" ".join(argv) + "\nexit $LASTEXITCODE")
        return self._sh(argv[0] if len(argv) == 1 else shlex.join(argv))

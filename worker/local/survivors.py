"""Processes a previous local stack left behind: found, told apart from unrelated ones, stopped.

``pool local up`` starts the emulator, Azurite and the agents in sessions of their own (so Ctrl-C in
the terminal reaches the stack, which stops them in order). If ``pool local up`` itself is
SIGKILLed, they keep running. A second stack on the same data dir must not start beside them: two
brokers on one store, two agents with one worker id. So each child is recorded in the profile
(pid + its start time, which tells it from a later process that reuses the pid), and every
process whose command line names this data dir's emulator store, agent configs or Azurite
location is found too (a child started just before a crash, before the profile was written).
They are stopped, agents first (they hand their tasks back), then Azurite and the emulator.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from worker.local.profile import LocalProfile, ProcessRecord

ROLE_ORDER = ("agent", "site", "azurite", "emulator")  # stop order: consumers before what they use
_START_TIME_SLACK_S = 0.05


@dataclass(frozen=True)
class Survivor:
    role: str
    name: str
    process: psutil.Process
    leads_group: bool  # our children are started in sessions of their own

    def describe(self) -> str:
        return f"{self.name} (pid {self.process.pid})"


def record(pid: int, role: str, ports: Iterable[int] = ()) -> ProcessRecord:
    """What the profile keeps about a child: enough to find it again, and only it."""
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        started = 0.0
    return ProcessRecord(pid=pid, role=role, started=started, ports=list(ports))


def _recorded(profile: LocalProfile | None) -> dict[int, tuple[str, str]]:
    found: dict[int, tuple[str, str]] = {}
    if profile is None:
        return found
    for name, rec in profile.processes.items():
        try:
            proc = psutil.Process(rec.pid)
            if abs(proc.create_time() - rec.started) <= _START_TIME_SLACK_S and proc.status() != psutil.STATUS_ZOMBIE:
                found[rec.pid] = (rec.role, name)
        except psutil.Error:
            continue
    return found


def _role_from_cmdline(cmdline: list[str], data_dir: Path) -> tuple[str, str] | None:
    """Our children name their place in the data dir on their command line."""
    root = str(data_dir)
    for i, arg in enumerate(cmdline[:-1]):
        value = cmdline[i + 1]
        if arg == "--data-dir" and value == f"{root}/emulator" and "emulator" in cmdline:
            return "emulator", "emulator"
        if arg == "--config" and value.startswith(f"{root}/agents/") and "agent" in cmdline:
            return "agent", f"agent {Path(value).parent.name}"
        if arg == "--location" and value == f"{root}/azurite":
            return "azurite", "azurite"
    return None


def find_survivors(data_dir: str | Path, profile: LocalProfile | None) -> list[Survivor]:
    """Live processes of an earlier stack on ``data_dir`` (never this process or its ancestors)."""
    data_dir = Path(data_dir).resolve()
    mine = {os.getpid()}
    try:
        mine |= {p.pid for p in psutil.Process().parents()}
    except psutil.Error:
        pass
    found = {pid: role for pid, role in _recorded(profile).items() if pid not in mine}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid in found or proc.pid in mine:
            continue
        role = _role_from_cmdline(proc.info.get("cmdline") or [], data_dir)
        if role is not None:
            found[proc.pid] = role
    survivors = []
    for pid, (role, name) in found.items():
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                survivors.append(Survivor(role, name, proc, os.getpgid(pid) == pid))
        except (psutil.Error, ProcessLookupError):
            continue
    return sorted(survivors, key=lambda s: (ROLE_ORDER.index(s.role) if s.role in ROLE_ORDER else 0, s.name))


def stop_survivors(survivors: list[Survivor], say: Callable[[str], None] = print,
                   agent_timeout_s: float = 15.0, timeout_s: float = 10.0) -> None:
    """SIGTERM (each child leads its own process group: the whole group), wait, then SIGKILL; agents
    first so they can still hand their tasks back to the emulator."""
    for roles, wait_s in ((("agent", "site"), agent_timeout_s), (("azurite", "emulator"), timeout_s)):
        group = [s for s in survivors if s.role in roles]
        if not group:
            continue
        say("stopping " + ", ".join(s.describe() for s in group))
        for s in group:
            _signal(s, signal.SIGTERM)
        _gone, alive = psutil.wait_procs([s.process for s in group], timeout=wait_s)
        for s in group:
            if s.process in alive:
                say(f"{s.describe()} did not stop within {wait_s:.0f} s: killing it")
            _signal(s, signal.SIGKILL)  # also whatever is left in its process group
        psutil.wait_procs(alive, timeout=5)


def _signal(survivor: Survivor, sig: int) -> None:
    try:
        if survivor.leads_group:
            os.killpg(survivor.process.pid, sig)  # the group outlives its leader while members remain
        else:
            survivor.process.send_signal(sig)
    except (ProcessLookupError, PermissionError, psutil.Error):
        pass


def wait_ports_free(ports: Iterable[int], timeout_s: float = 5.0) -> None:
    """A killed server's port can stay bound for a moment; reusing it too early fails the bind."""
    from worker.local.processes import port_open

    deadline = time.monotonic() + timeout_s
    for port in ports:
        while port and port_open("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.05)

"""The local stack's profile: ``<data dir>/profile.yaml``, written by ``pool local up`` and read by
every other command (``pool submit``, ``status``, ``logs``, ``competition create``) to find the stack.

It holds local secrets only (the emulator's generated keys, Azurite's public development key).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from worker.errors import PoolError
from worker.site.service import SiteSettings
from worker.util.pids import pid_alive

PROFILE_NAME = "profile.yaml"
DEFAULT_DATA_DIR = Path(".pool")


class StackNotRunning(PoolError, RuntimeError):
    pass


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmulatorInfo(_Model):
    host: str
    port: int
    http_port: int
    config_path: str
    root_connection_string: str


class PoolInfo(_Model):
    """A local pool's worker credentials (queue-level: Listen on tasks, Send on responses)."""

    task_queue: str
    response_queue: str
    worker_listen_connection_string: str
    worker_send_connection_string: str


class ProcessRecord(_Model):
    """A child of the stack, so that a later `pool local up|down` finds it after a crash."""

    pid: int
    role: str  # emulator | azurite | agent | site
    started: float  # its start time (psutil): a later process reusing the pid is not it
    ports: list[int] = Field(default_factory=list)
    pool: str | None = None  # agents: the pool they serve
    state: str = "running"  # running | restarting | given_up (agents the stack stopped restarting) | retired


class LocalProfile(_Model):
    version: int = 1
    pid: int
    state: str = "starting"  # starting | ready | stopped
    data_dir: str
    emulator: EmulatorInfo
    storage_connection_string: str
    database_url: str
    lost_after_s: float = 30.0
    pools: dict[str, PoolInfo] = Field(default_factory=dict)
    workers_per_pool: int = 2
    driver: str = "process"
    site_url: str | None = None  # the site service (API + dashboard) this stack runs
    site_token: str | None = None  # its generated admin token (this file is 0600)
    processes: dict[str, ProcessRecord] = Field(default_factory=dict)  # emulator, azurite, agent:<worker id>

    def site_settings(self) -> SiteSettings:
        return SiteSettings(database_url=self.database_url, storage_connection_string=self.storage_connection_string,
                            lost_after_s=self.lost_after_s)

    def save(self) -> None:
        path = Path(self.data_dir) / PROFILE_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))
        os.chmod(tmp, 0o600)
        tmp.replace(path)

    @property
    def alive(self) -> bool:
        return pid_alive(self.pid)


def load_profile(data_dir: str | Path, *, require_running: bool = True) -> LocalProfile:
    path = Path(data_dir) / PROFILE_NAME
    if not path.exists():
        raise StackNotRunning(f"no local stack in {Path(data_dir).resolve()}: start one with `pool local up` "
                              f"(or pass --data-dir)")
    profile = LocalProfile.model_validate(yaml.safe_load(path.read_text()))
    if require_running and (not profile.alive or profile.state == "stopped"):
        raise StackNotRunning(f"the local stack in {Path(data_dir).resolve()} is not running "
                              f"(pid {profile.pid} is gone): start it with `pool local up`")
    return profile


@contextmanager
def profile_lock(data_dir: str | Path) -> Iterator[None]:
    """Serialises read-modify-write of the profile between `local up` and other commands."""
    path = Path(data_dir) / "profile.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def update_profile(data_dir: str | Path, change: Callable[[LocalProfile], None]) -> LocalProfile:
    with profile_lock(data_dir):
        profile = load_profile(data_dir, require_running=False)
        change(profile)
        profile.save()
        return profile

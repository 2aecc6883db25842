"""Configuration models loaded from YAML, with clear errors.

``AgentConfig`` is THE worker config format: ``pool agent --config FILE`` reads it, the Pulumi
program renders it into a scale set's custom data and the Ansible role renders it from variables —
both must produce a file that :func:`load_agent_config` accepts. This module imports only :mod:`worker.errors`.
"""

from __future__ import annotations

import os
import re
import socket
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from worker.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


def parse_size(value: int | str | None) -> int | None:
    """``"10GiB"``, ``"512 MB"``, ``1048576`` -> bytes."""
    if value is None or isinstance(value, int):
        return value
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ValueError(f"not a size: {value!r} (use e.g. 512MiB, 10GiB or a number of bytes)")
    number, unit = match.groups()
    return int(float(number) * _UNITS[(unit or "").lower()])


class QueueProperties(_Strict):
    """A queue's properties, named as Azure names them (snake_case), with Azure's defaults.

    One definition for both places that describe queues: the local endpoint's config
    (``worker.emulator.config.QueueConfig``) and the Pulumi stack config
    (``worker.stackconfig.QueueProperties``); each adds the bounds of its own side."""

    lock_duration: timedelta = timedelta(minutes=1)
    max_delivery_count: int = Field(default=10, ge=1, le=2000)
    default_message_ttl: timedelta = timedelta(days=14)
    dead_lettering_on_message_expiration: bool = False
    requires_duplicate_detection: bool = False
    duplicate_detection_history_time_window: timedelta = timedelta(minutes=10)
    max_message_size_kb: int = Field(default=256, ge=1, le=100 * 1024)


class AuthMode(StrEnum):
    CONNECTION_STRING = "connection_string"  # SAS policy per queue (least rights), or emulator
    MANAGED_IDENTITY = "managed_identity"  # Azure VM/VMSS identity with queue-scoped RBAC roles
    DEFAULT_AZURE_CREDENTIAL = "default_azure_credential"  # azure-identity's chain (dev machines)


class ServiceBusSettings(_Strict):
    """Where tasks come from and where statuses go.

    Least privilege: the worker gets Listen on the task queue and Send on the response queue, nothing
    else. With SAS that means two queue-level connection strings; with an identity, two role
    assignments scoped to those two queues.
    """

    auth: AuthMode = AuthMode.CONNECTION_STRING
    task_queue: str
    response_queue: str
    task_queue_connection_string: str | None = None  # Listen on task_queue
    response_queue_connection_string: str | None = None  # Send on response_queue
    fully_qualified_namespace: str | None = None  # e.g. comp-demo.servicebus.windows.net (identity)
    managed_identity_client_id: str | None = None  # user-assigned identity; None = system-assigned

    @model_validator(mode="after")
    def _credentials_present(self) -> ServiceBusSettings:
        if self.auth is AuthMode.CONNECTION_STRING:
            missing = [n for n in ("task_queue_connection_string", "response_queue_connection_string")
                       if not getattr(self, n)]
            if missing:
                raise ValueError(f"auth is connection_string but {', '.join(missing)} is not set")
        elif not self.fully_qualified_namespace:
            raise ValueError(f"auth is {self.auth.value} but fully_qualified_namespace is not set")
        return self


class CacheSettings(_Strict):
    dir: Path | None = None  # default: <work_dir>/../cache
    max_bytes: int = Field(default=10 * 1024**3, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _sizes(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_bytes" in data:
            data = {**data, "max_bytes": parse_size(data["max_bytes"])}
        return data


class LimitSettings(_Strict):
    """Per-task ceilings applied by the execution driver (a task may ask for less, never more)."""

    memory_bytes: int | None = 4 * 1024**3
    max_processes: int | None = 256
    cpu_time_s: float | None = None
    file_size_bytes: int | None = 8 * 1024**3
    open_files: int | None = 1024
    scratch_bytes: int | None = 10 * 1024**3
    tmp_bytes: int | None = 512 * 1024**2
    log_bytes: int = 64 * 1024**2  # per stream; past this the log ends with a truncation marker
    output_bytes: int | None = 1024**3  # the uploaded output archive
    max_time_limit_s: float = 24 * 3600

    @model_validator(mode="before")
    @classmethod
    def _sizes(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {k: (parse_size(v) if k.endswith("_bytes") else v) for k, v in data.items()}
        return data


class ExecutionSettings(_Strict):
    driver: Literal["process", "bwrap", "jobobject", "docker"] = "process"
    network: bool = False  # allow tasks that ask for network (outbound only)
    gpus: bool = False  # pass GPUs through to tasks that ask for them
    image: str | None = None  # docker driver: the competition's image
    limits: LimitSettings = Field(default_factory=LimitSettings)


class AgentConfig(_Strict):
    """The worker agent's configuration file (YAML)."""

    worker_id: str | None = None  # default: <hostname>-<pid>
    pool: str | None = None  # the competition/pool name, for display
    servicebus: ServiceBusSettings
    work_dir: Path = Path("/var/lib/pool-agent/work")
    # The state file and drain flag (`pool agent status|drain|resume`); default: work_dir's parent.
    control_dir: Path | None = None
    cache: CacheSettings = Field(default_factory=CacheSettings)
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    log_flush_interval_s: float = Field(default=0.5, gt=0, le=1.0)
    cancel_poll_interval_s: float = Field(default=2.0, gt=0, le=5.0)
    receive_wait_s: float = Field(default=5.0, gt=0)
    # On SIGTERM the current task may finish within this grace; past it, it is handed back (abandoned).
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def resolved_worker_id(self) -> str:
        return self.worker_id or f"{socket.gethostname()}-{os.getpid()}"

    def resolved_cache_dir(self) -> Path:
        return self.cache.dir or self.work_dir.parent / "cache"

    def resolved_control_dir(self) -> Path:
        return self.control_dir or self.work_dir.parent


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def load_yaml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML file whose top level is a mapping (empty file: {}); ``what`` names it in errors."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def parse_agent_config(data: dict[str, Any], source: str = "<config>") -> AgentConfig:
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source} is not a valid agent config:\n{_format_errors(exc)}") from None


def load_agent_config(path: str | Path) -> AgentConfig:
    return parse_agent_config(load_yaml(path), str(path))


def dump_agent_config(config: AgentConfig) -> str:
    """YAML in exactly the format :func:`load_agent_config` reads (used by renderers and tests)."""
    return yaml.safe_dump(config.model_dump(mode="json", exclude_none=True), sort_keys=False)


# --- Naming shared by the site, the local stack and the Pulumi program -------------------------------
# A competition name is lowercase letters, digits and hyphens, at most 50 characters, so that every
# derived name fits Azure's limits (containers: 3-63 chars, lowercase, letters/digits/hyphens).
COMPETITION_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,49}$")


def check_competition_name(name: str) -> str:
    if not COMPETITION_NAME_RE.match(name):
        raise ConfigError(
            f"invalid competition name {name!r}: use 3-50 lowercase letters, digits and single hyphens, "
            "starting and ending with a letter or digit"
        )
    return name


def competition_queues(competition: str) -> tuple[str, str]:
    """(task queue, response queue) of a competition."""
    check_competition_name(competition)
    return f"{competition}-tasks", f"{competition}-responses"


def competition_containers(competition: str) -> dict[str, str]:
    """Blob containers of a competition: bundles (program/input archives), logs (stdout/stderr append
    blobs and the control blob under ``tasks/<task_id>/<attempt>/``) and outputs
    (``tasks/<task_id>/<attempt>/output.tar.gz``)."""
    check_competition_name(competition)
    return {kind: f"{competition}-{kind}" for kind in ("bundles", "logs", "outputs")}

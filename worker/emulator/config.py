"""The emulator's YAML config: namespace policies and queues.

Property names mirror Azure Service Bus queue properties in snake_case (durations in ISO 8601, e.g.
``PT30S``, ``P14D``) so one file can describe both the local namespace and what the Pulumi program
creates in Azure. ``EmulatorConfig.load(path)`` reads and validates a file (errors name the field);
``EmulatorConfig.save(path)`` writes one back.
"""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from worker.config import QueueProperties
from worker.errors import ConfigError

# Azure's rules: queue names 1-260 chars of letters, digits, periods, hyphens, underscores and slashes;
# the emulator forbids '/' and '$' to keep sub-queue paths ($deadletterqueue, $management) unambiguous.
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,259}$")
_POLICY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,255}$")

MAX_LOCK_DURATION = timedelta(minutes=5)


class Right(StrEnum):
    MANAGE = "Manage"
    LISTEN = "Listen"
    SEND = "Send"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PolicyConfig(_Strict):
    """A shared access policy (namespace- or queue-level): the key signs SAS tokens."""

    name: str
    key: str = Field(min_length=16, description="base64 text; used as-is (UTF-8) as the HMAC key, like Azure")
    rights: list[Right] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _POLICY_NAME.match(v):
            raise ValueError(f"policy name {v!r} must be letters, digits, '.', '-' or '_'")
        return v

    def grants(self, right: Right) -> bool:
        """Manage implies Send and Listen, as in Azure."""
        return right in self.rights or Right.MANAGE in self.rights


class QueueConfig(QueueProperties):
    """A queue of the local endpoint: Azure's queue properties (shared with the Pulumi stack config)
    plus its name and queue-level policies."""

    name: str
    policies: list[PolicyConfig] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _QUEUE_NAME.match(v):
            raise ValueError(f"queue name {v!r} must start with a letter or digit and use only letters, "
                             "digits, '.', '-' or '_' (at most 260 characters)")
        return v

    @field_validator("lock_duration")
    @classmethod
    def _lock_ok(cls, v: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= v <= MAX_LOCK_DURATION:
            raise ValueError("lock_duration must be between PT1S and PT5M")
        return v

    @field_validator("default_message_ttl", "duplicate_detection_history_time_window")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("must be a positive duration")
        return v

    @model_validator(mode="after")
    def _unique_policies(self) -> QueueConfig:
        _check_unique([p.name for p in self.policies], f"queue {self.name!r} policies")
        return self

    @property
    def max_message_size(self) -> int:
        return self.max_message_size_kb * 1024


class EmulatorConfig(_Strict):
    policies: list[PolicyConfig] = Field(default_factory=list)
    queues: list[QueueConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> EmulatorConfig:
        _check_unique([p.name for p in self.policies], "namespace policies")
        _check_unique([q.name.lower() for q in self.queues], "queue names (case-insensitive)")
        return self

    @classmethod
    def load(cls, path: Path | str) -> EmulatorConfig:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read emulator config {path}: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, source: str = "config") -> EmulatorConfig:
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping with 'policies' and 'queues'")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(f"{source}: {_describe(exc)}") from exc

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml())
        return path

    def manage_policy(self) -> PolicyConfig | None:
        return next((p for p in self.policies if Right.MANAGE in p.rights), None)


def parse_queue(raw: Any) -> QueueConfig:
    """Validate one queue's properties (the HTTP runtime API's PUT body)."""
    try:
        return QueueConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc


def _check_unique(names: list[str], what: str) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate {what}: {', '.join(dupes)}")


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)

"""Wire models exchanged through the queues: a Task (site -> worker), and a Status or a Presence
(worker -> site, on the response queue, told apart by the message's ``subject``: :data:`SUBJECT_STATUS`
or :data:`SUBJECT_PRESENCE`; a message without a subject is a Status, as sent by older agents).
Several statuses of one task attempt travel as one message (:data:`SUBJECT_STATUSES`, a JSON array):
one message for the broker to store and deliver and for the site to settle, instead of one each.

Messages carry ids and SAS URLs, never payloads. JSON on the wire, versioned by ``schema_version``;
anything that does not validate raises :class:`ProtocolError` with a readable reason, which the
receiver turns into a dead-letter reason. This module imports only :mod:`worker.errors`.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker.errors import PoolError

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 256 * 1024
CONTENT_TYPE = "application/vnd.compute-pools+json"

TaskId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{1,48}[a-z0-9]$")]  # see config.check_competition_name


def utcnow() -> datetime:
    return datetime.now(UTC)


class ProtocolError(PoolError, ValueError):
    """A message that cannot be accepted; ``str(error)`` is the dead-letter description."""

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason  # short, machine-readable (dead-letter reason)
        self.description = description


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskType(StrEnum):
    EVALUATE_SUBMISSION = "evaluate_submission"
    RUN_ANALYSIS = "run_analysis"
    SITE_JOB = "site_job"


class TaskState(StrEnum):
    RECEIVED = "received"
    PREPARING = "preparing"
    RUNNING = "running"
    UPLOADING = "uploading"
    FINISHED = "finished"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {TaskState.FINISHED, TaskState.FAILED, TaskState.TIMED_OUT, TaskState.CANCELLED}
)


class KillReason(StrEnum):
    """Why the worker stopped a program before it exited by itself."""

    TIME = "time"
    MEMORY = "memory"
    OUTPUT = "output"
    DISK = "disk"
    PROCESSES = "processes"
    CANCELLED = "cancelled"
    SHUTDOWN = "shutdown"


class ControlSignal(BaseModel):
    """The body of a task's control blob (written by the site, polled by the worker)."""

    action: Literal["cancel"] = "cancel"
    reason: str = "cancelled by the site"
    at: datetime = Field(default_factory=utcnow)


class Bundle(_Model):
    """A read-only input: an archive (zip / tar.*) or a single file, fetched through a SAS URL.

    ``name`` is the directory (archives) or file name under the task's ``inputs/`` it appears as;
    the program bundle always appears as ``program/``.
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    url: str
    kind: Literal["archive", "file"] = "archive"
    sha256: str | None = None  # cache key when given; otherwise the URL without its query
    size: int | None = Field(default=None, ge=0)


class Resources(_Model):
    cpus: float | None = Field(default=None, gt=0)
    memory_mb: int | None = Field(default=None, gt=0)
    gpus: int = Field(default=0, ge=0)
    disk_mb: int | None = Field(default=None, gt=0)
    network: bool = False  # opt-in per competition; outbound only


class Task(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    task_id: TaskId
    attempt: int = Field(default=1, ge=1)
    competition: Name
    task_type: TaskType = TaskType.EVALUATE_SUBMISSION
    command: list[str] = Field(min_length=1)  # argv, run in the task's scratch dir
    env: dict[str, str] = Field(default_factory=dict)
    program: Bundle | None = None
    inputs: list[Bundle] = Field(default_factory=list)
    output_url: str | None = None  # write-only SAS of the output archive blob
    stdout_url: str  # append blob, add/create/write SAS
    stderr_url: str
    control_url: str | None = None  # read-only SAS of the task's control blob (cancellation)
    time_limit_s: float = Field(default=3600, gt=0, le=7 * 24 * 3600)
    resources: Resources = Field(default_factory=Resources)
    reply_to: str  # the response queue
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def message_id(self) -> str:
        """Duplicate-detection id: the same task attempt is never queued twice."""
        return task_message_id(self.task_id, self.attempt)


def task_message_id(task_id: str, attempt: int) -> str:
    """The id of a task attempt's message (parsed back by ``worker.wire.parse_task_message_id``)."""
    return f"{task_id}:{attempt}"


class HostFacts(_Model):
    hostname: str
    os: str
    cpu_count: int
    memory_mb: int
    driver: str
    agent_version: str
    gpus: int = 0
    enforced_limits: dict[str, str] = Field(default_factory=dict)


class Status(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    task_id: TaskId
    attempt: int = Field(ge=1)
    seq: int = Field(ge=0)  # per attempt, strictly increasing; the watcher ignores stale ones
    state: TaskState
    heartbeat: bool = False  # a periodic "still running" report, same state as before
    worker_id: str
    host: HostFacts | None = None  # sent with the first status of an attempt
    exit_code: int | None = None
    kill_reason: KillReason | None = None
    reason: str | None = None  # human-readable failure reason
    # With a final FAILED: an infrastructure failure the worker could still report (storage_error,
    # bundle_download, agent_error); the site retries those. None: the program's own outcome.
    failure: Annotated[str, Field(pattern=r"^[a-z][a-z_]{0,31}$")] | None = None
    output_bytes: int | None = None
    timestamp: datetime = Field(default_factory=utcnow)


class Activity(StrEnum):
    IDLE = "idle"  # waiting for a task
    BUSY = "busy"
    LEFT = "left"  # stopped cleanly; the last presence of this agent run


class Presence(_Model):
    """A worker's "I am here" report, sent while it has no task (a task's statuses say it while it has
    one), at start, every ``interval_s``, and once with ``activity: left`` on a clean shutdown."""

    schema_version: Literal[1] = SCHEMA_VERSION
    worker_id: str
    activity: Activity = Activity.IDLE
    interval_s: float = Field(gt=0)  # the next presence is due within this; the site judges liveness by it
    seq: int = Field(ge=0)  # per agent run, increasing (debugging; the site orders by ``timestamp``)
    host: HostFacts
    timestamp: datetime = Field(default_factory=utcnow)


SUBJECT_STATUS = "status"
SUBJECT_STATUSES = "statuses"  # a JSON array of one task attempt's statuses, in sequence order
SUBJECT_PRESENCE = "presence"

Message = Task | Status | Presence


def encode(message: Task | Status | Presence) -> bytes:
    return within_limit(message.model_dump_json().encode())


def within_limit(data: bytes) -> bytes:
    """A message body, if it fits in a message (else MessageTooLarge)."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError("MessageTooLarge", f"message is {len(data)} bytes, limit {MAX_MESSAGE_BYTES}")
    return data


def encode_statuses(statuses: list[Status], encoded: list[bytes] | None = None) -> bytes:
    """One task attempt's statuses as one body (a JSON array; :func:`decode_statuses` reads it).
    ``encoded``: each status's JSON, when the caller has already made it."""
    parts = encoded if encoded is not None else [status.model_dump_json().encode() for status in statuses]
    data = b"[" + b",".join(parts) + b"]"
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError("MessageTooLarge", f"message is {len(data)} bytes, limit {MAX_MESSAGE_BYTES}")
    return data


def _parse(body: bytes | str) -> object:
    raw = body.encode() if isinstance(body, str) else bytes(body)
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError("MessageTooLarge", f"message is {len(raw)} bytes, limit {MAX_MESSAGE_BYTES}")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError("MalformedMessage", f"body is not JSON: {exc}") from None


def _decode(model: type[Task | Status | Presence], body: bytes | str) -> Task | Status | Presence:
    return _validate(model, _parse(body))


def _validate(model: type[Task | Status | Presence], obj: object) -> Task | Status | Presence:
    if not isinstance(obj, dict):
        raise ProtocolError("MalformedMessage", "body is not a JSON object")
    version = obj.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ProtocolError(
            "UnsupportedSchemaVersion",
            f"schema_version {version!r} is not supported (this worker speaks {SCHEMA_VERSION})",
        )
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()[:10]
        )
        raise ProtocolError(f"Invalid{model.__name__}", f"invalid {model.__name__.lower()}: {problems}") from None


def decode_task(body: bytes | str) -> Task:
    return _decode(Task, body)  # type: ignore[return-value]


def decode_status(body: bytes | str) -> Status:
    return _decode(Status, body)  # type: ignore[return-value]


def decode_statuses(body: bytes | str) -> list[Status]:
    """A :data:`SUBJECT_STATUSES` body: a non-empty JSON array of statuses of ONE task attempt with
    increasing ``seq`` (the site settles the message as a whole, so it must be about one task)."""
    obj = _parse(body)
    if not isinstance(obj, list) or not obj:
        raise ProtocolError("MalformedMessage", "a statuses message is a non-empty JSON array of statuses")
    statuses: list[Status] = [_validate(Status, item) for item in obj]  # type: ignore[misc]
    first = statuses[0]
    for before, status in itertools.pairwise(statuses):
        if (status.task_id, status.attempt) != (first.task_id, first.attempt):
            raise ProtocolError("InvalidStatus", "a statuses message carries the statuses of one task attempt, "
                                                 f"not of {first.task_id!r}/{first.attempt} and "
                                                 f"{status.task_id!r}/{status.attempt}")
        if status.seq <= before.seq:
            raise ProtocolError("InvalidStatus", f"the statuses of a message are in increasing seq order "
                                                 f"({status.seq} follows {before.seq})")
    return statuses


def decode_presence(body: bytes | str) -> Presence:
    return _decode(Presence, body)  # type: ignore[return-value]

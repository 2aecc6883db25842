"""Database models of the site: pools, tasks, one history row per state transition, workers seen."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from worker.protocol import TaskState


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class SiteState(StrEnum):
    """A task's state on the site: WAITING (held back by the pool's admission limits), QUEUED (row
    written, message sent or about to be), the worker-reported protocol states, and LOST (its worker
    went silent; a step on the way to a new attempt or to FAILED, seen in the history)."""

    WAITING = "waiting"
    QUEUED = "queued"
    RECEIVED = TaskState.RECEIVED.value
    PREPARING = TaskState.PREPARING.value
    RUNNING = TaskState.RUNNING.value
    UPLOADING = TaskState.UPLOADING.value
    FINISHED = TaskState.FINISHED.value
    FAILED = TaskState.FAILED.value
    TIMED_OUT = TaskState.TIMED_OUT.value
    CANCELLED = TaskState.CANCELLED.value
    LOST = "lost"

    @property
    def terminal(self) -> bool:
        return self.value in TERMINAL

    @property
    def active(self) -> bool:
        """A worker has it: a worker-reported state that is not final."""
        return self.value in ACTIVE


TERMINAL = frozenset(s.value for s in TaskState if s.terminal)
ACTIVE = frozenset(s.value for s in TaskState if not s.terminal)  # derived: the worker-reported, unfinished states
IN_FLIGHT = ACTIVE | {"queued"}  # what the admission limits count: sent (or about to be) and not final


class Base(DeclarativeBase):
    pass


class Pool(Base):
    """A competition's pool = its queue pair (a list the site manages). The connection strings are
    the site's own (Send on the task queue + Listen on both, for dead letters); None = use the site's
    namespace-level connection string."""

    __tablename__ = "pools"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    task_queue: Mapped[str] = mapped_column(String(260))
    response_queue: Mapped[str] = mapped_column(String(260))
    task_queue_connection_string: Mapped[str | None] = mapped_column(Text)
    response_queue_connection_string: Mapped[str | None] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Refreshed by the monitor.
    queue_depth: Mapped[int | None] = mapped_column(Integer)
    dead_letters: Mapped[int | None] = mapped_column(Integer)
    depth_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Admission limits (None: unlimited; see worker.site.admission) and the infrastructure retry budget
    # (see worker.site.failures).
    max_in_flight: Mapped[int | None] = mapped_column(Integer)
    max_in_flight_per_label: Mapped[int | None] = mapped_column(Integer)
    retry_budget: Mapped[int] = mapped_column(Integer, default=3, server_default="3")
    retry_backoff_s: Mapped[float] = mapped_column(Float, default=5.0, server_default="5")
    retry_backoff_max_s: Mapped[float] = mapped_column(Float, default=300.0, server_default="300")
    # Reports refused because they came through this pool's response queue for another pool's task or worker.
    wrong_pool_reports: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pool: Mapped[str] = mapped_column(ForeignKey("pools.name"), index=True)
    task_type: Mapped[str] = mapped_column(String(32))
    command: Mapped[list[str]] = mapped_column(JSON)
    env: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    bundles: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # StoredBundle + name
    time_limit_s: Mapped[float] = mapped_column(Float)
    resources: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    max_attempts: Mapped[int] = mapped_column(Integer, default=10)  # a ceiling; see worker.site.failures

    state: Mapped[str] = mapped_column(String(16), default=SiteState.QUEUED.value, index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=-1)  # of the current delivery
    delivery_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # its RECEIVED timestamp
    last_status_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # worker's clock
    last_heard_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # site's clock (heartbeats)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    kill_reason: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    output_bytes: Mapped[int | None] = mapped_column(Integer)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Fair admission: who it is for (a participant) and its priority (higher first, then FIFO).
    label: Mapped[str | None] = mapped_column(String(128))
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Failure attribution of the final state (worker.site.failures) and infrastructure retries used.
    failure_class: Mapped[str | None] = mapped_column(String(16))
    failure_code: Mapped[str | None] = mapped_column(String(32))
    infra_retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)  # a retry's scheduled enqueue time

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # None: message not sent yet
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    version: Mapped[int] = mapped_column(Integer, default=1)  # optimistic concurrency

    events: Mapped[list[TaskEvent]] = relationship(back_populates="task", order_by="TaskEvent.id",
                                                   cascade="all, delete-orphan")

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 - SQLAlchemy reads it as is
    __table_args__ = (Index("ix_tasks_state_heard", "state", "last_heard_at"),
                      Index("ix_tasks_pool_state", "pool", "state"))

    @property
    def site_state(self) -> SiteState:
        return SiteState(self.state)


class TaskEvent(Base):
    """One row per state transition (heartbeats and duplicates never add rows)."""

    __tablename__ = "task_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(BigInteger)  # -1 for site-made transitions (lost, dead-lettered...)
    state: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))  # worker | site
    worker_id: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    # On final rows, and on the site's lost / retry rows: the failure's class and code (worker.site.failures).
    failure_class: Mapped[str | None] = mapped_column(String(16))
    failure_code: Mapped[str | None] = mapped_column(String(32))
    reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the status' timestamp
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    task: Mapped[Task] = relationship(back_populates="events")

    __table_args__ = (UniqueConstraint("task_id", "attempt", "seq", "state", "reported_at", "source",
                                       name="uq_task_events_status"),)


class Worker(Base):
    """A worker as last heard of through its statuses and presence reports (live = heard within
    :data:`LIVE_AFTER_BEATS` of its report interval, and not left)."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    pool: Mapped[str] = mapped_column(String(64), index=True)
    host: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    current_task: Mapped[str | None] = mapped_column(String(64))
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)  # site's clock
    # From presence reports (None for a worker only heard of through statuses).
    activity: Mapped[str | None] = mapped_column(String(16))  # idle | busy | left
    reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # worker's clock of the newest report
    interval_s: Mapped[float | None] = mapped_column(Float)  # its presence interval
    left_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # clean shutdown; cleared when it is back


LIVE_AFTER_BEATS = 3  # a worker is live while heard within this many report intervals
DEFAULT_LIVE_S = 60.0  # for workers that never sent a presence (their interval is unknown)


class TaskLabel(Base):
    """A task's free-form labels (participant, submission ids...), one row per key: filterable on
    every backend without JSON operators."""

    __tablename__ = "task_labels"

    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))

    __table_args__ = (Index("ix_task_labels_key_value", "key", "value"),)


class DeadLetter(Base):
    """A message Service Bus (or a worker) dead-lettered, as the monitor drained it: kept for the
    operator to look at, resubmit (the task's new attempt) or purge."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pool: Mapped[str] = mapped_column(String(64), index=True)
    queue: Mapped[str] = mapped_column(String(260))
    message_id: Mapped[str | None] = mapped_column(String(256))
    task_id: Mapped[str | None] = mapped_column(String(64), index=True)
    attempt: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    dead_lettered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    resubmitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SiteLease(Base):
    """A lease held by one site replica at a time (``monitor``: resends, lost tasks, dead letters),
    renewed while it lives, taken over by another replica once expired."""

    __tablename__ = "site_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PoolOperation(Base):
    """A long pool operation the API runs in the background (``POST /api/v1/pools`` with ``azure``:
    ``pulumi up`` through the Automation API, then registration from the stack outputs):
    ``provisioning`` -> ``ready`` (the pool is registered) or ``failed`` (``detail`` says why). The
    replica running it renews ``heartbeat_at``; one that stops renewing is shown as failed."""

    __tablename__ = "pool_operations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    pool: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # azure_create
    state: Mapped[str] = mapped_column(String(16))  # provisioning | ready | failed
    stack: Mapped[str | None] = mapped_column(String(128))
    detail: Mapped[str | None] = mapped_column(Text)  # the failure's reason
    output_tail: Mapped[str | None] = mapped_column(Text)  # the last lines of the engine's output
    outputs: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # stack outputs, secret ones left out
    replica: Mapped[str] = mapped_column(String(128))
    requested_by: Mapped[str | None] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # One deployment of a pool at a time, even when two replicas accept a create at the same moment
    # (both pass the API's check before either commits; the database refuses the second insert).
    __table_args__ = (Index("ux_pool_operations_provisioning", "pool", unique=True,
                            sqlite_where=text("state = 'provisioning'"),
                            postgresql_where=text("state = 'provisioning'")),)

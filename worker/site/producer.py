"""Submit tasks: write the task row, give it SAS URLs scoped to this attempt, send it to the pool's
task queue with ``message_id = "<task_id>:<attempt>"`` (duplicate detection: a resend never runs twice).

The row is committed BEFORE the send, so nothing is lost: a task whose send failed keeps
``sent_at = NULL`` and the monitor sends it again.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import bindparam, update
from sqlalchemy.orm import Session, sessionmaker

from worker import protocol
from worker.errors import PoolError
from worker.site import admission, transitions
from worker.site.db import retrying, transaction
from worker.site.models import Pool, SiteState, TaskLabel, utcnow
from worker.site.models import Task as TaskRow
from worker.site.pools import get_pool
from worker.site.queues import SiteQueues
from worker.storage import Storage, StoredBundle

log = logging.getLogger(__name__)


# One statement (built once) instead of loading the row into the session and flushing it: the same
# conditions and the same version bump (optimistic concurrency) as the ORM's update would do.
_MARK_SENT = (
    update(TaskRow)
    .where(TaskRow.id == bindparam("b_id"), TaskRow.sent_at.is_(None), TaskRow.attempt == bindparam("b_attempt"))
    .values(sent_at=bindparam("b_sent_at", type_=TaskRow.__table__.c.sent_at.type), version=TaskRow.version + 1)
)


class SubmitError(PoolError, RuntimeError):
    pass


def new_task_id() -> str:
    return f"t{datetime.now().strftime('%y%m%d')}-{secrets.token_hex(5)}"


@dataclass
class Submission:
    """What a caller asks for. ``program`` / ``inputs`` are directories, files or stored bundles."""

    pool: str
    command: list[str]
    program: Path | StoredBundle | None = None
    inputs: dict[str, Path | StoredBundle] = field(default_factory=dict)
    time_limit_s: float = 3600.0
    env: dict[str, str] = field(default_factory=dict)
    task_type: protocol.TaskType = protocol.TaskType.EVALUATE_SUBMISSION
    resources: protocol.Resources = field(default_factory=protocol.Resources)
    max_attempts: int = 10  # a ceiling; the pool's retry_budget normally decides (worker.site.failures)
    task_id: str | None = None
    label: str | None = None  # the participant it is for (admission: max_in_flight_per_label)
    priority: int = 0  # higher is admitted first (e.g. organizer baselines 10)
    labels: dict[str, str] = field(default_factory=dict)  # free-form: participant, submission ids...


class Producer:
    def __init__(self, sessions: sessionmaker[Session], storage: Storage, queues: SiteQueues,
                 read_sessions: sessionmaker[Session] | None = None) -> None:
        self.sessions = sessions
        self.read_sessions = read_sessions or sessions  # reads that need no write lock (db.py)
        self.storage = storage
        self.queues = queues

    def submit(self, submission: Submission) -> TaskRow:
        if not submission.command:
            raise SubmitError("a task needs a command")
        # The admission label is the participant: given as such, or the free-form labels' `participant`.
        label = submission.label if submission.label is not None else submission.labels.get("participant")
        if label is not None and not 0 < len(label) <= 128:
            raise SubmitError("invalid task: label: 1 to 128 characters")
        with self.read_sessions() as session:
            pool = get_pool(session, submission.pool)  # clear error before uploading anything
            response_queue = pool.response_queue
            waits = admission.limited(pool)
        _check_wire_form(submission, response_queue)
        bundles = []
        if submission.program is not None:
            bundles.append(self._stored("program", submission.pool, submission.program))
        for name, source in submission.inputs.items():
            bundles.append(self._stored(name, submission.pool, source))
        row = TaskRow(
            id=submission.task_id or new_task_id(), pool=submission.pool, task_type=submission.task_type.value,
            command=list(submission.command), env=dict(submission.env), bundles=bundles,
            time_limit_s=submission.time_limit_s, resources=submission.resources.model_dump(mode="json"),
            max_attempts=submission.max_attempts, label=label, priority=submission.priority,
        )
        with transaction(self.sessions) as session:
            transitions.submit(session, row, waiting=waits)
            if submission.labels:
                session.flush()  # the row before its labels (foreign key)
                session.add_all(TaskLabel(task_id=row.id, key=k, value=v) for k, v in submission.labels.items())
        if waits:  # under the pool's limits: it goes when (and if) admission lets it in
            admission.admit_and_send(self.sessions, row.pool, self.send)
            with self.sessions() as session:
                return session.get(TaskRow, row.id) or row
        self._send(row, pool)  # the row and pool in hand: no second read before the send
        return row

    def _stored(self, name: str, pool: str, source: Path | StoredBundle) -> dict[str, Any]:
        stored = source if isinstance(source, StoredBundle) else self.storage.upload_bundle(pool, source)
        return {"name": name, "container": stored.container, "blob_name": stored.blob_name,
                "sha256": stored.sha256, "size": stored.size}

    def build_message(self, row: TaskRow, pool: Pool) -> protocol.Task:
        urls = self.storage.task_urls(row.pool, row.id, row.attempt, row.time_limit_s)
        program, inputs = None, []
        for b in row.bundles:
            stored = StoredBundle(b["container"], b["blob_name"], b["sha256"], b["size"])
            bundle = self.storage.bundle_for_task(stored, b["name"], row.time_limit_s)
            if b["name"] == "program":
                program = bundle
            else:
                inputs.append(bundle)
        return protocol.Task(
            task_id=row.id, attempt=row.attempt, competition=row.pool, task_type=protocol.TaskType(row.task_type),
            command=row.command, env=row.env, program=program, inputs=inputs, output_url=urls.output_url,
            stdout_url=urls.stdout_url, stderr_url=urls.stderr_url, control_url=urls.control_url,
            time_limit_s=row.time_limit_s, resources=protocol.Resources.model_validate(row.resources),
            reply_to=pool.response_queue,
        )

    def send(self, task_id: str) -> None:
        """Send the current attempt of a queued task (again); a no-op once it was sent."""
        with transaction(self.sessions) as session:
            row = session.get(TaskRow, task_id)
            if row is None or row.state != SiteState.QUEUED.value or row.sent_at is not None:
                return
            pool = get_pool(session, row.pool)
        self._send(row, pool)

    def _send(self, row: TaskRow, pool: Pool) -> None:
        task_id = row.id
        self.storage.ensure_competition(row.pool)
        message = self.build_message(row, pool)
        connection_string, queue = pool.task_queue_connection_string, pool.task_queue
        now = utcnow()
        scheduled = row.not_before if row.not_before is not None and row.not_before > now else None
        try:
            self.queues.send_task(connection_string, queue, message, scheduled_at=scheduled)
        except Exception as exc:
            log.warning("sending task %s failed (the monitor will resend it): %s", task_id, exc)
            raise SubmitError(f"task {task_id} is recorded but could not be sent yet: {exc}") from exc

        def mark_sent(session: Session) -> None:
            session.connection().execute(_MARK_SENT, {"b_id": task_id, "b_attempt": message.attempt,
                                                      "b_sent_at": utcnow()})

        retrying(self.sessions, mark_sent)

    def cancel(self, task_id: str, reason: str = "cancelled by the site") -> TaskRow:
        """Ask the worker to stop (control blob); a task no worker has yet is cancelled right away."""

        def request(session: Session) -> TaskRow:
            row = session.get(TaskRow, task_id)
            if row is None:
                raise LookupError(f"no task {task_id!r}")
            if row.site_state.terminal:
                return row
            row.cancel_requested_at = row.cancel_requested_at or utcnow()
            if row.state in (SiteState.QUEUED.value, SiteState.WAITING.value):
                transitions.cancel(session, row, reason)
            return row

        row = retrying(self.sessions, request)
        # Written in every case: a queued message may already be on its way to a worker.
        self.storage.cancel(row.pool, row.id, row.attempt, reason)
        return row


_PLACEHOLDER_URL = "https://account.blob.core.windows.net/" + "x" * 400  # longer than any real SAS URL


def _check_wire_form(submission: Submission, reply_to: str) -> None:
    """Refuse, before anything is recorded, what could never be sent: invalid fields or a message
    over the size limit (the real one differs only in its URLs, which this over-estimates)."""
    bundle = protocol.Bundle(name="program", url=_PLACEHOLDER_URL)
    try:
        task = protocol.Task(
            task_id=submission.task_id or "t" * 20, competition=submission.pool, task_type=submission.task_type,
            command=list(submission.command), env=dict(submission.env),
            program=bundle if submission.program is not None else None,
            inputs=[protocol.Bundle(name=name, url=_PLACEHOLDER_URL) for name in submission.inputs],
            output_url=_PLACEHOLDER_URL, stdout_url=_PLACEHOLDER_URL, stderr_url=_PLACEHOLDER_URL,
            control_url=_PLACEHOLDER_URL, time_limit_s=submission.time_limit_s, resources=submission.resources,
            reply_to=reply_to)
        protocol.encode(task)
    except protocol.ProtocolError as exc:
        raise SubmitError(f"the task cannot be sent: {exc.description}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise SubmitError(f"invalid task: {problems}") from None

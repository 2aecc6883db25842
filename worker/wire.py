"""The wire format on the queues, in one place: how a Task, a Status and a Presence become Service Bus
messages (body, subject, message id, application properties) and how a received message becomes one
of them again. The models themselves are :mod:`worker.protocol`; this module adds the envelope.

==========  =============  ==============================================  =====================
message     subject        message id                                      on queue
==========  =============  ==============================================  =====================
Task        its task type  ``<task_id>:<attempt>`` (duplicate detection)   ``<competition>-tasks``
Status      ``status``     ``<task_id>:<attempt>:<seq>``                   ``<competition>-responses``
Statuses    ``statuses``   ``<task_id>:<attempt>:<first seq>-<last seq>``  ``<competition>-responses``
Presence    ``presence``   ``presence:<worker>:<timestamp>:<seq>``         ``<competition>-responses``
==========  =============  ==============================================  =====================

A response message without a subject is a Status (agents before presence reports). Statuses: several
statuses of one task attempt that the agent sends together (a short task's ``received`` ...
``finished``), as one JSON array — one message to store, deliver and settle instead of one per status.
Agents that send them need a site that reads them (this version on): upgrade the site first. On the task
queue every message is a Task: its subject only names the task type.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from azure.servicebus import ServiceBusMessage

from worker.protocol import (
    CONTENT_TYPE,
    MAX_MESSAGE_BYTES,
    SUBJECT_PRESENCE,
    SUBJECT_STATUS,
    SUBJECT_STATUSES,
    Presence,
    ProtocolError,
    Status,
    Task,
    decode_presence,
    decode_status,
    decode_statuses,
    decode_task,
    encode,
    encode_statuses,
    task_message_id,
    within_limit,
)

__all__ = [
    "BATCH_REST",
    "UNKNOWN_KIND",
    "batch_rest",
    "decode_reports",
    "decode_task_message",
    "message_body",
    "message_kind",
    "parse_task_message_id",
    "presence_message",
    "report_message",
    "report_messages",
    "status_message",
    "statuses_message",
    "task_message",
    "task_message_id",
    "task_ref",
]

BATCH_REST = "batch_rest"  # application property: how many messages of the same batch follow this one
UNKNOWN_KIND = "UnknownMessageKind"
GROUP_BYTES = MAX_MESSAGE_BYTES // 2  # a statuses message stays well inside Service Bus's message limit  # dead-letter reason of a response message with an unknown subject

_RESPONSE_DECODERS: dict[str, Callable[[bytes], list[Status] | list[Presence]]] = {
    SUBJECT_STATUS: lambda body: [decode_status(body)],
    SUBJECT_STATUSES: decode_statuses,
    SUBJECT_PRESENCE: lambda body: [decode_presence(body)],
}


# -- building ----------------------------------------------------------------------------------------
def task_message(task: Task, scheduled_at: datetime | None = None) -> ServiceBusMessage:
    """``scheduled_at``: a Service Bus scheduled message, enqueued then (an infrastructure retry's back-off)."""
    return ServiceBusMessage(encode(task), message_id=task.message_id, content_type=CONTENT_TYPE,
                             subject=task.task_type.value, scheduled_enqueue_time_utc=scheduled_at)


def status_message(status: Status, rest: int = 0, encoded: bytes | None = None) -> ServiceBusMessage:
    """``rest``: how many messages of the same batch follow this one (a hint that lets the site's
    watcher take the whole batch into one transaction instead of waiting to learn of them);
    ``encoded``: the status's JSON, when already made."""
    return ServiceBusMessage(
        encode(status) if encoded is None else within_limit(encoded),
        content_type=CONTENT_TYPE,
        subject=SUBJECT_STATUS,
        message_id=f"{status.task_id}:{status.attempt}:{status.seq}",
        application_properties={"task_id": status.task_id, "state": status.state.value, BATCH_REST: rest},
    )


def statuses_message(statuses: list[Status], rest: int = 0, encoded: list[bytes] | None = None) -> ServiceBusMessage:
    """Several statuses of ONE task attempt, in sequence order, as one message (``encoded``: each
    status's JSON, when already made)."""
    first, last = statuses[0], statuses[-1]
    return ServiceBusMessage(
        encode_statuses(statuses, encoded),
        content_type=CONTENT_TYPE,
        subject=SUBJECT_STATUSES,
        message_id=f"{first.task_id}:{first.attempt}:{first.seq}-{last.seq}",
        application_properties={"task_id": first.task_id, "state": last.state.value, "count": len(statuses),
                                BATCH_REST: rest},
    )


def presence_message(presence: Presence, rest: int = 0) -> ServiceBusMessage:
    return ServiceBusMessage(
        encode(presence),
        content_type=CONTENT_TYPE,
        subject=SUBJECT_PRESENCE,
        message_id=f"presence:{presence.worker_id}:{presence.timestamp.timestamp():.6f}:{presence.seq}",
        application_properties={"worker_id": presence.worker_id, "activity": presence.activity.value,
                                BATCH_REST: rest},
    )


def report_message(report: Status | Presence, rest: int = 0) -> ServiceBusMessage:
    """A response-queue message: a Status or a Presence."""
    return presence_message(report, rest) if isinstance(report, Presence) else status_message(report, rest)


def report_messages(reports: list[Status | Presence]) -> list[ServiceBusMessage]:
    """The messages that carry ``reports`` in order: consecutive statuses of one task attempt share
    one message (:func:`statuses_message`, up to :data:`GROUP_BYTES` of JSON), a lone status or a
    presence report is a message of its own; each says how many messages follow it (:data:`BATCH_REST`)."""
    groups: list[tuple[list[Status | Presence], list[bytes]]] = []  # reports, and each status's JSON
    size = 0
    for report in reports:
        last = groups[-1][0][-1] if groups else None
        encoded = report.model_dump_json().encode() if isinstance(report, Status) else b""
        if (isinstance(report, Status) and isinstance(last, Status) and size + len(encoded) <= GROUP_BYTES
                and (last.task_id, last.attempt) == (report.task_id, report.attempt) and report.seq > last.seq):
            groups[-1][0].append(report)
            groups[-1][1].append(encoded)
            size += len(encoded)
        else:
            groups.append(([report], [encoded]))
            size = len(encoded)
    rest = len(groups) - 1
    return [presence_message(group[0], rest - i) if isinstance(group[0], Presence)
            else status_message(group[0], rest - i, encoded[0]) if len(group) == 1
            else statuses_message(group, rest - i, encoded)  # type: ignore[arg-type]
            for i, (group, encoded) in enumerate(groups)]


# -- reading -----------------------------------------------------------------------------------------
def message_body(message: Any) -> bytes:
    """The body of a received message as bytes (the SDK gives bytes, a str, or an iterable of parts)."""
    body = message.body
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    try:
        return b"".join(bytes(part) for part in body)
    except TypeError:
        raise ProtocolError("MalformedMessage", "the message body is not binary JSON data") from None


def message_kind(message: Any) -> str:
    """The message's subject (``status`` when it has none: agents before presence reports)."""
    subject = message.subject
    if isinstance(subject, bytes):
        subject = subject.decode(errors="replace")
    return subject or SUBJECT_STATUS


def decode_task_message(message: Any) -> Task:
    """A task-queue message's Task; ProtocolError (with the dead-letter reason) when it is not one."""
    return decode_task(message_body(message))


def decode_reports(message: Any) -> list[Status] | list[Presence]:
    """The reports a response-queue message carries, by its subject: one Status, one Presence, or a
    task attempt's Statuses; ProtocolError (with the dead-letter reason) when it is not valid."""
    body = message_body(message)
    kind = message_kind(message)
    decoder = _RESPONSE_DECODERS.get(kind)
    if decoder is None:
        raise ProtocolError(UNKNOWN_KIND, f"unknown message subject {kind[:100]!r} (expected "
                                          f"{SUBJECT_STATUS!r}, {SUBJECT_STATUSES!r} or {SUBJECT_PRESENCE!r})")
    return decoder(body)


def batch_rest(message: Any) -> int:
    """How many messages the agent sent in the same batch after this one (its ``batch_rest``
    application property; 0 without it). They are already on their way to the receiver."""
    props = message.application_properties or {}
    value = props.get(BATCH_REST.encode(), props.get(BATCH_REST, 0))
    return value if isinstance(value, int) and value > 0 else 0


def parse_task_message_id(message_id: str | None) -> tuple[str, int] | None:
    """``<task_id>:<attempt>`` -> (task_id, attempt); None for any other id."""
    if message_id and ":" in message_id:
        task_id, _, attempt = message_id.rpartition(":")
        if attempt.isdigit():
            return task_id, int(attempt)
    return None


def task_ref(message: Any) -> tuple[str | None, int | None]:
    """Which task attempt a task-queue message (e.g. a dead-lettered one) is about: from its message id,
    else from its body; (message id or None, None) when neither says."""
    ref = parse_task_message_id(message.message_id)
    if ref is not None:
        return ref
    try:
        task = decode_task(message_body(message))
        return task.task_id, task.attempt
    except ProtocolError:
        return (message.message_id or None), None

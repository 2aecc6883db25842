"""``<entity>/$management`` request/response operations, as the azure-servicebus SDK sends them.

Each request carries ``operation`` in its application properties and an AMQP map body; the reply
carries ``statusCode``/``statusDescription`` (and ``errorCondition`` on failure) and is correlated by
``correlation_id == request.message_id``. Operations that change state answer only after the
change is committed. Unknown operations answer 501 with ``amqp:not-implemented``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from proton import Array, Data, Message, symbol, timestamp
from proton._data import UNDESCRIBED
from proton._data import long as amqp_long

from worker.emulator import codec
from worker.emulator.broker import BrokerError, lock_lost
from worker.emulator.config import Right

if TYPE_CHECKING:
    from worker.emulator.server import AmqpConnection

VENDOR = "com.microsoft:"


def _list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, Array):
        return list(value.elements)
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _key(body: dict, name: str) -> Any:
    for k, v in body.items():
        if (k.decode() if isinstance(k, bytes) else str(k)) == name:
            return v
    return None


def _token(value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, (bytes, memoryview)) and len(value) == 16:
        return uuid.UUID(bytes=bytes(value))
    try:
        return uuid.UUID(str(value))
    except ValueError as exc:
        raise BrokerError(VENDOR + "argument-error", f"not a lock token: {value!r}") from exc


def status_reply(request: Message, code: int, description: str, body: Any = None, condition: str | None = None, *,
                 code_key: str = "statusCode", description_key: str = "statusDescription") -> Message:
    """A reply correlated to ``request``; $cbs spells the status keys ``status-code``/``status-description``."""
    props: dict[Any, Any] = {code_key: codec.amqp_int(code), description_key: description}
    if condition:
        props["errorCondition"] = symbol(condition)
    reply = Message(body=body, properties=props)
    reply.correlation_id = request.id
    return reply


def handle(conn: AmqpConnection, entity_path: str, request: Message, respond: Callable[[Message], None]) -> None:
    broker = conn.server.broker
    props = request.properties or {}
    operation = str(props.get("operation", ""))
    body = request.body if isinstance(request.body, dict) else {}
    try:
        entity = broker.resolve(entity_path)
        handler = _OPERATIONS.get(operation)
        if handler is None:
            raise BrokerError("amqp:not-implemented",
                              f"The operation '{operation}' is not supported by the local emulator.", 501)
        right, fn = handler
        conn.require(entity.path, right)
        result = fn(conn, entity, body)
    except BrokerError as err:
        respond(status_reply(request, err.status, err.description, condition=err.condition))
        return
    code, payload = result
    # Replies go out after the turn's commit so what they confirm is on disk.
    broker.after_commit(lambda: respond(status_reply(request, code, "OK" if code == 200 else "No Content", payload)))


def _renew_lock(conn, entity, body):
    tokens = [_token(t) for t in _list(_key(body, "lock-tokens"))]
    expirations = [timestamp(conn.server.broker.renew(t)) for t in tokens]
    return 200, {"expirations": Array(UNDESCRIBED, Data.TIMESTAMP, *expirations)}


def _peek(conn, entity, body):
    start = int(_key(body, "from-sequence-number") or 0)
    count = int(_key(body, "message-count") or 1)
    messages = conn.server.broker.peek(entity, start, max(1, count))
    if not messages:
        return 204, None
    return 200, {"messages": [{"message": m.encode(None)} for m in messages]}


def _schedule(conn, entity, body):
    if entity.is_dlq:
        raise BrokerError("amqp:not-allowed", "Messages cannot be scheduled on a dead-letter queue.")
    broker = conn.server.broker
    seqs = []
    for item in _list(_key(body, "messages")):
        raw = _key(item, "message") if isinstance(item, dict) else None
        if raw is None:
            raise BrokerError(VENDOR + "argument-error", "schedule-message entry lacks 'message'")
        raw = bytes(raw)
        if len(raw) > entity.queue.config.max_message_size:
            raise BrokerError("amqp:link:message-size-exceeded", "The scheduled message exceeds the maximum size.")
        try:
            incoming = codec.parse_message(raw)
        except codec.CodecError as exc:
            raise BrokerError(VENDOR + "argument-error", f"malformed scheduled message: {exc}") from exc
        sched = incoming.annotations.get(symbol("x-opt-scheduled-enqueue-time"))
        when = _ms(sched)
        seq = broker.enqueue(entity.queue, incoming, scheduled_ms=when)
        seqs.append(amqp_long(seq if seq is not None else -1))
    return 200, {"sequence-numbers": Array(UNDESCRIBED, Data.LONG, *seqs)}


def _ms(value: Any) -> int | None:
    if value is None:
        return None
    if hasattr(value, "timestamp") and callable(value.timestamp):
        return int(value.timestamp() * 1000)
    return int(value)


def _cancel(conn, entity, body):
    seqs = [int(s) for s in _list(_key(body, "sequence-numbers"))]
    conn.server.broker.cancel_scheduled(entity.queue, seqs)
    return 200, {}


def _receive_by_seq(conn, entity, body):
    seqs = [int(s) for s in _list(_key(body, "sequence-numbers"))]
    mode = _key(body, "receiver-settle-mode")
    peek_lock = mode is None or int(mode) == 1
    taken = conn.server.broker.receive_deferred(entity, seqs, peek_lock)
    out = []
    for msg, lock in taken:
        item: dict[str, Any] = {"message": msg.encode(lock)}
        if lock is not None:
            item["lock-token"] = lock.token
        out.append(item)
    return 200, {"messages": out}


def _update_disposition(conn, entity, body):
    broker = conn.server.broker
    status = str(_key(body, "disposition-status") or "").lower()
    tokens = [_token(t) for t in _list(_key(body, "lock-tokens"))]
    for token in tokens:
        lock = broker.locks.get(token)
        if lock is None or lock.message.entity is not entity:
            raise lock_lost(token)
        if status == "completed":
            broker.complete(token)
        elif status == "abandoned":
            broker.abandon(token)
        elif status == "suspended":
            reason = _key(body, "deadletter-reason")
            description = _key(body, "deadletter-description")
            broker.dead_letter(token, None if reason is None else str(reason),
                               None if description is None else str(description))
        elif status in ("defered", "deferred"):
            broker.defer(token)
        else:
            raise BrokerError(VENDOR + "argument-error", f"unknown disposition-status {status!r}")
    return 200, {}


_OPERATIONS: dict[str, tuple[Right, Callable]] = {
    VENDOR + "renew-lock": (Right.LISTEN, _renew_lock),
    VENDOR + "peek-message": (Right.LISTEN, _peek),
    VENDOR + "schedule-message": (Right.SEND, _schedule),
    VENDOR + "cancel-scheduled-message": (Right.SEND, _cancel),
    VENDOR + "receive-by-sequence-number": (Right.LISTEN, _receive_by_seq),
    VENDOR + "update-disposition": (Right.LISTEN, _update_disposition),
}

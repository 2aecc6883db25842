"""AMQP 1.0 message sections: split what a client sent, rebuild what the broker delivers.

The broker keeps the bare message (properties, application properties, body, footer) byte for byte
as the sender encoded it, so every field round-trips exactly. It rewrites only the header (proton
would omit ``delivery-count`` 0, which the SDK then reports as ``None``) and the message
annotations (sequence number, enqueued time, lock expiry). Batches sent by the SDK arrive as one
envelope whose data sections are each a complete encoded message; they are recognised by parsing
strictly: every section of every data section must decode completely.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from proton import Array, Data, Described, symbol, timestamp, ulong
from proton import int32 as amqp_int  # noqa: F401  (status codes)
from proton import uint as amqp_uint
from proton._data import long as amqp_long

HEADER, DELIVERY_ANNOTATIONS, MESSAGE_ANNOTATIONS, PROPERTIES, APPLICATION_PROPERTIES = 0x70, 0x71, 0x72, 0x73, 0x74
DATA, AMQP_SEQUENCE, AMQP_VALUE, FOOTER = 0x75, 0x76, 0x77, 0x78
_BARE = (PROPERTIES, APPLICATION_PROPERTIES, DATA, AMQP_SEQUENCE, AMQP_VALUE, FOOTER)


class CodecError(ValueError):
    """Bytes that are not a well-formed AMQP message."""


def plain(value: Any) -> Any:
    """Copy proton's decoded values out of its buffers (memoryviews die with the Data object)."""
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, Described):
        return Described(plain(value.descriptor), plain(value.value))
    if isinstance(value, Array):
        return Array(value.descriptor, value.type, *[plain(e) for e in value.elements])
    return value


def _sections(raw: bytes) -> list[tuple[int, int, int]]:
    """[(descriptor code, start, end)] for each top-level section; raises CodecError."""
    out: list[tuple[int, int, int]] = []
    pos = 0
    view = memoryview(raw)
    while pos < len(raw):
        data = Data()
        try:
            used = data.decode(bytes(view[pos:]))
        except Exception as exc:  # proton raises DataException and friends
            raise CodecError(f"undecodable section at byte {pos}: {exc}") from exc
        if used <= 0:
            raise CodecError(f"empty section at byte {pos}")
        data.rewind()
        if data.next() != Data.DESCRIBED:
            raise CodecError(f"section at byte {pos} is not a described type")
        data.enter()
        data.next()
        code = data.get_object()
        if not isinstance(code, int) or not HEADER <= code <= FOOTER:
            raise CodecError(f"unknown section descriptor {code!r} at byte {pos}")
        out.append((int(code), pos, pos + used))
        pos += used
    codes = [c for c, _, _ in out]
    if codes != sorted(codes) or len(set(codes) - {DATA, AMQP_SEQUENCE}) != len(
            [c for c in codes if c not in (DATA, AMQP_SEQUENCE)]):
        raise CodecError("message sections out of order or repeated")
    return out


def _section_value(raw: bytes) -> Any:
    data = Data()
    data.decode(raw)
    data.rewind()
    data.next()
    obj = plain(data.get_object())
    return obj.value if isinstance(obj, Described) else None


def encode_section(code: int, value: Any) -> bytes:
    data = Data()
    data.put_object(Described(ulong(code), value))
    return data.encode()


@dataclass
class IncomingMessage:
    """One message as the broker stores it."""

    bare: bytes  # properties .. footer, exactly as sent
    annotations: dict = field(default_factory=dict)  # client message annotations (symbol keys)
    durable: bool = False
    priority: int | None = None
    ttl_ms: int | None = None
    message_id: Any = None
    absolute_expiry_ms: int | None = None

    @property
    def size(self) -> int:
        return len(self.bare)

    def message_id_text(self) -> str | None:
        if self.message_id is None:
            return None
        if isinstance(self.message_id, bytes):
            return self.message_id.hex()
        return str(self.message_id)


def parse_message(raw: bytes) -> IncomingMessage:
    sections = _sections(raw)
    msg = IncomingMessage(bare=b"")
    bare_start = None
    for code, start, end in sections:
        if code == HEADER:
            fields = _section_value(raw[start:end]) or []
            fields = list(fields) + [None] * (5 - len(fields))
            msg.durable = bool(fields[0])
            msg.priority = fields[1]
            msg.ttl_ms = int(fields[2]) if fields[2] is not None else None
        elif code == MESSAGE_ANNOTATIONS:
            value = _section_value(raw[start:end]) or {}
            msg.annotations = dict(value) if isinstance(value, dict) else {}
        elif code == PROPERTIES:
            fields = list(_section_value(raw[start:end]) or []) + [None] * 13
            msg.message_id = fields[0]
            if fields[8] is not None:
                msg.absolute_expiry_ms = int(fields[8])
        if code in _BARE and bare_start is None:
            bare_start = start
    msg.bare = raw[bare_start:] if bare_start is not None else b""
    return msg


def split_batch(raw: bytes) -> list[bytes] | None:
    """The messages inside an SDK batch envelope, or None when ``raw`` is an ordinary message."""
    try:
        sections = _sections(raw)
    except CodecError:
        return None
    data_sections = [(s, e) for c, s, e in sections if c == DATA]
    if not data_sections or any(c in (AMQP_VALUE, AMQP_SEQUENCE) for c, _, _ in sections):
        return None
    inner: list[bytes] = []
    for start, end in data_sections:
        body = _section_value(raw[start:end])
        if not isinstance(body, bytes) or not body:
            return None
        try:
            inner_sections = _sections(body)
        except CodecError:
            return None
        if not any(c in (DATA, AMQP_SEQUENCE, AMQP_VALUE) for c, _, _ in inner_sections):
            return None
        inner.append(body)
    return inner


def encode_header(delivery_count: int, durable: bool = False, priority: int | None = None,
                  ttl_ms: int | None = None) -> bytes:
    # Always written in full: proton leaves out delivery-count 0 and the SDK would report None.
    return encode_section(HEADER, [
        bool(durable),
        None if priority is None else _ubyte(priority),
        None if ttl_ms is None else amqp_uint(ttl_ms),
        delivery_count == 0,
        amqp_uint(delivery_count),
    ])


def _ubyte(v: int):
    from proton import ubyte

    return ubyte(v)


def broker_annotations(sequence_number: int, enqueued_ms: int, locked_until_ms: int | None,
                       lock_token: uuid.UUID | None, extra: dict | None = None) -> dict:
    ann = {
        symbol("x-opt-sequence-number"): amqp_long(sequence_number),
        symbol("x-opt-enqueued-time"): timestamp(enqueued_ms),
    }
    if locked_until_ms is not None:
        ann[symbol("x-opt-locked-until")] = timestamp(locked_until_ms)
    if lock_token is not None:
        ann[symbol("x-opt-lock-token")] = lock_token
    if extra:
        ann.update(extra)
    return ann


def encode_delivery(bare: bytes, annotations: dict, delivery_count: int, durable: bool = False,
                    priority: int | None = None, ttl_ms: int | None = None) -> bytes:
    return (encode_header(delivery_count, durable, priority, ttl_ms)
            + encode_section(MESSAGE_ANNOTATIONS, annotations) + bare)


def encode_annotations(annotations: dict) -> bytes:
    return encode_section(MESSAGE_ANNOTATIONS, annotations) if annotations else b""


def decode_annotations(raw: bytes | None) -> dict:
    if not raw:
        return {}
    value = _section_value(raw)
    return dict(value) if isinstance(value, dict) else {}


def with_application_properties(bare: bytes, updates: dict[str, Any]) -> bytes:
    """The bare message with ``updates`` merged into its application properties (dead-letter reason)."""
    sections = _sections(bare)
    props: dict = {}
    out = b""
    inserted = False
    for code, start, end in sections:
        if code == APPLICATION_PROPERTIES:
            props = dict(_section_value(bare[start:end]) or {})
            continue
        if code > APPLICATION_PROPERTIES and not inserted:
            props.update(updates)
            out += encode_section(APPLICATION_PROPERTIES, props)
            inserted = True
        out += bare[start:end]
    if not inserted:
        props.update(updates)
        out += encode_section(APPLICATION_PROPERTIES, props)
    return out

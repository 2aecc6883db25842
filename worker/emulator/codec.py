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
from itertools import pairwise
from typing import Any

from proton import Array, Data, Described, symbol, timestamp, ulong
from proton import int32 as amqp_int  # noqa: F401  (status codes)
from proton import uint as amqp_uint
from proton._data import long as amqp_long

from worker.errors import PoolError

HEADER, DELIVERY_ANNOTATIONS, MESSAGE_ANNOTATIONS, PROPERTIES, APPLICATION_PROPERTIES = 0x70, 0x71, 0x72, 0x73, 0x74
DATA, AMQP_SEQUENCE, AMQP_VALUE, FOOTER = 0x75, 0x76, 0x77, 0x78
_BARE = (PROPERTIES, APPLICATION_PROPERTIES, DATA, AMQP_SEQUENCE, AMQP_VALUE, FOOTER)


class CodecError(PoolError, ValueError):
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


_FIXED_WIDTH = {
    0x40: 0, 0x41: 0, 0x42: 0, 0x43: 0, 0x44: 0, 0x45: 0,  # null, true, false, uint0, ulong0, list0
    0x50: 1, 0x51: 1, 0x52: 1, 0x53: 1, 0x54: 1, 0x55: 1, 0x56: 1,
    0x60: 2, 0x61: 2,
    0x70: 4, 0x71: 4, 0x72: 4, 0x73: 4, 0x74: 4,
    0x80: 8, 0x81: 8, 0x82: 8, 0x83: 8, 0x84: 8,
    0x94: 16, 0x98: 16,
}
_SIZE1 = frozenset((0xA0, 0xA1, 0xA3, 0xC0, 0xC1, 0xE0))
_SIZE4 = frozenset((0xB0, 0xB1, 0xB3, 0xD0, 0xD1, 0xF0))
_SYMBOLIC_SECTIONS = {
    b"amqp:header:list": HEADER, b"amqp:delivery-annotations:map": DELIVERY_ANNOTATIONS,
    b"amqp:message-annotations:map": MESSAGE_ANNOTATIONS, b"amqp:properties:list": PROPERTIES,
    b"amqp:application-properties:map": APPLICATION_PROPERTIES, b"amqp:data:binary": DATA,
    b"amqp:amqp-sequence:list": AMQP_SEQUENCE, b"amqp:amqp-value:*": AMQP_VALUE, b"amqp:footer:map": FOOTER,
}


def _value_end(raw: bytes, pos: int) -> int:
    """Index just past the AMQP value starting at ``pos`` (reads only constructors and sizes)."""
    try:
        code = raw[pos]
        pos += 1
        if code == 0x00:  # described: descriptor, then the value
            return _value_end(raw, _value_end(raw, pos))
        width = _FIXED_WIDTH.get(code)
        if width is not None:
            end = pos + width
        elif code in _SIZE1:
            end = pos + 1 + raw[pos]
        elif code in _SIZE4:
            end = pos + 4 + int.from_bytes(raw[pos:pos + 4], "big")
        else:
            raise CodecError(f"unknown AMQP type constructor 0x{code:02x} at byte {pos - 1}")
    except IndexError as exc:
        raise CodecError("truncated AMQP value") from exc
    if end > len(raw):
        raise CodecError("truncated AMQP value")
    return end


def _sections(raw: bytes) -> list[tuple[int, int, int]]:
    """[(descriptor code, start, end)] for each top-level section; raises CodecError.

    A fast scan of constructors and sizes (the hot path for every message); contents are decoded
    only for the sections the broker reads."""
    out: list[tuple[int, int, int]] = []
    pos, size = 0, len(raw)
    while pos < size:
        if raw[pos] != 0x00 or pos + 2 >= size:
            raise CodecError(f"section at byte {pos} is not a described type")
        kind = raw[pos + 1]
        if kind == 0x53:
            code, body = raw[pos + 2], pos + 3
        elif kind == 0x80:
            code, body = int.from_bytes(raw[pos + 2:pos + 10], "big"), pos + 10
        elif kind in (0xA3, 0xB3):
            name_end = _value_end(raw, pos + 1)
            name = bytes(raw[pos + (3 if kind == 0xA3 else 6):name_end])
            code, body = _SYMBOLIC_SECTIONS.get(name, -1), name_end
        else:
            raise CodecError(f"unsupported section descriptor at byte {pos}")
        if not HEADER <= code <= FOOTER:
            raise CodecError(f"unknown section descriptor {code!r} at byte {pos}")
        end = _value_end(raw, body)
        out.append((code, pos, end))
        pos = end
    _check_order([c for c, _, _ in out])
    return out


def _check_order(codes: list[int]) -> None:
    """Sections in the order the spec gives, except delivery annotations: the Python SDK writes them
    after the body on purpose, so they may stand anywhere (once). One kind of body only."""
    if all(a < b for a, b in pairwise(codes)) and sum(DATA <= c <= AMQP_VALUE for c in codes) <= 1:
        return  # the common case: each section once, in order, one body section
    if codes.count(DELIVERY_ANNOTATIONS) > 1:
        raise CodecError("message sections out of order or repeated: two delivery-annotations sections")
    ordered = [c for c in codes if c != DELIVERY_ANNOTATIONS]
    bodies = {c for c in ordered if DATA <= c <= AMQP_VALUE}
    if (ordered != sorted(ordered) or len(bodies) > 1 or ordered.count(AMQP_VALUE) > 1
            or any(ordered.count(c) > 1 for c in (HEADER, MESSAGE_ANNOTATIONS, PROPERTIES,
                                                   APPLICATION_PROPERTIES, FOOTER))):
        raise CodecError("message sections out of order or repeated")


def _decodes_fully(raw: bytes) -> bool:
    """Strict check with proton's decoder: every section decodes and nothing is left over."""
    pos = 0
    while pos < len(raw):
        data = Data()
        try:
            used = data.decode(raw[pos:])
        except Exception:  # noqa: BLE001  (proton raises assorted errors on bad bytes)
            return False
        if used <= 0:
            return False
        pos += used
    return pos == len(raw)


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


class _Complex(Exception):
    """A value the fast scalar reader leaves to proton's decoder."""


def _scalar(raw: bytes, pos: int) -> Any:
    """The scalar AMQP value at ``pos`` (the types header and properties fields use)."""
    code = raw[pos]
    if code == 0x40:
        return None
    if code in (0x41, 0x42):
        return code == 0x41
    if code == 0x56:
        return raw[pos + 1] == 1
    if code in (0x43, 0x44):
        return 0
    if code in (0x50, 0x52, 0x53):
        return raw[pos + 1]
    if code == 0x70:
        return int.from_bytes(raw[pos + 1:pos + 5], "big")
    if code == 0x80:
        return ulong(int.from_bytes(raw[pos + 1:pos + 9], "big"))
    if code == 0x83:
        return int.from_bytes(raw[pos + 1:pos + 9], "big", signed=True)
    if code == 0x98:
        return uuid.UUID(bytes=bytes(raw[pos + 1:pos + 17]))
    if code == 0xA0:
        return bytes(raw[pos + 2:pos + 2 + raw[pos + 1]])
    if code == 0xB0:
        n = int.from_bytes(raw[pos + 1:pos + 5], "big")
        return bytes(raw[pos + 5:pos + 5 + n])
    if code in (0xA1, 0xA3):
        return bytes(raw[pos + 2:pos + 2 + raw[pos + 1]]).decode()
    if code in (0xB1, 0xB3):
        n = int.from_bytes(raw[pos + 1:pos + 5], "big")
        return bytes(raw[pos + 5:pos + 5 + n]).decode()
    raise _Complex


def _list_fields(raw: bytes, start: int, end: int, wanted: int, keep: tuple[int, ...]) -> list[Any]:
    """Fields ``keep`` of the first ``wanted`` fields of a described-list section (others and missing
    ones are None), read without proton's decoder (the hot path of every send)."""
    pos = _value_end(raw, start + 1)  # past the descriptor
    code = raw[pos]
    out: list[Any] = [None] * wanted
    if code == 0x45:
        return out
    if code == 0xC0:
        count, pos = raw[pos + 2], pos + 3
    elif code == 0xD0:
        count, pos = int.from_bytes(raw[pos + 5:pos + 9], "big"), pos + 9
    else:
        raise CodecError("section is not a list")
    fixed = _FIXED_WIDTH
    for i in range(min(count, wanted)):
        if i in keep:
            out[i] = _scalar(raw, pos)
        width = fixed.get(raw[pos])
        pos = pos + 1 + width if width is not None else _value_end(raw, pos)
    if pos > end:
        raise CodecError("truncated section")
    return out


def parse_message(raw: bytes, sections: list[tuple[int, int, int]] | None = None) -> IncomingMessage:
    sections = _sections(raw) if sections is None else sections
    msg = IncomingMessage(bare=b"")
    bare: list[tuple[int, int]] = []  # (start, end) of the bare message's sections, merged when adjacent
    for code, start, end in sections:
        if code == HEADER:
            try:
                fields = _list_fields(raw, start, end, 3, (0, 1, 2))
            except _Complex:
                fields = list(_section_value(raw[start:end]) or []) + [None] * 3
            msg.durable = bool(fields[0])
            msg.priority = fields[1]
            msg.ttl_ms = int(fields[2]) if fields[2] is not None else None
        elif code == MESSAGE_ANNOTATIONS:
            value = _section_value(raw[start:end]) or {}
            msg.annotations = dict(value) if isinstance(value, dict) else {}
        elif code == PROPERTIES:
            try:
                fields = _list_fields(raw, start, end, 9, (0, 8))  # message-id, absolute-expiry
            except _Complex:
                fields = list(_section_value(raw[start:end]) or []) + [None] * 13
            msg.message_id = fields[0]
            if fields[8] is not None:
                msg.absolute_expiry_ms = int(fields[8])
        if code in _BARE:  # delivery annotations are per hop: never part of what is stored
            if bare and bare[-1][1] == start:
                bare[-1] = (bare[-1][0], end)
            else:
                bare.append((start, end))
    msg.bare = b"".join(bytes(raw[s:e]) for s, e in bare)
    return msg


def with_message_id(bare: bytes, message_id: str) -> bytes:
    """The bare message with ``message_id`` set in its properties (Azure assigns one when the sender
    gives none). Spliced at the byte level: every other field stays exactly as the sender encoded it."""
    sections = _sections(bare)
    new_id = _str(message_id)
    for code, start, end in sections:
        if code != PROPERTIES:
            continue
        pos = _value_end(bare, start + 1)  # past the descriptor
        head, kind = bare[start:pos], bare[pos]
        if kind == 0x45:  # list0: no fields at all
            items, count = b"", 0
        elif kind == 0xC0:
            count, items = bare[pos + 2], bare[pos + 3:end]
        elif kind == 0xD0:
            count, items = int.from_bytes(bare[pos + 5:pos + 9], "big"), bare[pos + 9:end]
        else:
            raise CodecError("the properties section is not a list")
        if count and items[:1] != b"\x40":
            return bare  # the sender gave an id
        rest = items[1:] if count else b""
        count = max(count, 1)
        return bare[:start] + head + _list(count, new_id + rest) + bare[end:]
    props = b"\x00\x53\x73" + _list(1, new_id)
    return props + bare  # properties come first in the bare message


def _list(count: int, items: bytes) -> bytes:
    if len(items) + 1 < 256 and count < 256:
        return b"\xc0" + bytes([len(items) + 1, count]) + items
    return b"\xd0" + (len(items) + 4).to_bytes(4, "big") + count.to_bytes(4, "big") + items


def _binary_payload(raw: bytes, start: int, end: int) -> bytes | None:
    """The bytes of a data section's binary value, sliced without decoding."""
    pos = start + (3 if raw[start + 1] == 0x53 else 10 if raw[start + 1] == 0x80 else -1)
    if pos < start:
        return None
    code = raw[pos]
    if code == 0xA0:
        return raw[pos + 2:end]
    if code == 0xB0:
        return raw[pos + 5:end]
    return None


def split_batch(raw: bytes, sections: list[tuple[int, int, int]] | None = None) -> list[bytes] | None:
    """The messages inside an SDK batch envelope, or None when ``raw`` is an ordinary message."""
    if sections is None:
        try:
            sections = _sections(raw)
        except CodecError:
            return None
    data_sections = [(s, e) for c, s, e in sections if c == DATA]
    if not data_sections or any(c in (AMQP_VALUE, AMQP_SEQUENCE) for c, _, _ in sections):
        return None
    inner: list[bytes] = []
    for start, end in data_sections:
        body = _binary_payload(raw, start, end)
        if not body or body[0] != 0x00:  # cheap reject: an encoded message starts with a described type
            return None
        try:
            inner_sections = _sections(body)
        except CodecError:
            return None
        if not any(c in (DATA, AMQP_SEQUENCE, AMQP_VALUE) for c, _, _ in inner_sections):
            return None
        if not _decodes_fully(body):  # a user body that only looks like sections is not a batch
            return None
        inner.append(bytes(body))
    return inner


def parse_incoming(raw: bytes) -> list[IncomingMessage]:
    """One transfer's messages: the batch's contents, or the single message itself."""
    sections = _sections(raw)
    parts = split_batch(raw, sections)
    if parts is None:
        return [parse_message(raw, sections)]
    return [parse_message(p) for p in parts]


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


# -- hand-written encoders for the per-delivery hot path (same bytes proton would write) ------------
def _sym(name: bytes) -> bytes:
    return b"\xa3" + bytes([len(name)]) + name


_K_SEQUENCE = _sym(b"x-opt-sequence-number")
_K_ENQUEUED = _sym(b"x-opt-enqueued-time")
_K_LOCKED_UNTIL = _sym(b"x-opt-locked-until")
_K_LOCK_TOKEN = _sym(b"x-opt-lock-token")
_K_SCHEDULED = _sym(b"x-opt-scheduled-enqueue-time")
_K_DEADLETTER_SOURCE = _sym(b"x-opt-deadletter-source")
_K_STATE = _sym(b"x-opt-message-state")
MESSAGE_STATES = {"active": 0, "deferred": 1, "scheduled": 2}  # Azure's x-opt-message-state values
_STATE_VALUES = {name: b"\x81" + v.to_bytes(8, "big") for name, v in MESSAGE_STATES.items()}


def _str(text: str) -> bytes:
    raw = text.encode()
    return (b"\xa1" + bytes([len(raw)]) if len(raw) < 256 else b"\xb1" + len(raw).to_bytes(4, "big")) + raw


def _ts(ms: int) -> bytes:
    return b"\x83" + int(ms).to_bytes(8, "big", signed=True)


def map_items(section: bytes | None) -> tuple[int, bytes]:
    """(element count, encoded elements) of an encoded map section, for splicing into another map."""
    if not section:
        return 0, b""
    pos = 3 if section[1] == 0x53 else 10
    code = section[pos]
    if code == 0xC1:
        return section[pos + 2], bytes(section[pos + 3:])
    if code == 0xD1:
        return int.from_bytes(section[pos + 5:pos + 9], "big"), bytes(section[pos + 9:])
    raise CodecError("message annotations are not a map")


def encode_header_fast(delivery_count: int, durable: bool = False, priority: int | None = None,
                       ttl_ms: int | None = None) -> bytes:
    items = (b"\x41" if durable else b"\x42") \
        + (b"\x40" if priority is None else b"\x50" + bytes([priority & 0xFF])) \
        + (b"\x40" if ttl_ms is None else b"\x70" + (ttl_ms & 0xFFFFFFFF).to_bytes(4, "big")) \
        + (b"\x41" if delivery_count == 0 else b"\x42") \
        + b"\x70" + delivery_count.to_bytes(4, "big")
    return b"\x00\x53\x70\xc0" + bytes([len(items) + 1, 5]) + items


def encode_annotations_fast(client: tuple[int, bytes], sequence_number: int, enqueued_ms: int,
                            locked_until_ms: int | None = None, lock_token: uuid.UUID | None = None,
                            scheduled_ms: int | None = None, deadletter_source: str | None = None,
                            state: str = "active") -> bytes:
    count, items = client
    parts = [items, _K_SEQUENCE, b"\x81", sequence_number.to_bytes(8, "big", signed=True), _K_ENQUEUED,
             _ts(enqueued_ms), _K_STATE, _STATE_VALUES[state]]
    count += 6
    if locked_until_ms is not None:
        parts += [_K_LOCKED_UNTIL, _ts(locked_until_ms)]
        count += 2
    if lock_token is not None:
        parts += [_K_LOCK_TOKEN, b"\x98", lock_token.bytes]
        count += 2
    if scheduled_ms is not None:
        parts += [_K_SCHEDULED, _ts(scheduled_ms)]
        count += 2
    if deadletter_source is not None:
        parts += [_K_DEADLETTER_SOURCE, _str(deadletter_source)]
        count += 2
    body = b"".join(parts)
    return b"\x00\x53\x72\xd1" + (len(body) + 4).to_bytes(4, "big") + count.to_bytes(4, "big") + body

"""Tolerate clients that number their transfers out of sequence (azure-servicebus's AutoLockRenewer).

The Python SDK's pyamqp session takes a transfer's delivery-id and increments its counter without a
lock, so several threads renewing locks of one receiver at once can send two transfers with the same
delivery-id, or send them out of order. The AMQP spec requires consecutive ids and proton enforces
it: it closes the connection ("sequencing error") and the application sees MessageLockLostError.
Azure serves such clients, so the emulator does too: incoming frames pass through
:class:`DeliveryIdFixer`, which gives every new delivery the id proton expects and remembers the
client's own id while the delivery is unsettled; dispositions proton writes for those deliveries are
translated back so the client settles what it sent. Connections whose clients number correctly
(almost all) are only scanned, frame header by frame header, never rewritten.
"""

from __future__ import annotations

from proton import Data, Described, ulong

from worker.emulator.codec import CodecError, _value_end

_BEGIN, _TRANSFER, _DISPOSITION = 0x11, 0x14, 0x15
_PROTOCOL_HEADER = b"AMQP"
_MAX_FRAME = 1 << 24


def _list_items(body: bytes, pos: int) -> tuple[int, int, int]:
    """(first item index, item count, end) of the list that starts at ``pos``."""
    code = body[pos]
    if code == 0x45:
        return pos + 1, 0, pos + 1
    if code == 0xC0:
        return pos + 3, body[pos + 2], pos + 2 + body[pos + 1]
    if code == 0xD0:
        return pos + 9, int.from_bytes(body[pos + 5:pos + 9], "big"), pos + 5 + int.from_bytes(body[pos + 1:pos + 5], "big")
    raise CodecError("performative is not a list")


def _uint_at(body: bytes, pos: int) -> int | None:
    code = body[pos]
    if code == 0x40:
        return None
    if code == 0x43:
        return 0
    if code == 0x52:
        return body[pos + 1]
    if code == 0x70:
        return int.from_bytes(body[pos + 1:pos + 5], "big")
    raise CodecError(f"not a uint: 0x{code:02x}")


def _bool_at(body: bytes, pos: int) -> bool:
    code = body[pos]
    return code == 0x41 or (code == 0x56 and body[pos + 1] == 1)


class _Stream:
    """Splits a byte stream into AMQP frames (and protocol headers), keeping partial frames."""

    def __init__(self) -> None:
        self.buffer = b""

    def frames(self, data: bytes) -> list[bytes]:
        buf = self.buffer + data if self.buffer else data
        out: list[bytes] = []
        pos, size = 0, len(buf)
        while pos < size:
            if buf[pos:pos + 4] == _PROTOCOL_HEADER[:min(4, size - pos)]:
                if size - pos < 8:
                    break
                out.append(buf[pos:pos + 8])
                pos += 8
                continue
            if size - pos < 8:
                break
            length = int.from_bytes(buf[pos:pos + 4], "big")
            if length < 8 or length > _MAX_FRAME:  # garbage: let proton see it and refuse the connection
                out.append(buf[pos:])
                pos = size
                break
            if size - pos < length:
                break
            out.append(buf[pos:pos + length])
            pos += length
        self.buffer = buf[pos:]
        return out


class DeliveryIdFixer:
    def __init__(self) -> None:
        self._in = _Stream()
        self._out = _Stream()
        self._expected: dict[int, int] = {}  # client channel -> delivery-id proton expects next
        self._current: dict[tuple[int, int], int] = {}  # (channel, handle) -> id of a multi-frame delivery
        self._client_ids: dict[int, dict[int, int]] = {}  # client channel -> {proton id: client id}
        self._local_to_remote: dict[int, int] = {}  # proton's channel -> the client's channel
        self._begins_pending = 0
        self.rewritten = 0  # transfers renumbered on this connection
        self.disabled = False
        self._started = False

    # -- client -> proton -------------------------------------------------------------------------
    def incoming(self, data: bytes) -> bytes:
        """``data`` with transfers renumbered; partial frames are held until complete."""
        if self.disabled:
            return data
        pending = self._in.buffer + data
        if not self._started:  # a connection opens with a protocol header; anything else is for proton
            if len(pending) < 4:
                self._in.buffer = pending
                return b""
            self._started = True
            if not pending.startswith(_PROTOCOL_HEADER):
                self.disabled = True
                self._in.buffer = b""
                return pending
        try:
            return self._incoming(data)
        except (CodecError, IndexError, ValueError):  # frames it cannot read: proton judges them
            self.disabled = True
            self._in.buffer = b""
            return pending

    def _incoming(self, data: bytes) -> bytes:
        had_partial = bool(self._in.buffer)
        frames = self._in.frames(data)
        changed = False
        for i, frame in enumerate(frames):
            if len(frame) < 11 or frame[5] != 0 or frame[:4] == _PROTOCOL_HEADER:
                continue
            body_at = frame[4] * 4
            if frame[body_at:body_at + 2] != b"\x00\x53":
                continue
            code = frame[body_at + 2]
            if code == _TRANSFER:
                fixed = self._transfer(frame, body_at)
                if fixed is not frame:
                    frames[i] = fixed
                    changed = True
            elif code == _BEGIN:
                self._begin_in(frame, body_at)
        if not changed and not had_partial and not self._in.buffer:
            return data
        return b"".join(frames)

    def _begin_in(self, frame: bytes, body_at: int) -> None:
        channel = int.from_bytes(frame[6:8], "big")
        first, count, _ = _list_items(frame, body_at + 3)
        if count >= 2:
            next_outgoing = _uint_at(frame, _value_end(frame, first))
            self._expected[channel] = next_outgoing or 0
        self._client_ids.pop(channel, None)  # a new session on this channel: nothing in flight
        self._current = {k: v for k, v in self._current.items() if k[0] != channel}
        self._begins_pending += 1

    def _transfer(self, frame: bytes, body_at: int) -> bytes:
        channel = int.from_bytes(frame[6:8], "big")
        list_at = body_at + 3
        first, count, list_end = _list_items(frame, list_at)
        if count < 2:
            return frame
        handle = _uint_at(frame, first) or 0
        id_at = _value_end(frame, first)
        client_id = _uint_at(frame, id_at)
        # settled (field 4) and more (field 5), when present
        pos, settled, more = _value_end(frame, id_at), False, False
        for field in range(2, min(count, 6)):
            if field == 4:
                settled = _bool_at(frame, pos)
            elif field == 5:
                more = _bool_at(frame, pos)
            pos = _value_end(frame, pos)
        key = (channel, handle)
        if key in self._current:  # a continuation frame of a multi-frame delivery
            proton_id = self._current[key]
            if not more:
                del self._current[key]
            if client_id is None or client_id == proton_id:
                return frame
        else:
            if client_id is None:
                return frame
            proton_id = self._expected.get(channel, client_id)
            self._expected[channel] = (proton_id + 1) & 0xFFFFFFFF
            if more:
                self._current[key] = proton_id
            if client_id == proton_id:
                return frame
            if not settled:
                self._client_ids.setdefault(channel, {})[proton_id] = client_id
            self.rewritten += 1
        new_id = b"\x70" + proton_id.to_bytes(4, "big")
        items = frame[first:id_at] + new_id + frame[_value_end(frame, id_at):list_end]
        performative = b"\x00\x53\x14\xd0" + (len(items) + 4).to_bytes(4, "big") + count.to_bytes(4, "big") + items
        out = frame[4:body_at] + performative + frame[list_end:]  # doff, type, channel, extended header
        return (len(out) + 4).to_bytes(4, "big") + out

    # -- proton -> client ------------------------------------------------------------------------
    @property
    def watching_output(self) -> bool:
        return self._begins_pending > 0 or any(self._client_ids.values())

    def outgoing(self, data: bytes) -> bytes:
        if self.disabled or (not self.watching_output and not self._out.buffer):
            return data
        pending = self._out.buffer + data
        try:
            return self._outgoing(data)
        except (CodecError, IndexError, ValueError, TypeError):
            self.disabled = True
            self._out.buffer = b""
            return pending

    def _outgoing(self, data: bytes) -> bytes:
        frames = self._out.frames(data)
        out: list[bytes] = []
        for frame in frames:
            if len(frame) >= 11 and frame[5] == 0 and frame[:4] != _PROTOCOL_HEADER:
                body_at = frame[4] * 4
                if frame[body_at:body_at + 2] == b"\x00\x53":
                    code = frame[body_at + 2]
                    if code == _BEGIN:
                        self._begin_out(frame, body_at)
                    elif code == _DISPOSITION:
                        out.extend(self._disposition(frame, body_at))
                        continue
            out.append(frame)
        return b"".join(out)

    def _begin_out(self, frame: bytes, body_at: int) -> None:
        first, count, _ = _list_items(frame, body_at + 3)
        if count >= 1:
            remote = _uint_at_ushort(frame, first)
            if remote is not None:
                self._local_to_remote[int.from_bytes(frame[6:8], "big")] = remote
        self._begins_pending = max(0, self._begins_pending - 1)

    def _disposition(self, frame: bytes, body_at: int) -> list[bytes]:
        channel = int.from_bytes(frame[6:8], "big")
        ids = self._client_ids.get(self._local_to_remote.get(channel, channel))
        if not ids:
            return [frame]
        data = Data()
        data.decode(frame[body_at:])
        data.rewind()
        data.next()
        fields = list(data.get_object().value)
        if not fields or not fields[0]:  # role=sender: dispositions of our own deliveries
            return [frame]
        first_id, last_id = int(fields[1]), int(fields[2] if len(fields) > 2 and fields[2] is not None else fields[1])
        settled = len(fields) > 3 and bool(fields[3])
        mapped = [ids.pop(i, i) if settled else ids.get(i, i) for i in range(first_id, last_id + 1)]
        if mapped == list(range(first_id, last_id + 1)):
            return [frame]
        runs: list[list[int]] = []
        for cid in mapped:
            if runs and runs[-1][-1] + 1 == cid:
                runs[-1].append(cid)
            else:
                runs.append([cid])
        out = []
        for run in runs:
            new = list(fields) + [None] * (3 - len(fields))
            new[1], new[2] = _uint(run[0]), _uint(run[-1])
            enc = Data()
            enc.put_object(Described(ulong(_DISPOSITION), new))
            body = enc.encode()
            out.append((8 + len(body)).to_bytes(4, "big") + b"\x02\x00" + frame[6:8] + body)
        return out


def _uint_at_ushort(body: bytes, pos: int) -> int | None:
    code = body[pos]
    if code == 0x60:
        return int.from_bytes(body[pos + 1:pos + 3], "big")
    return None


def _uint(value: int):
    from proton import uint

    return uint(value)

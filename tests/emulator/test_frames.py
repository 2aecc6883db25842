"""DeliveryIdFixer: a client whose transfers arrive out of delivery-id order (AutoLockRenewer's
threads) is served, and settles what it sent. Two real proton engines talk through the fixer."""

from __future__ import annotations

from proton import Collector, Connection, Delivery, Event, Transport

from worker.emulator.frames import DeliveryIdFixer, _Stream


def _pump(src: Transport, dst: Transport, mangle=None, fix=None) -> bytes:
    out = b""
    while (n := src.pending()) > 0:
        chunk = src.peek(n)
        src.pop(len(chunk))
        out += chunk
    if mangle:
        out = mangle(out)
    if fix:
        out = fix(out)
    if out:
        dst.push(out)
    return out


def _swap_transfers(data: bytes) -> bytes:
    """Send the 2nd and 3rd transfer frames in swapped order (ids 1, 0+2 -> 0, 2, 1)."""
    frames = _Stream().frames(data)
    transfers = [i for i, f in enumerate(frames) if len(f) > 11 and f[f[4] * 4:f[4] * 4 + 3] == b"\x00\x53\x14"]
    if len(transfers) >= 3:
        a, b = transfers[1], transfers[2]
        frames[a], frames[b] = frames[b], frames[a]
    return b"".join(frames)


def _duplicate_ids(data: bytes) -> bytes:
    """Give the 3rd transfer the 2nd one's delivery-id (pyamqp's unlocked counter)."""
    frames = _Stream().frames(data)
    transfers = [i for i, f in enumerate(frames) if len(f) > 11 and f[f[4] * 4:f[4] * 4 + 3] == b"\x00\x53\x14"]
    if len(transfers) >= 3:
        second, third = frames[transfers[1]], frames[transfers[2]]
        assert b"\x52\x01" in second[:40] and b"\x52\x02" in third[:40]
        frames[transfers[2]] = third.replace(b"\x52\x02", b"\x52\x01", 1)
    return b"".join(frames)


def _run(mangle, fixer: DeliveryIdFixer | None = None) -> tuple[list[bytes], dict, Transport, DeliveryIdFixer]:
    server_conn, server = Connection(), Transport(Transport.SERVER)
    collector = Collector()
    server_conn.collect(collector)
    server.bind(server_conn)
    client_conn, client = Connection(), Transport()
    client.bind(client_conn)
    fixer = fixer or DeliveryIdFixer()
    client_conn.open()
    session = client_conn.session()
    session.open()
    sender = session.sender("q")
    sender.open()
    received: list[bytes] = []
    sent = {}
    for _ in range(6):
        _pump(client, server, fix=fixer.incoming)
        while (ev := collector.peek()) is not None:
            if ev.type == Event.CONNECTION_REMOTE_OPEN:
                server_conn.open()
            elif ev.type == Event.SESSION_REMOTE_OPEN:
                ev.session.open()
            elif ev.type == Event.LINK_REMOTE_OPEN:
                ev.link.open()
                ev.link.flow(10)
            elif ev.type == Event.DELIVERY and ev.delivery.readable and not ev.delivery.partial:
                link = ev.delivery.link
                received.append(bytes(link.recv(ev.delivery.pending)))
                link.advance()
                ev.delivery.update(Delivery.ACCEPTED)
                ev.delivery.settle()
            collector.pop()
        _pump(server, client, fix=fixer.outgoing)
        if sender.credit and not sent:
            for tag in (b"a", b"b", b"c", b"d"):
                d = sender.delivery(tag)
                sender.send(tag * 3)
                sender.advance()
                sent[tag] = d
            _pump(client, server, mangle=mangle, fix=fixer.incoming)
    states = {tag: d.remote_state for tag, d in sent.items()}
    return received, states, server, fixer


def test_transfers_out_of_order_are_served_and_settled():
    received, states, server, fixer = _run(_swap_transfers)
    assert server.condition is None
    assert sorted(received) == [b"aaa", b"bbb", b"ccc", b"ddd"]
    assert fixer.rewritten == 2
    assert set(states.values()) == {Delivery.ACCEPTED}  # each client delivery got its own disposition


def test_duplicate_delivery_ids_are_served():
    received, _, server, fixer = _run(_duplicate_ids)
    assert server.condition is None
    assert len(received) == 4 and fixer.rewritten >= 1


def test_a_well_behaved_client_is_not_rewritten():
    received, states, _, fixer = _run(None)
    assert fixer.rewritten == 0 and len(received) == 4
    assert set(states.values()) == {Delivery.ACCEPTED}


def test_without_the_fixer_proton_refuses_the_swapped_order():
    """Positive control: the same frames, passed through unchanged, end in proton's sequencing error."""
    fixer = DeliveryIdFixer()
    fixer.disabled = True
    _, _, server, _ = _run(_swap_transfers, fixer)
    assert server.condition is not None and "sequencing" in server.condition.description

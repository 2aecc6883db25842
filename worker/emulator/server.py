"""The AMQP 1.0 side: proton's protocol engine driven by asyncio sockets.

proton's engine (Connection/Transport/Collector) does framing, SASL and link bookkeeping; this module
does the I/O and maps links to roles:

* ``$cbs`` sender/receiver pair   -> put-token (claims-based security, see :mod:`auth`)
* ``<queue>`` (client sender)     -> :class:`Producer`: messages and SDK batches into the queue
* ``<queue>`` or ``<queue>/$deadletterqueue`` (client receiver) -> :class:`ConsumerLink`
* ``<queue>/$management`` pair    -> :mod:`management` request/response operations

A misbehaving client (garbage bytes, protocol errors) only loses its own connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from typing import Any

from cproton import (
    isnull,
    pn_collector_peek,
    pn_collector_pop,
    pn_delivery,
    pn_event_delivery,
    pn_event_link,
    pn_event_type,
    pn_link_recv,
    pn_link_send,
    pn_transport_peek,
    pn_transport_push,
)
from cproton_ffi import ffi, lib
from proton import Collector, Condition, Connection, Delivery, Event, Link, Message, Transport, symbol

from worker.emulator import codec
from worker.emulator.auth import AuthError, Authority, Grant, entity_path
from worker.emulator.broker import Broker, BrokerError, Entity
from worker.emulator.broker import Message as StoredMessage
from worker.emulator.config import Right
from worker.emulator.frames import DeliveryIdFixer
from worker.emulator.management import status_reply

log = logging.getLogger(__name__)

PRODUCER_CREDIT = 500
CBS = "$cbs"
MANAGEMENT = "$management"


class OutLink:
    """A broker->client link carrying replies ($cbs, $management); queues replies until credit."""

    def __init__(self, conn: AmqpConnection, link: Link) -> None:
        self.conn = conn
        self.link = link
        self.pending: deque[bytes] = deque()
        self._tag = 0

    def send(self, payload: bytes) -> None:
        self.pending.append(payload)
        self.flush()

    def flush(self) -> None:
        while self.pending and self.link.credit > 0 and self.link.state & Link.LOCAL_ACTIVE:
            self._tag += 1
            dlv = self.link.delivery(str(self._tag).encode())
            self.link.send(self.pending.popleft())
            dlv.settle()
            self.link.advance()
        self.conn.touch()


class ConsumerLink:
    """A client's receiver on a queue or dead-letter queue (the broker's sending side)."""

    def __init__(self, conn: AmqpConnection, link: Link, entity: Entity) -> None:
        self.conn = conn
        self.link = link
        self.entity = entity
        self.presettled = link.remote_snd_settle_mode == Link.SND_SETTLED  # RECEIVE_AND_DELETE
        self._tag = 0
        self._impl = link._impl  # the hot path calls proton's C API directly (no wrapper objects)

    def credit(self) -> int:
        if not lib.pn_link_state(self._impl) & lib.PN_LOCAL_ACTIVE:
            return 0
        return lib.pn_link_credit(self._impl)

    def offer(self, msg: StoredMessage) -> None:
        broker = self.conn.server.broker
        impl = self._impl
        if self.presettled:
            payload = msg.encode(None)
            broker.take_unlocked(msg)
            self._tag += 1
            dlv = pn_delivery(impl, self._tag.to_bytes(8, "little"))
            pn_link_send(impl, payload)
            lib.pn_delivery_settle(dlv)
        else:
            lock = broker.lock(msg, holder=self)
            pn_delivery(impl, lock.token.bytes_le)  # the SDK reads the lock token from the tag (so do we)
            pn_link_send(impl, msg.encode(lock))
        lib.pn_link_advance(impl)
        self.conn.touch()

    def after_pump(self) -> None:
        if lib.pn_link_get_drain(self._impl) and lib.pn_link_credit(self._impl) > 0:
            self.link.drained()
            self.conn.touch()

    def detach(self) -> None:
        if self in self.entity.consumers:
            self.entity.consumers.remove(self)
        self.conn.server.broker.drop_holder(self)

    def on_disposition(self, impl: Any) -> None:
        if self.presettled:  # pre-settled delivery, nothing to do
            lib.pn_delivery_settle(impl)
            return
        tag = lib.pn_delivery_tag(impl)
        token = uuid.UUID(bytes_le=ffi.unpack(tag.start, tag.size))
        broker = self.conn.server.broker
        if lib.pn_delivery_remote_state(impl) == lib.PN_ACCEPTED:  # complete: the common case, unwrapped
            try:
                broker.complete(token)
            except BrokerError:
                pass  # answered below, by the general path
            else:
                # Echoed at once, before this turn's commit: see the comment in echo() below.
                if not lib.pn_delivery_settled(impl):
                    lib.pn_delivery_update(impl, lib.PN_ACCEPTED)
                    lib.pn_delivery_settle(impl)
                self.conn.touch()
                return
        dlv = Delivery.wrap(impl)
        state = dlv.remote_state
        echo_state = state
        try:
            if state == Delivery.ACCEPTED:
                broker.complete(token)  # raises: the lock is gone (the fast path above saw it)
            elif state == Delivery.REJECTED:
                reason, description = _dead_letter_info(dlv.remote.condition)
                broker.dead_letter(token, reason, description)
            elif state == Delivery.MODIFIED:
                if dlv.remote.undeliverable:
                    broker.defer(token)
                else:
                    # Azure counts every abandon, with or without delivery-failed (the JS SDK omits it)
                    broker.abandon(token)
            elif state == Delivery.RELEASED:
                broker.release(token)
            else:
                return  # not a terminal outcome yet
        except BrokerError as err:
            def refuse(err: BrokerError = err) -> None:
                if not dlv.settled:
                    dlv.local.condition = _condition(err)
                    dlv.update(Delivery.REJECTED)
                    dlv.settle()
                    self.conn.touch()
            refuse()
            return

        def echo() -> None:
            # The SDK (7.15+) waits for the settled outcome it asked for; rejected must carry no error.
            if dlv.settled:
                return
            if echo_state == Delivery.MODIFIED:
                dlv.local.failed = bool(dlv.remote.failed)
                dlv.local.undeliverable = bool(dlv.remote.undeliverable)
            dlv.update(echo_state)
            dlv.settle()
            self.conn.touch()

        # Settlements are echoed at once, before this turn's commit (which follows within the same
        # loop turn): a receiver's settle call blocks until the echo arrives, and echoing after the fsync
        # put it on every round trip (p50 +0.1-0.6 ms, p99 up to 5.1 ms in benchmarks emulator).
        # A crash in between can only bring a completed message back (at-least-once), never lose one.
        echo()


def _condition(err: BrokerError) -> Condition:
    # pyamqp's sender indexes condition, description AND info of a rejected outcome: always send info.
    return Condition(err.condition, err.description, {symbol("emulator-status"): codec.amqp_int(err.status)})


def _dead_letter_info(cond: Condition | None) -> tuple[str | None, str | None]:
    if cond is None:
        return None, None
    info = cond.info if isinstance(cond.info, dict) else {}
    info = {str(k): v for k, v in info.items()}
    reason = info.get("DeadLetterReason")
    description = info.get("DeadLetterErrorDescription", cond.description)
    return (None if reason is None else str(reason)), (None if description is None else str(description))


class Producer:
    """A client's sender to a queue: stores each message, acknowledges it once committed.

    A sender whose attach cannot be honoured (unknown queue, dead-letter queue) is still attached
    and every transfer is rejected with the reason: pyamqp reports a refused attach as an unknown
    error but maps a rejected transfer's condition to the right SDK exception.
    """

    def __init__(self, conn: AmqpConnection, link: Link, entity: Entity | None,
                 refusal: BrokerError | None = None) -> None:
        self.conn = conn
        self.link = link
        self.queue = entity.queue if entity else None
        self.refusal = refusal

    def on_message(self, dlv: Any, raw: bytes) -> None:
        """``dlv``: proton's delivery (the C pointer; wrapped only to refuse)."""
        broker = self.conn.server.broker
        try:
            if self.refusal is not None or self.queue is None:
                raise self.refusal or BrokerError("amqp:not-found", "no such entity")
            self.conn.require(self.queue.name, Right.SEND)
            limit = self.queue.config.max_message_size
            if len(raw) > limit:
                raise BrokerError("amqp:link:message-size-exceeded",
                                  f"The message ({len(raw)} bytes) exceeds the queue's maximum message size "
                                  f"({limit} bytes).")
            messages = codec.parse_incoming(raw)
            if self.queue.name.lower() not in broker.queues:
                raise BrokerError("amqp:not-found", f"The messaging entity '{self.queue.name}' was deleted.")
            for m in messages:
                broker.enqueue(self.queue, m)
        except codec.CodecError as exc:
            self._settle(dlv, BrokerError("amqp:decode-error", f"Malformed message: {exc}"))
            return
        except BrokerError as err:
            self._settle(dlv, err)
            return
        lib.pn_incref(dlv)  # keep the delivery alive until it is acknowledged (even if the peer goes)
        broker.after_commit(lambda: self._acknowledge(dlv))

    def _acknowledge(self, dlv: Any) -> None:
        if not lib.pn_delivery_settled(dlv):
            lib.pn_delivery_update(dlv, lib.PN_ACCEPTED)
            lib.pn_delivery_settle(dlv)
        lib.pn_decref(dlv)
        self._replenish()

    def _settle(self, impl: Any, err: BrokerError) -> None:
        dlv = Delivery.wrap(impl)
        if not dlv.settled:
            dlv.local.condition = _condition(err)
            dlv.update(Delivery.REJECTED)
            dlv.settle()
        self._replenish()

    def _replenish(self) -> None:
        impl = self.link._impl
        credit = lib.pn_link_credit(impl)
        if lib.pn_link_state(impl) & lib.PN_LOCAL_ACTIVE and credit < PRODUCER_CREDIT // 2:
            lib.pn_link_flow(impl, PRODUCER_CREDIT - credit)
        self.conn.touch()


class RequestLink:
    """A client's sender to $cbs or <queue>/$management: requests answered on the paired reply link."""

    def __init__(self, conn: AmqpConnection, link: Link, kind: str, entity: str | None) -> None:
        self.conn = conn
        self.link = link
        self.kind = kind
        self.entity = entity

    def on_message(self, impl: Any, raw: bytes) -> None:
        dlv = Delivery.wrap(impl)
        request = Message()
        try:
            request.decode(raw)
        except Exception as exc:  # noqa: BLE001  (proton raises assorted errors on bad bytes)
            dlv.local.condition = Condition("amqp:decode-error", f"Malformed request: {exc}")
            dlv.update(Delivery.REJECTED)
            dlv.settle()
            return
        dlv.update(Delivery.ACCEPTED)
        dlv.settle()
        if self.kind == CBS:
            reply = self.conn.put_token(request)
            self.conn.reply(CBS, None, reply)
        else:
            from worker.emulator.management import handle

            def respond(reply: Message) -> None:
                self.conn.reply(MANAGEMENT, request.reply_to, reply)

            handle(self.conn, self.entity or "", request, respond)
        if self.link.credit < PRODUCER_CREDIT // 2:
            self.link.flow(PRODUCER_CREDIT - self.link.credit)


class AmqpConnection(asyncio.Protocol):
    def __init__(self, server: AmqpServer) -> None:
        self.server = server
        self.grants: list[Grant] = []
        self.sock: asyncio.Transport | None = None
        self.closed = False
        self._tick: asyncio.TimerHandle | None = None
        self.connection = Connection()
        self.transport = Transport(Transport.SERVER)
        self.transport.idle_timeout = 0
        sasl = self.transport.sasl()
        sasl.allowed_mechs("ANONYMOUS PLAIN")
        sasl.allow_insecure_mechs = True
        self.collector = Collector()
        self.connection.collect(self.collector)
        self.transport.bind(self.connection)
        self.reply_links: dict[str, list[tuple[Link, OutLink]]] = {CBS: [], MANAGEMENT: []}
        self.fixer = DeliveryIdFixer()  # AutoLockRenewer's out-of-order ids
        self.roles: dict[Any, Any] = {}  # link's C pointer -> its role, for the unwrapped hot path
        self._next_tick_check = 0.0

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.sock = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket

            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        data = self.fixer.incoming(data)
        transport = self.transport._impl  # proton's C API directly: this runs for every frame batch
        try:
            while data:
                capacity = lib.pn_transport_capacity(transport)
                if capacity <= 0:
                    if capacity < lib.PN_EOS:
                        raise ConnectionError(f"transport error {capacity}")
                    break
                chunk, data = data[:capacity], data[capacity:]
                if pn_transport_push(transport, chunk) < 0:
                    raise ConnectionError("transport refused input")
                self._process()
        except Exception as exc:  # noqa: BLE001  (protocol garbage must cost only this connection)
            log.info("closing connection after error: %s", exc)
            self.transport.close_tail()
        self.touch()
        self.server.broker.wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.fixer.rewritten:
            log.info("renumbered %d out-of-sequence transfers on a closed connection", self.fixer.rewritten)
        self.server.connections.discard(self)
        if self._tick:
            self._tick.cancel()
        try:
            self.transport.close_tail()
            self.transport.close_head()
            self._process()
        except Exception as error:  # noqa: BLE001  (the peer is gone; nothing to answer)
            log.debug("ignoring error while closing a lost connection: %s", error)
        self._drop_all_links()
        self.transport.unbind()

    # -- engine ----------------------------------------------------------------------------------
    def touch(self) -> None:
        self.server.dirty.add(self)
        self.server.broker.wake()

    def write_out(self) -> None:
        if self.closed or self.sock is None:
            return
        transport = self.transport._impl
        try:
            self._process()
            while True:
                pending = lib.pn_transport_pending(transport)
                if pending < 0:
                    self.sock.close()  # transport finished (closed or errored)
                    self.closed = True
                    return
                if pending == 0:
                    if lib.pn_transport_capacity(transport) < 0:  # input closed (protocol error / peer done)
                        self.sock.close()
                        self.closed = True
                        return
                    break
                n, out = pn_transport_peek(transport, pending)
                if n < 0:
                    raise ConnectionError(f"transport error {n}")
                lib.pn_transport_pop(transport, n)
                self.sock.write(self.fixer.outgoing(bytes(out)))
            now = time.monotonic()
            if self._tick is None and now >= self._next_tick_check:  # idle timeouts: heartbeats
                deadline = self.transport.tick(now)
                if deadline:
                    loop = asyncio.get_running_loop()
                    self._tick = loop.call_later(max(0.0, deadline - now), self._on_tick)
                else:  # none negotiated (yet): look again in a second, not on every write
                    self._next_tick_check = now + 1.0
        except Exception:
            log.exception("connection output failed")
            self.sock.close()
            self.closed = True

    def _on_tick(self) -> None:
        self._tick = None
        self.touch()

    def _process(self) -> None:
        # Raw event loop over proton's collector: wrapping every event in Python (Event.wrap wraps
        # its delivery, link, session, connection and transport) was the broker's largest CPU cost,
        # and most events (transport, local state changes) need nothing from us.
        impl = self.collector._impl
        while True:
            raw = pn_collector_peek(impl)
            if isnull(raw):
                break
            kind = pn_event_type(raw)
            try:
                if kind == _DELIVERY:
                    self._delivery(pn_event_delivery(raw))
                elif kind == _LINK_FLOW:
                    self._flow(pn_event_link(raw))
                elif kind in _HANDLED:
                    self._dispatch(Event.wrap(raw))
            except Exception:
                log.exception("error handling proton event %s", kind)
                cond = Condition("amqp:internal-error", "emulator failed handling the request")
                self.connection.condition = cond
                self.connection.close()
            pn_collector_pop(impl)

    def _dispatch(self, event: Event) -> None:
        t = event.type
        if t == Event.CONNECTION_REMOTE_OPEN:
            self.connection.container = "servicebus-emulator"
            self.connection.open()
        elif t == Event.SESSION_REMOTE_OPEN:
            event.session.open()
        elif t == Event.LINK_REMOTE_OPEN:
            self._attach(event.link)
        elif t == Event.LINK_REMOTE_CLOSE or t == Event.LINK_REMOTE_DETACH:
            self._detach(event.link)
            if event.link.state & Link.LOCAL_ACTIVE:
                event.link.close()
        elif t == Event.SESSION_REMOTE_CLOSE:
            if event.session.state & Link.LOCAL_ACTIVE:
                event.session.close()
        elif t == Event.CONNECTION_REMOTE_CLOSE:
            if self.connection.state & Link.LOCAL_ACTIVE:
                self.connection.close()
        elif t == Event.TRANSPORT_ERROR:
            cond = self.transport.condition
            log.info("transport error: %s", cond.description if cond else "?")

    # -- links -------------------------------------------------------------------------------
    def _attach(self, link: Link) -> None:
        if link.is_sender:
            address = link.remote_source.address or ""
        else:
            address = link.remote_target.address or ""
        path = entity_path(address)
        try:
            if path == CBS:
                role: Any = self._open(link)
                if link.is_sender:
                    out = OutLink(self, link)
                    self.reply_links[CBS].append((link, out))
                    role = out
                else:
                    role = RequestLink(self, link, CBS, None)
            elif path.endswith("/" + MANAGEMENT):
                entity = path[: -len(MANAGEMENT) - 1]
                self.server.broker.resolve(entity)
                self.require_any(entity)
                self._open(link)
                if link.is_sender:
                    out = OutLink(self, link)
                    self.reply_links[MANAGEMENT].append((link, out))
                    role = out
                else:
                    role = RequestLink(self, link, MANAGEMENT, entity)
            elif not link.is_sender:
                try:
                    entity = self.server.broker.resolve(path)
                    if entity.is_dlq:
                        raise BrokerError("amqp:not-allowed", "Messages cannot be sent to a dead-letter queue.")
                except BrokerError as err:
                    self._open(link)
                    role = Producer(self, link, None, err)
                else:
                    # Rights are checked per transfer (see Producer).
                    link.max_message_size = entity.queue.config.max_message_size
                    self._open(link)
                    role = Producer(self, link, entity)
            else:
                entity = self.server.broker.resolve(path)
                if _wants_session(link):
                    raise BrokerError("amqp:not-implemented",
                                      "Sessions are not supported by the local Service Bus emulator.", 501)
                self.require(entity.path, Right.LISTEN)
                self._open(link)
                role = ConsumerLink(self, link, entity)
                entity.consumers.append(role)
        except BrokerError as err:
            self._refuse(link, err)
            return
        self.roles[link._impl] = role
        if link.is_receiver:
            link.flow(PRODUCER_CREDIT)

    def _open(self, link: Link) -> None:
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        link.open()

    def _refuse(self, link: Link, err: BrokerError) -> None:
        # Answer the attach (pyamqp drops links whose attach has a null terminus), then detach with the
        # error: the SDK raises the exception mapped from the condition.
        self._open(link)
        link.condition = Condition(err.condition, err.description)
        link.close()
        self.touch()

    def _detach(self, link: Link) -> None:
        role = self.roles.pop(link._impl, None)
        if isinstance(role, ConsumerLink):
            role.detach()
        for kind in self.reply_links:
            self.reply_links[kind] = [(l, o) for l, o in self.reply_links[kind] if l != link]

    def _drop_all_links(self) -> None:
        link = self.connection.link_head(0)
        while link:
            self._detach(link)
            link = link.next(0)

    def _flow(self, link: Any) -> None:
        role = self.roles.get(link)
        if isinstance(role, ConsumerLink):
            self.server.broker.request_pump(role.entity)
        elif isinstance(role, OutLink):
            role.flush()

    def _delivery(self, dlv: Any) -> None:
        """A transfer or disposition arrived; ``dlv`` is proton's C pointer (wrapping costs CPU)."""
        link = lib.pn_delivery_link(dlv)
        role = self.roles.get(link)
        if lib.pn_link_is_receiver(link):
            if not lib.pn_delivery_readable(dlv) or lib.pn_delivery_partial(dlv):
                return
            n, raw = pn_link_recv(link, lib.pn_delivery_pending(dlv))
            lib.pn_link_advance(link)
            if role is None:
                lib.pn_delivery_update(dlv, lib.PN_REJECTED)
                lib.pn_delivery_settle(dlv)
                return
            role.on_message(dlv, bytes(raw) if n > 0 else b"")
        elif isinstance(role, ConsumerLink) and lib.pn_delivery_updated(dlv) and lib.pn_delivery_remote_state(dlv):
            role.on_disposition(dlv)
        elif lib.pn_delivery_settled(dlv):  # settled by the peer: settle our side too
            lib.pn_delivery_settle(dlv)

    # -- security ----------------------------------------------------------------------------------
    def put_token(self, request: Message) -> Message:
        props = request.properties or {}
        audience = str(props.get("name", ""))
        token = request.body
        if isinstance(token, (bytes, memoryview)):
            token = bytes(token).decode(errors="replace")
        try:
            if str(props.get("operation")) != "put-token":
                raise AuthError(f"unsupported $cbs operation {props.get('operation')!r}")
            grant = self.server.authority.verify(str(token), audience=audience)
        except AuthError as exc:
            return status_reply(request, 401, f"Unauthorized: {exc}", code_key="status-code",
                           description_key="status-description")
        now = time.time()  # the SDK refreshes tokens on long-lived connections: drop expired grants
        self.grants = [g for g in self.grants if g.expires > now]
        self.grants.append(grant)
        return status_reply(request, 202, "Accepted", code_key="status-code", description_key="status-description")

    def require(self, entity: str, right: Right) -> None:
        now = time.time()
        entity = entity.lower()
        if any(g.allows(entity, right, now) for g in self.grants):
            return
        raise BrokerError("amqp:unauthorized-access",
                          f"Unauthorized access. '{right.value}' claim(s) are required to perform this "
                          f"operation. Resource: '{entity}'.", 401)

    def require_any(self, entity: str) -> None:
        now = time.time()
        entity = entity.lower()
        if not any(g.allows(entity, r, now) for g in self.grants for r in (Right.LISTEN, Right.SEND)):
            raise BrokerError("amqp:unauthorized-access",
                              f"Unauthorized access: no valid token for '{entity}'.", 401)

    def reply(self, kind: str, reply_to: str | None, message: Message) -> None:
        links = self.reply_links[kind]
        chosen = None
        for link, out in links:
            if reply_to is None or (link.remote_target.address or "") == reply_to:
                chosen = out
                break
        if chosen is None and links:
            chosen = links[-1][1]
        if chosen is None:
            log.info("no reply link for %s reply to %r; dropping", kind, reply_to)
            return
        chosen.send(message.encode())


_DELIVERY, _LINK_FLOW = Event.DELIVERY.number, Event.LINK_FLOW.number
_HANDLED = frozenset(e.number for e in (
    Event.CONNECTION_REMOTE_OPEN, Event.SESSION_REMOTE_OPEN, Event.LINK_REMOTE_OPEN, Event.LINK_REMOTE_CLOSE,
    Event.LINK_REMOTE_DETACH, Event.SESSION_REMOTE_CLOSE, Event.CONNECTION_REMOTE_CLOSE, Event.TRANSPORT_ERROR))


def _wants_session(link: Link) -> bool:
    data = link.remote_source.filter
    data.rewind()
    if data.next() is None:
        return False
    obj = data.get_object()
    return isinstance(obj, dict) and any("session" in str(k) for k in obj)


class AmqpServer:
    def __init__(self, broker: Broker, authority: Authority) -> None:
        self.broker = broker
        self.authority = authority
        self.connections: set[AmqpConnection] = set()
        self.dirty: set[AmqpConnection] = set()
        self._server: asyncio.base_events.Server | None = None
        broker.on_turn_end = self.flush

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: AmqpConnection(self), host, port, reuse_address=True)
        return self._server.sockets[0].getsockname()[1]

    def flush(self) -> None:
        while self.dirty:
            conn = self.dirty.pop()
            conn.write_out()

    async def stop(self) -> None:
        if self._server:
            self._server.close()
        for conn in list(self.connections):
            try:
                conn.connection.condition = Condition("amqp:connection:forced", "the emulator is shutting down")
                conn.connection.close()
                conn.write_out()
                if conn.sock:
                    conn.sock.close()
            except Exception as exc:  # noqa: BLE001  (shutting down: close what can be closed)
                log.debug("error closing a connection at shutdown: %s", exc)

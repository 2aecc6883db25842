"""Bad input: unknown entities, oversize messages, garbage on the socket, unsupported operations."""

from __future__ import annotations

import socket

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusReceiveMode
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    ServiceBusError,
)


@pytest.fixture
def strict_client(emulator):
    with ServiceBusClient.from_connection_string(emulator.connection_string(), retry_total=0) as c:
        yield c


def test_unknown_queue_is_entity_not_found(strict_client):
    with pytest.raises(MessagingEntityNotFoundError), strict_client.get_queue_sender("no-such-queue") as s:
        s.send_messages(ServiceBusMessage("x"))
    with pytest.raises(MessagingEntityNotFoundError), strict_client.get_queue_receiver("no-such-queue") as r:
        r.receive_messages(max_wait_time=1)


def test_oversize_message_is_refused_and_nothing_stored(strict_client, queue_factory, emulator):
    q = queue_factory(max_message_size_kb=1)
    with strict_client.get_queue_sender(q) as s:
        with pytest.raises(MessageSizeExceededError):
            s.send_messages(ServiceBusMessage(b"x" * 4096))
        s.send_messages(ServiceBusMessage(b"small"))  # the link keeps working
    with strict_client.get_queue_receiver(q, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as r:
        assert [b"".join(m.body) for m in r.receive_messages(max_message_count=5, max_wait_time=2)] == [b"small"]


def test_sending_to_the_dead_letter_queue_is_refused(strict_client, queue_factory):
    q = queue_factory()
    with pytest.raises(ServiceBusError), strict_client.get_queue_sender(f"{q}/$deadletterqueue") as s:
        s.send_messages(ServiceBusMessage("x"))


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",                      # wrong protocol
    b"AMQP\x00\x01\x00\x00" + b"\x00\x00\x00\x10\x02\x00\x00\x00" + b"\xff" * 8,  # valid header, bad frame
    bytes(range(256)) * 4,                                        # noise
])
def test_garbage_on_the_socket_closes_only_that_connection(emulator, queue_factory, client, garbage):
    q = queue_factory()
    with client.get_queue_sender(q) as s:
        s.send_messages(ServiceBusMessage("before"))
    with socket.create_connection((emulator.host, emulator.port), timeout=5) as sock:
        sock.sendall(garbage)
        sock.settimeout(5)
        received = b""
        try:
            while chunk := sock.recv(4096):  # the broker answers (header/close) and hangs up
                received += chunk
        except ConnectionResetError:
            pass
    with client.get_queue_sender(q) as s:
        s.send_messages(ServiceBusMessage("after"))
    with client.get_queue_receiver(q, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as r:
        got = r.receive_messages(max_message_count=5, max_wait_time=2)
    assert [str(m) for m in got] == ["before", "after"]
    assert emulator.running


def test_unsupported_management_operation_answers_clearly(strict_client, queue_factory):
    q = queue_factory()
    with strict_client.get_queue_receiver(q) as r:
        with pytest.raises(ServiceBusError) as info:
            r._mgmt_request_response_with_retry(  # an operation the emulator does not implement
                b"com.microsoft:get-message-sessions", {"skip": 0, "top": 10},
                lambda status, message, description, **_: (_ for _ in ()).throw(
                    ServiceBusError(f"{status}: {description}")))
        assert "501" in str(info.value) and "not supported" in str(info.value)

"""SAS verification and per-entity rights, through the SDK (errors surface as the SDK's exceptions)."""

from __future__ import annotations

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusReceiveMode
from azure.servicebus.exceptions import ServiceBusAuthenticationError, ServiceBusAuthorizationError

from worker.emulator.auth import generate_key


def _client(conn_str: str) -> ServiceBusClient:
    return ServiceBusClient.from_connection_string(conn_str, retry_total=0)


@pytest.fixture
def guarded_queue(queue_factory):
    keys = {"listen": generate_key(), "send": generate_key()}
    name = queue_factory(policies=[
        {"name": "listen-only", "key": keys["listen"], "rights": ["Listen"]},
        {"name": "send-only", "key": keys["send"], "rights": ["Send"]},
    ])
    return name


def test_listen_only_cannot_send_but_can_receive(emulator, guarded_queue, client):
    with _client(emulator.connection_string("listen-only", guarded_queue)) as c:
        with pytest.raises(ServiceBusAuthorizationError), c.get_queue_sender(guarded_queue) as s:
            s.send_messages(ServiceBusMessage("nope"))
        # the same credential still receives
        with client.get_queue_sender(guarded_queue) as s:
            s.send_messages(ServiceBusMessage("for listener"))
        with c.get_queue_receiver(guarded_queue, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as r:
            assert [str(m) for m in r.receive_messages(max_wait_time=5)] == ["for listener"]


def test_send_only_cannot_receive_or_peek(emulator, guarded_queue):
    with _client(emulator.connection_string("send-only", guarded_queue)) as c:
        with c.get_queue_sender(guarded_queue) as s:
            s.send_messages(ServiceBusMessage("ok"))
        with pytest.raises(ServiceBusAuthorizationError), c.get_queue_receiver(guarded_queue) as r:
            r.receive_messages(max_wait_time=1)


def test_queue_policy_does_not_reach_other_queues(emulator, guarded_queue, queue_factory):
    other = queue_factory()
    # a token scoped to guarded_queue, used for another entity
    conn = emulator.connection_string("send-only", guarded_queue).replace(f"EntityPath={guarded_queue}",
                                                                           f"EntityPath={other}")
    with (_client(conn) as c, pytest.raises((ServiceBusAuthorizationError, ServiceBusAuthenticationError)),
          c.get_queue_sender(other) as s):
        s.send_messages(ServiceBusMessage("x"))


@pytest.mark.slow
def test_bad_signature_is_an_authentication_error_and_others_keep_working(emulator, queue_factory, client):
    q = queue_factory()
    forged = emulator.connection_string().replace(emulator.config.policies[0].key, generate_key())
    with _client(forged) as c, pytest.raises(ServiceBusAuthenticationError), c.get_queue_sender(q) as s:
        s.send_messages(ServiceBusMessage("forged"))
    unknown_policy = emulator.connection_string().replace("RootManageSharedAccessKey", "NoSuchPolicy")
    with _client(unknown_policy) as c, pytest.raises(ServiceBusAuthenticationError), c.get_queue_receiver(q) as r:
        r.receive_messages(max_wait_time=1)
    with client.get_queue_sender(q) as s:
        s.send_messages(ServiceBusMessage("legit"))
    with client.get_queue_receiver(q, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as r:
        assert [str(m) for m in r.receive_messages(max_wait_time=5)] == ["legit"]


def test_sessions_are_refused_clearly(emulator, queue_factory):
    from azure.servicebus.exceptions import ServiceBusError

    q = queue_factory()
    with (_client(emulator.connection_string()) as c, pytest.raises(ServiceBusError) as info,
          c.get_queue_receiver(q, session_id="s1") as r):
        r.receive_messages(max_wait_time=1)
    assert "not supported" in str(info.value).lower() or "not-implemented" in str(info.value).lower()

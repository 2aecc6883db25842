"""The HTTP port: health, Prometheus metrics, runtime queue creation (authorised) and listing."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage

from worker.emulator.auth import generate_key, make_token
from worker.emulator.http import parse_metrics


def _http(emulator, method, path, body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{emulator.host}:{emulator.http_port}{path}", data=data, method=method)
    if token:
        req.add_header("Authorization", token)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_healthz(emulator):
    assert _http(emulator, "GET", "/healthz") == (200, "ok\n")


def test_metrics_track_a_queue_through_its_lifecycle(emulator, queue_factory, client):
    q = queue_factory()
    with client.get_queue_sender(q) as s:
        s.send_messages([ServiceBusMessage(f"m{i}") for i in range(3)])
    status, text = _http(emulator, "GET", "/metrics")
    assert status == 200
    assert f'servicebus_emulator_queue_active_messages{{queue="{q}"}} 3' in text
    assert "# TYPE servicebus_emulator_queue_deliveries_total counter" in text
    with client.get_queue_receiver(q) as r:
        a, b, c = r.receive_messages(max_message_count=3, max_wait_time=5)
        m = emulator.metrics()[q]
        assert (m["active_messages"], m["locked_messages"], m["deliveries_total"]) == (0, 3, 3)
        r.complete_message(a)
        r.dead_letter_message(b, reason="r")
        r.abandon_message(c)
        m = parse_metrics(_http(emulator, "GET", "/metrics")[1])[q]
    assert m["completed_total"] == 1 and m["dead_lettered_messages"] == 1 and m["abandoned_total"] == 1
    assert m["active_messages"] == 1 and m["locked_messages"] == 0


def test_put_queue_needs_a_manage_token(emulator):
    root = emulator.config.policies[0]
    resource = f"sb://{emulator.host}:{emulator.port}/"
    assert _http(emulator, "PUT", "/queues/unauth", {"lock_duration": "PT5S"})[0] == 401
    forged = make_token(resource, root.name, generate_key())
    assert _http(emulator, "PUT", "/queues/unauth", {}, forged)[0] == 401
    good = make_token(resource, root.name, root.key)
    status, body = _http(emulator, "PUT", "/queues/bad-props", {"lock_duration": "PT10M"}, good)
    assert status == 400 and "lock_duration" in body
    status, body = _http(emulator, "PUT", "/queues/bad-json", "not an object", good)
    assert status == 400
    # a queue-scoped policy, even with Manage, cannot create queues
    queue_key = generate_key()
    emulator.create_queue("scoped", policies=[{"name": "q-admin", "key": queue_key, "rights": ["Manage"]}])
    scoped = make_token(f"sb://{emulator.host}:{emulator.port}/scoped", "q-admin", queue_key)
    assert _http(emulator, "PUT", "/queues/scoped-2", {}, scoped)[0] == 403
    status, body = _http(emulator, "PUT", "/queues/defaults-q", None, good)
    assert status == 201  # an empty body means all defaults
    assert json.loads(body)["lock_duration"] == "PT1M"
    assert "unauth" not in [q["name"] for q in emulator.queues()]


def test_runtime_queue_with_its_own_policy_works_with_the_sdk(emulator):
    key = generate_key()
    emulator.create_queue("runtime-q", lock_duration="PT10S", max_delivery_count=4,
                          policies=[{"name": "agent", "key": key, "rights": ["Listen", "Send"]}])
    listed = {q["name"]: q for q in emulator.queues()}
    assert listed["runtime-q"]["max_delivery_count"] == 4 and listed["runtime-q"]["runtime"] is True
    assert "key" not in json.dumps(listed["runtime-q"]["policies"])
    conn = emulator.connection_string("agent", "runtime-q")
    assert conn.endswith(";EntityPath=runtime-q;UseDevelopmentEmulator=true")
    with ServiceBusClient.from_connection_string(conn) as c:
        with c.get_queue_sender("runtime-q") as s:
            s.send_messages(ServiceBusMessage("hi"))
        with c.get_queue_receiver("runtime-q") as r:
            (m,) = r.receive_messages(max_wait_time=5)
            assert m.locked_until_utc is not None
            r.complete_message(m)


def test_unknown_path_is_404(emulator):
    assert _http(emulator, "GET", "/nope")[0] == 404


@pytest.mark.parametrize("raw", [b"garbage\r\n\r\n", b"PUT /queues/x HTTP/1.1\r\nContent-Length: abc\r\n\r\n"])
def test_malformed_http_is_400(emulator, raw):
    import socket

    with socket.create_connection((emulator.host, emulator.http_port), timeout=5) as s:
        s.sendall(raw)
        assert s.recv(100).startswith(b"HTTP/1.1 4")

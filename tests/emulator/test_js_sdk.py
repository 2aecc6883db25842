"""The official JavaScript SDK (@azure/service-bus, pinned in tests/emulator/js) against the emulator.

A second, independent client stack: each test runs a small node scenario (tests/emulator/js/driver.mjs)
against the session emulator and checks what it reports, often crossing with the Python SDK. The
package is installed by ``make install`` (``npm ci`` in tests/emulator/js); outside CI the tests skip
when it is missing, in CI they fail.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode, ServiceBusSubQueue

JS_DIR = Path(__file__).parent / "js"
DRIVER = JS_DIR / "driver.mjs"

pytestmark = pytest.mark.slow  # each scenario starts node and the SDK's connection (~1-2 s)


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


@pytest.fixture(scope="module")
def node() -> str:
    exe = shutil.which("node")
    missing = None
    if exe is None:
        missing = "node is not installed (scripts/install-system-deps installs it)"
    elif not (JS_DIR / "node_modules" / "@azure" / "service-bus").is_dir():
        missing = "tests/emulator/js/node_modules is missing: run `make install` (npm ci there)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    assert exe is not None
    return exe


@pytest.fixture
def js(node, emulator):
    """js(scenario, queue=..., **args) -> the scenario's JSON result (raises on a scenario error
    unless ``expect_error=True``, then returns the error object)."""

    def run(scenario: str, *, expect_error: bool = False, conn: str | None = None, timeout: float = 60,
            **args: Any) -> dict:
        args["conn"] = conn or emulator.connection_string()
        proc = subprocess.run([node, str(DRIVER), scenario, json.dumps(args)], cwd=JS_DIR,
                              capture_output=True, text=True, timeout=timeout, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        assert lines, f"node {scenario} printed nothing; rc={proc.returncode}\n{proc.stderr[-3000:]}"
        result = json.loads(lines[-1])
        if expect_error:
            assert "error" in result, result
            return result["error"]
        assert "error" not in result, f"{scenario}: {result['error']}\n{proc.stderr[-3000:]}"
        return result

    return run


ALL_PROPS = {
    "body": _b64(b"\x00binary \xff body"),
    "messageId": "m-1",
    "correlationId": "c-1",
    "subject": "subj",
    "to": "someone",
    "replyTo": "reply-queue",
    "contentType": "application/octet-stream",
    "timeToLiveMs": 600_000,
    "applicationProperties": {"text": "v", "int": 7, "bool": True, "float": 1.5},
}


def test_send_receive_every_property(js, queue_factory):
    q = queue_factory()
    js("send", queue=q, messages=[ALL_PROPS])
    (m,) = js("receive", queue=q, count=1)["messages"]
    for key, value in ALL_PROPS.items():
        assert m[key] == value, key
    assert m["deliveryCount"] == 0
    assert int(m["sequenceNumber"]) >= 1
    now = time.time() * 1000
    assert abs(m["enqueuedTimeUtc"] - now) < 60_000
    assert m["lockedUntilUtc"] > m["enqueuedTimeUtc"]
    assert m["state"] == "active"


def test_python_to_javascript_identical(js, queue_factory, client):
    q = queue_factory()
    with client.get_queue_sender(q) as sender:
        sender.send_messages(ServiceBusMessage(
            b"\x00binary \xff body", message_id="m-1", correlation_id="c-1", subject="subj", to="someone",
            reply_to="reply-queue", content_type="application/octet-stream",
            time_to_live=__import__("datetime").timedelta(minutes=10),
            application_properties={"text": "v", "int": 7, "bool": True, "float": 1.5}))
    (m,) = js("receive", queue=q, count=1)["messages"]
    for key, value in ALL_PROPS.items():
        assert m[key] == value, key


def test_javascript_to_python_identical(js, queue_factory, client):
    q = queue_factory()
    js("send", queue=q, messages=[ALL_PROPS])
    with client.get_queue_receiver(q) as receiver:
        (m,) = receiver.receive_messages(max_wait_time=5)
        assert b"".join(m.body) == b"\x00binary \xff body"
        assert (m.message_id, m.correlation_id, m.subject, m.to, m.reply_to, m.content_type) == (
            "m-1", "c-1", "subj", "someone", "reply-queue", "application/octet-stream")
        assert m.time_to_live.total_seconds() == 600
        # the Python SDK hands string keys and values out as bytes, whoever sent them
        assert m.application_properties == {b"text": b"v", b"int": 7, b"bool": True, b"float": 1.5}
        assert m.delivery_count == 0 and m.sequence_number >= 1 and m.enqueued_time_utc is not None
        receiver.complete_message(m)


def test_batch_and_receive_and_delete(js, queue_factory, emulator):
    q = queue_factory()
    sent = js("send", queue=q, batch=True, messages=[{"body": _b64(f"b{i}")} for i in range(5)])
    assert sent["batchCount"] == 5
    got = js("receive", queue=q, count=5, receiveAndDelete=True)["messages"]
    assert [base64.b64decode(m["body"]) for m in got] == [f"b{i}".encode() for i in range(5)]
    assert all(m["lockToken"] is None for m in got)
    assert emulator.metrics()[q]["active_messages"] == 0


def test_abandon_counts_a_delivery_and_dead_letters_at_max(js, queue_factory, client):
    """Defect 2: the JS SDK abandons with modified{undeliverable-here: false} and no delivery-failed."""
    q = queue_factory(max_delivery_count=3)
    js("send", queue=q, messages=[{"body": _b64("poison"), "messageId": "p"}])
    counts = js("abandon", queue=q, times=4, waitMs=3000)["deliveryCounts"]
    assert counts == [0, 1, 2]  # the third abandon reaches max_delivery_count: dead-lettered
    with client.get_queue_receiver(q, sub_queue=ServiceBusSubQueue.DEAD_LETTER,
                                   receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as dlq:
        (d,) = dlq.receive_messages(max_wait_time=5)
        assert d.dead_letter_reason == "MaxDeliveryCountExceeded"


def test_dead_letter_with_reason(js, queue_factory):
    q = queue_factory()
    js("send", queue=q, messages=[{"body": _b64("bad"), "messageId": "d"}])
    d = js("deadLetter", queue=q, reason="BadInput", description="field x is missing")["deadLettered"]
    assert base64.b64decode(d["body"]) == b"bad"
    assert (d["deadLetterReason"], d["deadLetterErrorDescription"]) == ("BadInput", "field x is missing")
    assert d["deadLetterSource"] == q


def test_defer_and_receive_deferred(js, queue_factory):
    q = queue_factory()
    js("send", queue=q, messages=[{"body": _b64("later"), "messageId": "x"}])
    out = js("defer", queue=q)
    assert out["peeked"]["state"] == "deferred"
    assert base64.b64decode(out["deferred"]["body"]) == b"later"
    assert out["deferred"]["lockToken"] and out["afterComplete"] == 0


def test_schedule_cancel_and_peek_state(js, queue_factory):
    q = queue_factory()
    out = js("scheduleCancel", queue=q, keepBody=_b64("keep"), cancelBody=_b64("cancel"))
    assert [m["state"] for m in out["before"]] == ["scheduled", "scheduled"]
    assert [m["sequenceNumber"] for m in out["before"]] == [out["keep"], out["cancel"]]
    assert [m["sequenceNumber"] for m in out["after"]] == [out["keep"]]
    assert out["before"][0]["scheduledEnqueueTimeUtc"] > time.time() * 1000


def test_peek_shows_states_and_broker_annotations(js, queue_factory, client):
    q = queue_factory()
    js("send", queue=q, messages=[{"body": _b64("a"), "messageId": "a"}])
    peeked = js("peek", queue=q)["messages"]
    assert len(peeked) == 1
    p = peeked[0]
    assert p["state"] == "active" and int(p["sequenceNumber"]) >= 1 and p["enqueuedTimeUtc"]


def test_renew_lock(js, queue_factory):
    q = queue_factory(lock_duration="PT5S")
    js("send", queue=q, messages=[{"body": _b64("r"), "messageId": "r"}])
    out = js("renewLock", queue=q, sleepMs=1200)
    assert out["renewed"] >= out["first"] + 1000


def test_message_without_id_gets_one_and_can_be_completed(js, queue_factory, client, emulator):
    """Defect 5: Azure assigns a MessageId when the sender gives none; the JS SDK needs it to settle."""
    q = queue_factory()
    js("send", queue=q, messages=[{"body": _b64("no id")}, {"body": _b64("no id either")}])
    m = js("receiveOne", queue=q)["message"]
    assert m["messageId"]
    assert emulator.metrics()[q]["completed_total"] == 1
    with client.get_queue_receiver(q) as receiver:
        (other,) = receiver.receive_messages(max_wait_time=5)
        assert other.message_id and other.message_id != m["messageId"]
        receiver.complete_message(other)


def test_queue_scoped_connection_string_management_first(js, queue_factory, emulator, client):
    """Defect 3: the JS SDK puts its token for sb://host/<queue>/$management."""
    from worker.emulator.launcher import generate_key

    q = queue_factory(policies=[{"name": "reader", "key": generate_key(), "rights": ["Listen"]}])
    with client.get_queue_sender(q) as sender:
        sender.send_messages(ServiceBusMessage("x", message_id="x"))
    assert js("managementFirst", queue=q)["peeked"] == 1  # namespace policy
    assert js("managementFirst", queue=q, conn=emulator.connection_string("reader", entity=q))["peeked"] == 1


def test_development_emulator_connection_string(js, queue_factory, emulator):
    """The emulator's printed string (UseDevelopmentEmulator=true, port in the endpoint) is used as is:
    plain AMQP on that port. Without the flag the SDK tries TLS and fails."""
    conn = emulator.connection_string()
    assert "UseDevelopmentEmulator=true" in conn
    q = queue_factory()
    js("send", queue=q, messages=[{"body": _b64("hi"), "messageId": "1"}])
    plain_tls = conn.replace(";UseDevelopmentEmulator=true", "")
    err = js("peek", queue=q, conn=plain_tls, expect_error=True, timeout=90)
    assert err["message"]


def test_error_codes_match_service_bus(js, queue_factory, emulator):
    """Each failure carries the AMQP condition Azure uses, so the SDK reports the documented
    ServiceBusError code (the condition -> code mapping of @azure/core-amqp and @azure/service-bus)."""
    from worker.emulator.launcher import generate_key

    key = generate_key()
    q = queue_factory(lock_duration="PT1S", max_message_size_kb=64,
                      policies=[{"name": "listener", "key": key, "rights": ["Listen"]}])
    forged = emulator.connection_string("listener", entity=q).replace(key, generate_key())
    codes = js("errors", queue=q, lockMs=1000, tooLargeBytes=100_000, timeout=120,
               listenConn=emulator.connection_string("listener", entity=q), forgedConn=forged)
    assert codes == {
        "sendUnknownQueue": "MessagingEntityNotFound",       # amqp:not-found, "... could not be found"
        "receiveUnknownQueue": "MessagingEntityNotFound",
        "tooLarge": "MessageSizeExceeded",                   # amqp:link:message-size-exceeded
        "deferredNotFound": "MessageNotFound",               # com.microsoft:message-not-found
        "completeAfterLockExpired": "MessageLockLost",       # com.microsoft:message-lock-lost
        "renewAfterLockExpired": "MessageLockLost",
        "sendWithoutSendRight": "UnauthorizedAccess",        # amqp:unauthorized-access
        "badSignature": "UnauthorizedAccess",
    }

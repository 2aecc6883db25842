"""Pure pieces: config validation, SAS tokens, message section parsing (no server)."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from proton import Message

from worker.emulator import codec
from worker.emulator.auth import AuthError, Authority, generate_key, make_token
from worker.emulator.config import ConfigError, EmulatorConfig, Right

SAMPLE = Path(__file__).resolve().parents[2] / "worker" / "emulator" / "sample-config.yaml"


def test_sample_config_loads_and_round_trips(tmp_path):
    cfg = EmulatorConfig.load(SAMPLE)
    q = cfg.queues[0]
    assert q.lock_duration == timedelta(seconds=30) and q.default_message_ttl == timedelta(days=14)
    assert q.max_delivery_count == 3 and q.requires_duplicate_detection
    assert q.policies[0].rights == [Right.LISTEN]
    again = EmulatorConfig.load(cfg.save(tmp_path / "copy.yaml"))
    assert again == cfg


@pytest.mark.parametrize(("raw", "fragment"), [
    ({"queues": [{"name": "q", "lock_duration": "PT6M"}]}, "lock_duration"),
    ({"queues": [{"name": "q", "lock_duration": "soon"}]}, "lock_duration"),
    ({"queues": [{"name": "bad/name"}]}, "queue name"),
    ({"queues": [{"name": "q"}, {"name": "Q"}]}, "duplicate"),
    ({"queues": [{"name": "q", "max_delivery_count": 0}]}, "max_delivery_count"),
    ({"queues": [{"name": "q", "colour": "red"}]}, "colour"),
    ({"policies": [{"name": "p", "key": generate_key(), "rights": ["Admin"]}]}, "rights"),
    ({"policies": [{"name": "p", "key": "short", "rights": ["Send"]}]}, "key"),
    ([1, 2], "mapping"),
])
def test_bad_config_names_the_field(raw, fragment):
    with pytest.raises(ConfigError) as info:
        EmulatorConfig.from_dict(raw)
    assert fragment in str(info.value)


def test_unreadable_or_invalid_yaml_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        EmulatorConfig.load(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("queues: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        EmulatorConfig.load(tmp_path / "bad.yaml")


@pytest.fixture
def authority():
    return Authority(EmulatorConfig.from_dict({
        "policies": [{"name": "root", "key": "namespace-key-0123456789", "rights": ["Manage"]}],
        "queues": [{"name": "jobs", "policies": [{"name": "worker", "key": "queue-key-0123456789",
                                                   "rights": ["Listen"]}]}],
    }))


def test_sas_token_verification(authority):
    grant = authority.verify(make_token("sb://localhost:5672/", "root", "namespace-key-0123456789"),
                             audience="amqp://127.0.0.1:5672/jobs")
    assert grant.allows("jobs", Right.SEND) and grant.allows("other/$deadletterqueue", Right.LISTEN)
    qgrant = authority.verify(make_token("sb://h/jobs", "worker", "queue-key-0123456789"), audience="sb://h/jobs")
    assert qgrant.allows("jobs", Right.LISTEN) and qgrant.allows("jobs/$deadletterqueue", Right.LISTEN)
    assert not qgrant.allows("jobs", Right.SEND) and not qgrant.allows("other", Right.LISTEN)
    assert not qgrant.allows("jobs", Right.LISTEN, now=time.time() + 7200)  # expired later


@pytest.mark.parametrize(("token", "message"), [
    (make_token("sb://h/", "root", "wrong-key-0123456789"), "signature"),
    (make_token("sb://h/", "nobody", "namespace-key-0123456789"), "unknown shared access policy"),
    (make_token("sb://h/", "worker", "queue-key-0123456789"), "unknown shared access policy"),  # queue key, ns scope
    (make_token("sb://h/", "root", "namespace-key-0123456789", ttl_seconds=-10), "expired"),
    (make_token("sb://h/other", "root", "namespace-key-0123456789"), "does not cover"),
    ("Bearer abc", "only SharedAccessSignature"),
    ("SharedAccessSignature sr=x&sig=y", "lacks"),
])
def test_bad_tokens_are_refused(authority, token, message):
    with pytest.raises(AuthError, match=message):
        authority.verify(token, audience="sb://h/jobs")


def test_parse_keeps_the_bare_message_and_rebuilds_header_and_annotations():
    sent = Message(body=b"payload", id="m1", properties={"k": 1}, ttl=30,
                   annotations={"x-opt-partition-key": "p"})
    parsed = codec.parse_message(bytes(sent.encode()))
    assert parsed.message_id == "m1" and parsed.ttl_ms == 30000
    out = codec.encode_delivery(parsed.bare, codec.broker_annotations(7, 1000, 2000, None, parsed.annotations), 0)
    back = Message()
    back.decode(out)
    assert back.delivery_count == 0 and back.id == "m1" and back.properties == {"k": 1}
    assert back.annotations["x-opt-sequence-number"] == 7 and back.annotations["x-opt-partition-key"] == "p"
    assert b"\x00Sp" in out[:3]  # header written explicitly, even with delivery-count 0


def test_batch_detection_is_strict():
    inner = [bytes(Message(body=f"m{i}").encode()) for i in range(3)]
    envelope = b"".join(codec.encode_section(codec.DATA, m) for m in inner)
    assert codec.split_batch(envelope) == inner
    # a user body that merely starts like an AMQP section is not a batch
    tricky = codec.encode_section(codec.DATA, b"\x00Su" + b"\xa0\x05hello" + b"trailing junk")
    assert codec.split_batch(tricky) is None
    assert codec.split_batch(bytes(Message(body=b"plain").encode())) is None
    with pytest.raises(codec.CodecError):
        codec.parse_message(b"\x00Sp\xff\xff")


def test_dead_letter_reason_goes_into_application_properties():
    bare = codec.parse_message(bytes(Message(body="x", properties={"a": "b"}).encode())).bare
    updated = codec.with_application_properties(bare, {"DeadLetterReason": "r"})
    m = Message()
    m.decode(updated)
    assert m.properties == {"a": "b", "DeadLetterReason": "r"} and m.body == "x"


def test_hand_encoded_delivery_decodes_like_proton():
    import uuid as _uuid

    sent = Message(body=b"x", id="m", annotations={"x-opt-partition-key": "p", "custom": 5})
    parsed = codec.parse_message(bytes(sent.encode()))
    token = _uuid.uuid4()
    raw = (codec.encode_header_fast(3, durable=True, priority=4, ttl_ms=60000)
           + codec.encode_annotations_fast(codec.map_items(codec.encode_annotations(parsed.annotations)), 42,
                                           1000, 2000, token, 500, "q") + parsed.bare)
    back = Message()
    back.decode(raw)
    assert (back.delivery_count, back.durable, back.priority, back.ttl, back.first_acquirer) == (3, True, 4, 60, False)
    ann = back.annotations
    assert ann["x-opt-sequence-number"] == 42 and ann["x-opt-lock-token"] == token
    assert ann["x-opt-enqueued-time"] == 1000 and ann["x-opt-locked-until"] == 2000
    assert ann["x-opt-scheduled-enqueue-time"] == 500 and ann["x-opt-deadletter-source"] == "q"
    assert ann["x-opt-partition-key"] == "p" and ann["custom"] == 5
    assert codec.parse_message(raw).message_id == "m"

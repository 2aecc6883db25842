"""The wire models: round trips, versioning and readable rejection reasons."""

import json

import pytest
from pydantic import ValidationError

from worker.protocol import (
    MAX_MESSAGE_BYTES,
    ProtocolError,
    Status,
    Task,
    TaskState,
    decode_status,
    decode_task,
    encode,
)


def make_task(**overrides) -> Task:
    fields = {
        "task_id": "sub-42",
        "competition": "comp-demo",
        "command": ["python", "program/predict.py"],
        "stdout_url": "http://127.0.0.1:1/devstoreaccount1/comp-demo-logs/tasks/sub-42/1/stdout.log?sig=x",
        "stderr_url": "http://127.0.0.1:1/devstoreaccount1/comp-demo-logs/tasks/sub-42/1/stderr.log?sig=x",
        "reply_to": "comp-demo-responses",
    }
    fields.update(overrides)
    return Task(**fields)


def test_task_round_trip_keeps_every_field():
    task = make_task(env={"SEED": "1"}, time_limit_s=12.5, attempt=2)
    back = decode_task(encode(task))
    assert back == task
    assert back.message_id == "sub-42:2"


def test_status_round_trip():
    status = Status(task_id="sub-42", attempt=1, seq=3, state=TaskState.FAILED, worker_id="w1",
                    exit_code=2, reason="program exited with code 2")
    assert decode_status(encode(status)) == status
    assert status.state.terminal and not TaskState.RUNNING.terminal


@pytest.mark.parametrize(
    ("body", "reason", "fragment"),
    [
        (b"\xff\xfe not json", "MalformedMessage", "not JSON"),
        (b"[1, 2]", "MalformedMessage", "not a JSON object"),
        (b'{"schema_version": 99}', "UnsupportedSchemaVersion", "99"),
        (b'{"task_id": "x"}', "UnsupportedSchemaVersion", "None"),
        (json.dumps({"schema_version": 1, "task_id": "../etc"}).encode(), "InvalidTask", "task_id"),
    ],
)
def test_bad_tasks_are_rejected_with_a_readable_reason(body, reason, fragment):
    with pytest.raises(ProtocolError) as info:
        decode_task(body)
    assert info.value.reason == reason
    assert fragment in info.value.description


def test_unknown_fields_are_rejected():
    data = json.loads(encode(make_task()))
    data["surprise"] = 1
    with pytest.raises(ProtocolError, match="surprise"):
        decode_task(json.dumps(data))


def test_oversize_messages_are_rejected_both_ways():
    with pytest.raises(ProtocolError) as info:
        encode(make_task(env={"BIG": "x" * MAX_MESSAGE_BYTES}))
    assert info.value.reason == "MessageTooLarge"
    with pytest.raises(ProtocolError):
        decode_task(b" " * (MAX_MESSAGE_BYTES + 1))


def test_competition_name_rule_is_enforced():
    with pytest.raises(ValidationError, match="competition"):
        make_task(competition="Comp_Demo")


def test_presence_round_trip_and_it_is_neither_a_status_nor_a_task():
    from worker.protocol import Activity, HostFacts, Presence, decode_presence

    host = HostFacts(hostname="h", os="linux", cpu_count=4, memory_mb=1024, driver="process", agent_version="0.1")
    report = Presence(worker_id="w1", activity=Activity.LEFT, interval_s=10, seq=3, host=host)
    assert decode_presence(encode(report)) == report
    with pytest.raises(ProtocolError) as err:
        decode_status(encode(report))
    assert err.value.reason == "InvalidStatus"
    with pytest.raises(ProtocolError) as err:
        decode_presence(encode(Status(task_id="t", attempt=1, seq=0, state=TaskState.RECEIVED, worker_id="w1")))
    assert err.value.reason == "InvalidPresence" and "host" in err.value.description
    for bad in ({"interval_s": 0}, {"activity": "asleep"}, {"seq": -1}):
        body = json.loads(encode(report)) | bad
        with pytest.raises(ProtocolError, match="invalid presence"):
            decode_presence(json.dumps(body))

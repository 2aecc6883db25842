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


# -- a task attempt's statuses in one message (worker.wire) --------------------------------------------
def _statuses(task_id: str = "sub-42", attempt: int = 1, seqs: tuple[int, ...] = (0, 1, 2, 3)) -> list[Status]:
    states = [TaskState.RECEIVED, TaskState.PREPARING, TaskState.RUNNING, TaskState.FINISHED]
    return [Status(task_id=task_id, attempt=attempt, seq=seq, state=states[i % 4], worker_id="w1", exit_code=0)
            for i, seq in enumerate(seqs)]


class Received:
    """What the SDK hands a receiver: the body as an iterable of parts, the subject, properties."""

    def __init__(self, message) -> None:
        self.body = [bytes(part) for part in message.body]
        self.subject = message.subject
        self.message_id = message.message_id
        self.application_properties = {key.encode(): value for key, value in message.application_properties.items()}


def test_a_task_attempts_statuses_travel_as_one_message_and_come_back_in_order():
    from worker.wire import batch_rest, decode_reports, report_messages

    statuses = _statuses()
    [message] = report_messages(statuses)
    assert message.subject == "statuses" and message.message_id == "sub-42:1:0-3"
    assert message.application_properties["state"] == "finished" and batch_rest(Received(message)) == 0
    assert decode_reports(Received(message)) == statuses


def test_statuses_of_other_attempts_and_presence_reports_travel_in_messages_of_their_own():
    from worker.protocol import Activity, HostFacts, Presence
    from worker.wire import batch_rest, decode_reports, report_messages

    host = HostFacts(hostname="h", os="linux", cpu_count=4, memory_mb=1024, driver="process", agent_version="0.1")
    presence = Presence(worker_id="w1", activity=Activity.IDLE, interval_s=10, seq=1, host=host)
    first, second = _statuses(seqs=(5, 6)), _statuses("sub-43", seqs=(0, 1, 2))
    reports = [*first, presence, *second, _statuses("sub-43", attempt=2, seqs=(0,))[0]]
    messages = report_messages(reports)
    assert [m.subject for m in messages] == ["statuses", "presence", "statuses", "status"]
    assert [batch_rest(Received(m)) for m in messages] == [3, 2, 1, 0]
    assert [r for m in messages for r in decode_reports(Received(m))] == reports


def test_a_statuses_message_stays_far_below_the_message_limit():
    from worker.wire import GROUP_BYTES, decode_reports, report_messages

    big = [s.model_copy(update={"reason": "x" * 20_000}) for s in _statuses(seqs=tuple(range(40)))]
    messages = report_messages(big)
    assert len(messages) > 1 and all(len(b"".join(m.body)) <= GROUP_BYTES for m in messages)
    assert [r for m in messages for r in decode_reports(Received(m))] == big


@pytest.mark.parametrize(
    ("body", "reason", "fragment"),
    [
        (b"[]", "MalformedMessage", "non-empty JSON array"),
        (b'{"schema_version": 1}', "MalformedMessage", "non-empty JSON array"),
        (b"[1]", "MalformedMessage", "not a JSON object"),
        (b'[{"schema_version": 2}]', "UnsupportedSchemaVersion", "2"),
        (None, "InvalidStatus", "one task attempt"),  # two tasks' statuses mixed
        (b"order", "InvalidStatus", "increasing seq"),
    ],
)
def test_bad_statuses_messages_are_rejected_with_a_readable_reason(body, reason, fragment):
    from worker.protocol import decode_statuses, encode_statuses

    if body is None:
        body = encode_statuses([*_statuses(seqs=(0,)), *_statuses("sub-43", seqs=(1,))])
    elif body == b"order":
        body = encode_statuses(_statuses(seqs=(2, 1)))
    with pytest.raises(ProtocolError) as err:
        decode_statuses(body)
    assert err.value.reason == reason and fragment in err.value.description

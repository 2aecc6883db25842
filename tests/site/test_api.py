"""The site's HTTP API, served by `pool site serve --config site.yaml` (a subprocess) on a local stack
(emulator, Azurite, SQLite, 2 agents): every endpoint, auth, bad input, logs, dead letters, metrics."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import time

import httpx
import pytest
from sqlalchemy import func, select

from tests.fixtures.site_service import ADMIN_TOKEN, READ_TOKEN, serve, site_yaml, stop_served
from worker.site.models import Task

pytestmark = pytest.mark.slow


def client(served, token: str | None = ADMIN_TOKEN) -> httpx.Client:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=served.url, headers=headers, timeout=30)


def wait_final(api: httpx.Client, task_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = api.get(f"/api/v1/tasks/{task_id}").json()
        if task["terminal"]:
            return task
        time.sleep(0.1)
    raise AssertionError(f"{task_id} not final after {timeout} s: {task['state']}")


def wait_state(api: httpx.Client, task_id: str, state: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = api.get(f"/api/v1/tasks/{task_id}").json()
        if task["state"] == state:
            return task
        time.sleep(0.1)
    raise AssertionError(f"{task_id} not {state} after {timeout} s: {task['state']}")


def submit(api: httpx.Client, command: list[str], **extra: object) -> dict:
    response = api.post("/api/v1/tasks", json={"pool": "default", "command": command, **extra})
    assert response.status_code == 201, response.text
    return response.json()


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def task_count(stack) -> int:  # type: ignore[no-untyped-def]
    with stack.site.sessions() as session:
        return session.scalar(select(func.count()).select_from(Task))


# --- auth ----------------------------------------------------------------------------------------------
def test_tokens_401_without_or_with_a_wrong_one_403_for_read_on_write(served_site, site_stack):
    with client(served_site) as admin:  # positive control: the admin token works for both
        assert admin.get("/api/v1/pools").status_code == 200
    for token in (None, "wrong-token-" + "x" * 20, ADMIN_TOKEN[:-1], ADMIN_TOKEN + "x"):
        with client(served_site, token) as api:
            answer = api.get("/api/v1/pools")
            assert answer.status_code == 401, (token, answer.text)
            assert answer.headers["www-authenticate"] == "Bearer"
            assert api.post("/api/v1/tasks", json={"pool": "default", "command": ["true"]}).status_code == 401
    before = task_count(site_stack)
    with client(served_site, READ_TOKEN) as reader:
        assert reader.get("/api/v1/pools").status_code == 200
        assert reader.get("/api/v1/tasks").status_code == 200
        for method, path in (("POST", "/api/v1/tasks"), ("POST", "/api/v1/tasks/x/cancel"),
                             ("POST", "/api/v1/tasks/x/rerun"), ("DELETE", "/api/v1/dead-letters"),
                             ("POST", "/api/v1/dead-letters/1/resubmit"), ("POST", "/api/v1/pools/default/bundles")):
            answer = reader.request(method, path, json={"pool": "default", "command": ["true"]})
            assert answer.status_code == 403, (method, path, answer.text)
            assert "admin" in answer.json()["detail"]
    assert task_count(site_stack) == before
    # The tokens never reach the logs.
    stop_output = "".join(served_site.output)
    assert ADMIN_TOKEN not in stop_output and READ_TOKEN not in stop_output


# --- tasks ---------------------------------------------------------------------------------------------
def test_submit_list_show_with_labels_filters_paging_and_history(served_site):
    with client(served_site) as api:
        task = submit(api, ["sh", "-c", "echo out-line; echo err-line >&2"],
                      labels={"participant": "alice", "submission": "s-1"}, env={"GREETING": "hi"},
                      time_limit_s=30, max_attempts=2, resources={"cpus": 1})
        assert task["state"] == "queued" and task["sent"] is True and task["labels"]["participant"] == "alice"
        done = wait_final(api, task["id"])
        assert done["state"] == "finished" and done["exit_code"] == 0 and done["max_attempts"] == 2
        states = [e["state"] for e in done["history"]]
        # Two services (the stack's and this one) watch the response queue: an intermediate status one
        # of them received may be overtaken by the final one at the other (see docs/site.md, Replicas).
        assert states[0] == "queued" and states[-1] == "finished" and len(states) == len(set(states)), states
        assert api.get(f"/api/v1/tasks/{task['id']}/logs/stdout").text == "out-line\n"
        assert api.get(f"/api/v1/tasks/{task['id']}/logs/stderr").text == "err-line\n"

        other = submit(api, ["true"], labels={"participant": "bob"})
        wait_final(api, other["id"])
        alice = api.get("/api/v1/tasks", params={"label": "participant=alice"}).json()
        assert [t["id"] for t in alice["tasks"]] == [task["id"]]
        both = api.get("/api/v1/tasks", params=[("label", "participant=alice"), ("label", "submission=s-1")]).json()
        assert both["total"] == 1
        assert api.get("/api/v1/tasks", params={"label": "participant=nobody"}).json()["total"] == 0
        finished = api.get("/api/v1/tasks", params={"state": "finished", "pool": "default"}).json()
        assert {task["id"], other["id"]} <= {t["id"] for t in finished["tasks"]}
        page = api.get("/api/v1/tasks", params={"limit": 1}).json()
        assert len(page["tasks"]) == 1 and page["next_offset"] == 1 and page["total"] >= 2
        assert page["tasks"][0]["id"] == other["id"]  # newest first
        second = api.get("/api/v1/tasks", params={"limit": 1, "offset": 1}).json()
        assert second["tasks"][0]["id"] != other["id"]
        future = api.get("/api/v1/tasks", params={"since": "2999-01-01T00:00:00Z"}).json()
        assert future["total"] == 0
        assert api.get("/api/v1/tasks/no-such-task").status_code == 404


def test_bundles_uploaded_through_the_api_run_as_program_and_input(served_site):
    with client(served_site) as api:
        program = api.post("/api/v1/pools/default/bundles", content=tar_gz({"main.py": b"import pathlib\n"
                           b"print(pathlib.Path('../inputs/data/value.txt').read_text().strip() * 2)\n"}),
                           headers={"Content-Type": "application/gzip"})
        assert program.status_code == 201, program.text
        data = api.post("/api/v1/pools/default/bundles", content=tar_gz({"value.txt": b"21\n"}))
        task = submit(api, ["python3", "../program/main.py"], program=program.json()["id"],
                      inputs={"data": data.json()["id"]})
        assert wait_final(api, task["id"])["state"] == "finished"
        assert api.get(f"/api/v1/tasks/{task['id']}/logs/stdout").text == "2121\n"
        missing = api.post("/api/v1/tasks", json={"pool": "default", "command": ["true"],
                                                  "program": "sha256:" + "0" * 64})
        assert missing.status_code == 422 and missing.json()["field"] == "program"


def test_single_file_and_zip_bundles(served_site):
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("run.sh", "cat ../inputs/note.txt\n")
    with client(served_site) as api:
        program = api.post("/api/v1/pools/default/bundles", content=buffer.getvalue())
        note = api.post("/api/v1/pools/default/bundles", params={"kind": "file"}, content=b"plain words\n")
        assert program.status_code == 201 and note.status_code == 201 and note.json()["kind"] == "file"
        task = submit(api, ["sh", "../program/run.sh"], program=program.json()["id"], inputs={"note.txt": note.json()["id"]})
        assert wait_final(api, task["id"])["state"] == "finished"
        assert api.get(f"/api/v1/tasks/{task['id']}/logs/stdout").text == "plain words\n"
        assert api.post("/api/v1/pools/default/bundles", params={"kind": "dir"}, content=b"x").json()["field"] == "kind"


def test_live_log_tail_is_server_sent_events_ending_with_the_task(served_site):
    with client(served_site) as api:
        task = submit(api, ["sh", "-c", "for i in 1 2 3; do echo line-$i; sleep 0.4; done; printf tail"])
        received, started = [], time.monotonic()
        with api.stream("GET", f"/api/v1/tasks/{task['id']}/logs/stdout", params={"follow": "true"}) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            event = "message"
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    received.append((event, line[6:], time.monotonic() - started))
                    event = "message"
        lines = [(e, d) for e, d, _ in received]
        assert lines == [("message", "line-1"), ("message", "line-2"), ("message", "line-3"),
                         ("message", "tail"), ("end", "finished")]
        assert received[0][2] < received[-1][2] - 0.5  # the first line came while the task still ran


def test_cancel_a_running_task_and_rerun_a_failed_one(served_site):
    with client(served_site) as api:
        running = submit(api, ["sh", "-c", "echo started; sleep 60"])
        wait_state(api, running["id"], "running")
        assert api.post(f"/api/v1/tasks/{running['id']}/rerun").status_code == 409  # not final yet
        answer = api.post(f"/api/v1/tasks/{running['id']}/cancel", json={"reason": "test says stop"})
        assert answer.status_code == 200
        cancelled = wait_final(api, running["id"], timeout=30)
        assert cancelled["state"] == "cancelled"

        failing = submit(api, ["sh", "-c", "echo attempt; exit 3"], max_attempts=1)
        failed = wait_final(api, failing["id"])
        assert failed["state"] == "failed" and failed["exit_code"] == 3
        rerun = api.post(f"/api/v1/tasks/{failing['id']}/rerun")
        assert rerun.status_code == 200 and rerun.json()["attempt"] == 2
        again = wait_final(api, failing["id"])
        assert again["attempt"] == 2 and again["exit_code"] == 3
        states = [(e["attempt"], e["state"]) for e in again["history"]]
        assert states[0] == (1, "queued") and (2, "queued") in states and states[-1] == (2, "failed")
        assert api.get(f"/api/v1/tasks/{failing['id']}/logs/stdout", params={"attempt": 1}).text == "attempt\n"
        assert api.post("/api/v1/tasks/no-such-task/cancel").status_code == 404
        assert api.post("/api/v1/tasks/no-such-task/rerun").status_code == 404


def test_long_poll_answers_when_the_task_ends_not_at_its_wait(served_site):
    """`GET /tasks/{id}?wait_s=` (what `pool submit --wait` uses) answers once the task is final: woken
    by the watcher's commit, or by a cancel; not only when wait_s runs out."""
    from concurrent.futures import ThreadPoolExecutor

    with client(served_site) as api, ThreadPoolExecutor(2) as pool:
        short = submit(api, ["sh", "-c", "sleep 1"])
        started = time.monotonic()
        done = api.get(f"/api/v1/tasks/{short['id']}", params={"wait_s": 50}, timeout=60).json()
        assert done["state"] == "finished" and time.monotonic() - started < 30

        long = submit(api, ["sh", "-c", "sleep 60"])
        wait_state(api, long["id"], "running")
        started = time.monotonic()
        polled = pool.submit(lambda: api.get(f"/api/v1/tasks/{long['id']}", params={"wait_s": 55}, timeout=60))
        time.sleep(0.5)
        assert not polled.done()  # still running: the poll waits
        assert api.post(f"/api/v1/tasks/{long['id']}/cancel").status_code == 200
        assert polled.result(timeout=60).json()["state"] == "cancelled" and time.monotonic() - started < 40
        ended = api.get(f"/api/v1/tasks/{long['id']}", params={"wait_s": 30}).json()  # already final: at once
        assert ended["state"] == "cancelled"


def test_long_poll_sees_a_final_state_another_replica_set(served_site, site_stack):
    """A final state this replica's watcher did not apply (here: another site process cancels a
    queued task) still ends the long poll: it re-reads the task every 0.1 s."""
    from concurrent.futures import ThreadPoolExecutor
    from datetime import timedelta

    from worker.site.models import SiteState, TaskEvent, utcnow

    task_id = f"elsewhere-{time.monotonic_ns()}"
    with site_stack.site.sessions() as session, session.begin():  # recorded, not sent: stays queued
        created = utcnow() - timedelta(seconds=1)  # the monitor sends unsent tasks only after 5 s
        session.add(Task(id=task_id, pool="default", task_type="evaluate_submission", command=["true"], env={},
                         bundles=[], time_limit_s=60, resources={}, max_attempts=1, state=SiteState.QUEUED.value,
                         attempt=1, created_at=created))
        session.flush()
        session.add(TaskEvent(task_id=task_id, attempt=1, seq=-1, state="queued", source="site", reason="submitted",
                              reported_at=created))
    with client(served_site) as api, ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        polled = pool.submit(lambda: api.get(f"/api/v1/tasks/{task_id}", params={"wait_s": 50}, timeout=60))
        time.sleep(0.5)
        assert not polled.done()
        site_stack.site.producer.cancel(task_id, "cancelled through another replica")
        answer = polled.result(timeout=60).json()
    assert answer["state"] == "cancelled" and time.monotonic() - started < 30


# --- bad input -----------------------------------------------------------------------------------------
BIG = "x" * (2 * 1024 * 1024)
BAD_BODIES = [
    ("POST", "/api/v1/tasks", b"{not json", "body"),
    ("POST", "/api/v1/tasks", b"[1, 2]", "body"),
    ("POST", "/api/v1/tasks", b'"a string"', "body"),
    ("POST", "/api/v1/tasks", json.dumps({"command": ["true"]}).encode(), "pool"),
    ("POST", "/api/v1/tasks", json.dumps({"pool": "default"}).encode(), "command"),
    ("POST", "/api/v1/tasks", json.dumps({"pool": "default", "command": "true"}).encode(), "command"),
    ("POST", "/api/v1/tasks", json.dumps({"pool": "default", "command": []}).encode(), "command"),
    ("POST", "/api/v1/tasks", json.dumps({"pool": "default", "command": [1, 2]}).encode(), "command.0"),
    ("POST", "/api/v1/tasks", json.dumps({"pool": "Bad_Pool", "command": ["true"]}).encode(), "pool"),
    ("POST", "/api/v1/tasks", json.dumps({"pool": "no-such-pool", "command": ["true"]}).encode(), "pool"),
    ("POST", "/api/v1/tasks", json.dumps({"pool": "default", "command": ["true"], "time_limit_s": -1}).encode(),
     "time_limit_s"),
    ("POST", "/api/v1/tasks", json.dumps({"pool": "default", "command": ["true"], "time_limit_s": "soon"}).encode(),
     "time_limit_s"),
    ("POST", "/api/v1/tasks", json.dumps({"pool": "default", "command": ["true"], "max_attempts": 0}).encode(),
     "max_attempts"),
    ("POST", "/api/v1/tasks", json.dumps({"pool": "default", "command": ["true"], "env": {"1BAD": "x"}}).encode(),
     "env.1BAD.[key]"),
    ("POST", "/api/v1/tasks", json.dumps({"pool": "default", "command": ["true"], "env": ["A=1"]}).encode(), "env"),
    ("POST", "/api/v1/tasks", json.dumps({"pool": "default", "command": ["true"], "labels": {"k": 5}}).encode(),
     "labels.k"),
    ("POST", "/api/v1/tasks", json.dumps({"pool": "default", "command": ["true"], "program": "abc"}).encode(),
     "program"),
    ("POST", "/api/v1/tasks", json.dumps({"pool": "default", "command": ["true"], "inputs": {"d": "x"}}).encode(),
     "inputs"),
    ("POST", "/api/v1/tasks", json.dumps({"pool": "default", "command": ["true"], "task_type": "mine"}).encode(),
     "task_type"),
    ("POST", "/api/v1/tasks", json.dumps({"pool": "default", "command": ["true"], "resources": {"gpus": -1}})
     .encode(), "resources.gpus"),
    ("POST", "/api/v1/tasks", json.dumps({"pool": "default", "command": ["true"], "surprise": 1}).encode(), "surprise"),
    ("POST", "/api/v1/tasks", json.dumps({"pool": "default", "command": ["true"], "env": {"A": BIG}}).encode(), "body"),
    ("POST", "/api/v1/tasks", json.dumps({"pool": "default", "command": ["x" * 9000]}).encode(), "command.0"),
    ("POST", "/api/v1/tasks/t1/cancel", b"{oops", "body"),
    ("POST", "/api/v1/tasks/t1/cancel", json.dumps({"reason": 7}).encode(), "reason"),
    ("POST", "/api/v1/tasks/t1/cancel", json.dumps({"reason": "r" * 600}).encode(), "reason"),
    ("POST", "/api/v1/tasks/bad id!/cancel", b"{}", "task_id"),
    ("POST", "/api/v1/tasks/bad id!/rerun", b"{}", "task_id"),
    ("GET", "/api/v1/tasks?limit=0", None, "limit"),
    ("GET", "/api/v1/tasks?limit=many", None, "limit"),
    ("GET", "/api/v1/tasks?offset=-1", None, "offset"),
    ("GET", "/api/v1/tasks?state=sleeping", None, "state.0"),
    ("GET", "/api/v1/tasks?since=yesterday", None, "since"),
    ("GET", "/api/v1/tasks?since=2026-01-01T00:00:00", None, "since"),
    ("GET", "/api/v1/tasks?label=novalue", None, "label.0"),
    ("GET", "/api/v1/tasks?pool=Bad_Pool", None, "pool"),
    ("GET", "/api/v1/tasks/t1/logs/stdin", None, "stream"),
    ("GET", "/api/v1/tasks/t1/logs/stdout?attempt=0", None, "attempt"),
    ("GET", "/api/v1/pools/Bad_Pool", None, "name"),
    ("GET", "/api/v1/workers?pool=x", None, "pool"),
    ("POST", "/api/v1/pools/default/bundles", b"not a gzip archive", "body"),
    ("POST", "/api/v1/pools/no-such-pool/bundles", b"\x1f\x8b", "pool"),
    ("POST", "/api/v1/dead-letters/abc/resubmit", None, "dead_letter_id"),
    ("POST", "/api/v1/dead-letters/0/resubmit", None, "dead_letter_id"),
    ("DELETE", "/api/v1/dead-letters?pool=Bad_Pool", None, "pool"),
    ("DELETE", "/api/v1/dead-letters/-5", None, "dead_letter_id"),
    ("GET", "/api/v1/dead-letters?limit=100000", None, "limit"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), BAD_BODIES,
                         ids=[f"{m} {p[:40]} {f}" for m, p, _, f in BAD_BODIES])
def test_bad_input_is_a_4xx_naming_the_field_and_records_nothing(served_site, site_stack, method, path, body, field):
    before = task_count(site_stack)
    with client(served_site) as api:
        answer = api.request(method, path, content=body, headers={"Content-Type": "application/json"})
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)
    payload = answer.json()
    assert payload["field"] == field, payload
    assert field.split(".")[0] in payload["detail"]
    assert task_count(site_stack) == before


def test_oversized_and_lengthless_bodies_are_refused_before_reading(served_site):
    with client(served_site) as api:
        big = api.post("/api/v1/tasks", content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                       headers={"Content-Type": "application/json"})
        assert big.status_code == 413 and big.json()["field"] == "body"

        def chunks():
            yield b'{"pool": "default", '
            yield b'"command": ["true"]}'

        chunked = api.post("/api/v1/tasks", content=chunks(), headers={"Content-Type": "application/json"})
        assert chunked.status_code == 411


# --- pools, workers, dead letters, metrics, docs ----------------------------------------------------------
def test_pools_and_workers(served_site):
    with client(served_site, READ_TOKEN) as api:
        pools = api.get("/api/v1/pools").json()["pools"]
        default = next(p for p in pools if p["name"] == "default")
        assert set(default["queue"]) == {"active", "scheduled", "dead_lettered"}
        assert default["queue"]["active"] is not None  # read from the emulator's /metrics
        assert default["workers"]["live"] == 2 and default["workers"]["idle"] + default["workers"]["busy"] == 2
        assert set(default["tasks"]) >= {"queued", "running", "finished", "failed", "cancelled"}
        assert default["throughput"]["window_s"] == 300
        one = api.get("/api/v1/pools/default").json()
        assert {w["id"] for w in one["workers_list"]} == {"default-w1", "default-w2"}
        assert api.get("/api/v1/pools/nope-pool").status_code == 404
        workers = api.get("/api/v1/workers", params={"pool": "default"}).json()["workers"]
        assert all(w["live"] and w["host"] for w in workers) and len(workers) == 2


def test_dead_letters_list_resubmit_purge(served_site, site_stack):
    from azure.servicebus import ServiceBusClient, ServiceBusMessage

    from worker.site.models import Pool

    with client(served_site) as api:
        task = submit(api, ["sh", "-c", "echo ran"])
        wait_final(api, task["id"])
        with site_stack.site.sessions() as session:
            pool = session.get(Pool, "default")
        # A malformed message carrying the task's id: the agent dead-letters it, the monitor records it.
        with ServiceBusClient.from_connection_string(pool.task_queue_connection_string) as sb, \
                sb.get_queue_sender(pool.task_queue) as sender:
            sender.send_messages(ServiceBusMessage(b"{not a task", message_id=f"{task['id']}:7"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            letters = api.get("/api/v1/dead-letters", params={"pool": "default"}).json()["dead_letters"]
            mine = [d for d in letters if d["task_id"] == task["id"]]
            if mine:
                break
            time.sleep(0.3)
        assert mine, letters
        letter = mine[0]
        assert letter["reason"] and letter["attempt"] == 7 and letter["queue"] == "default-tasks"
        resubmitted = api.post(f"/api/v1/dead-letters/{letter['id']}/resubmit")
        assert resubmitted.status_code == 200, resubmitted.text
        assert wait_final(api, task["id"])["attempt"] == 2
        assert api.post(f"/api/v1/dead-letters/{letter['id']}/resubmit").status_code == 409  # once
        assert api.delete(f"/api/v1/dead-letters/{letter['id']}").json() == {"purged": 1}
        assert api.delete(f"/api/v1/dead-letters/{letter['id']}").status_code == 404
        assert api.delete("/api/v1/dead-letters", params={"pool": "default"}).status_code == 200
        assert api.get("/api/v1/dead-letters").json()["total"] == 0


def test_metrics_and_openapi(served_site):
    assert httpx.get(f"{served_site.url}/metrics").status_code == 401
    with client(served_site, READ_TOKEN) as api:
        task = submit(client(served_site), ["true"])
        wait_final(api, task["id"])
        time.sleep(0.2)
        text = api.get("/metrics").text
        assert 'pool_tasks{pool="default",state="finished"}' in text
        assert 'pool_workers{kind="live",pool="default"} 2.0' in text
        assert 'pool_queue_messages{kind="dead_lettered",pool="default"}' in text
        count = next(line for line in text.splitlines() if line.startswith("pool_status_apply_seconds_count"))
        assert float(count.split()[-1]) >= 4  # received .. finished of the task above
        spec = api.get("/openapi.json").json()
        for path in ("/api/v1/pools", "/api/v1/tasks", "/api/v1/tasks/{task_id}", "/api/v1/tasks/{task_id}/cancel",
                     "/api/v1/tasks/{task_id}/rerun", "/api/v1/tasks/{task_id}/logs/{stream}",
                     "/api/v1/dead-letters"):
            assert path in spec["paths"], path
        assert api.get("/docs").status_code == 200


# --- the process -------------------------------------------------------------------------------------------
def test_serve_drains_on_sigterm_with_json_logs(site_stack, tmp_path):
    served = serve(site_yaml(site_stack, tmp_path / "site.yaml"), "--log-format", "json")
    with client(served) as api:
        task = submit(api, ["sh", "-c", "sleep 1; echo drained"])
        with api.stream("GET", f"/api/v1/tasks/{task['id']}/logs/stdout", params={"follow": "true"}) as tail:
            started = time.monotonic()
            assert stop_served(served) == 0
            assert time.monotonic() - started < 15
            list(tail.iter_lines())  # the live tail was closed, not left hanging
    logs = [json.loads(line) for line in "".join(served.output).splitlines() if line.startswith("{")]
    assert logs and all({"time", "level", "logger", "message"} <= set(entry) for entry in logs)
    assert "stopped" in "".join(served.output)
    # Its peer (the stack's own service) keeps applying statuses: the task still finishes.
    with httpx.Client(base_url=site_stack.service.url,
                      headers={"Authorization": f"Bearer {site_stack.profile.site_token}"}) as peer:
        assert wait_final(peer, task["id"])["state"] == "finished"

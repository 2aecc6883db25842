"""Retiring a pool closes the site's receivers on its response queue: in the replica that took the
DELETE before it answers, and in the other replica (the local stack's own site service, on the same
database) within its pool sync. Seen from outside, in the emulator: the queue's consumer count, and
a worker's status sent after the retire staying in the queue unconsumed (positive control: the same
kind of status sent before the retire is consumed and applied; registering the pool again applies
the waiting one)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable

import httpx
import pytest
from azure.servicebus import ServiceBusClient

from tests.fixtures.site_service import ADMIN_TOKEN, REPO
from tests.fixtures.waiting import wait_until
from worker import protocol
from worker.emulator.auth import generate_key
from worker.local.competition import RESPONSE_QUEUE_PROPS, TASK_QUEUE_PROPS, emulator_connection_string
from worker.site.server import queue_metrics
from worker.wire import status_message

pytestmark = pytest.mark.slow
NAME = "retired-comp"
RESPONSES = f"{NAME}-responses"


def wait_for(what: str, check: Callable[[], object], timeout: float = 30) -> object:
    return wait_until(check, timeout=timeout, what=what, interval=0.2)


def test_retire_closes_the_response_queue_receivers_and_statuses_wait_until_registered_again(served_site, site_stack):
    emu = site_stack.profile.emulator
    keys = {k: generate_key() for k in ("tasks", "responses", "worker")}
    site_stack.admin.put_queue(f"{NAME}-tasks", **TASK_QUEUE_PROPS,
                               policies=[{"name": "site", "key": keys["tasks"], "rights": ["Send", "Listen"]}])
    site_stack.admin.put_queue(RESPONSES, **RESPONSE_QUEUE_PROPS,
                               policies=[{"name": "site", "key": keys["responses"], "rights": ["Listen"]},
                                         {"name": "worker", "key": keys["worker"], "rights": ["Send"]}])
    registration = {
        "name": NAME,
        "task_queue_connection_string": emulator_connection_string(emu.host, emu.port, "site", keys["tasks"],
                                                                   f"{NAME}-tasks"),
        "response_queue_connection_string": emulator_connection_string(emu.host, emu.port, "site",
                                                                       keys["responses"], RESPONSES)}
    worker_cs = emulator_connection_string(emu.host, emu.port, "worker", keys["worker"], RESPONSES)

    def responses() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{emu.http_port}/metrics", timeout=10) as answer:
            return queue_metrics(answer.read().decode()).get(RESPONSES, {})

    def report(task_id: str, seq: int, state: protocol.TaskState) -> None:
        status = protocol.Status(task_id=task_id, attempt=1, seq=seq, state=state, worker_id="retire-test-worker")
        with ServiceBusClient.from_connection_string(worker_cs) as client, \
                client.get_queue_sender(RESPONSES) as sender:
            sender.send_messages(status_message(status))

    api = httpx.Client(base_url=served_site.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60)
    with api:
        def state(task_id: str) -> str:
            return api.get(f"/api/v1/tasks/{task_id}").json()["state"]

        assert api.post("/api/v1/pools", json=registration).status_code == 201
        # Both services on this database (this one and the stack's) attach a receiver.
        wait_for("two receivers on the response queue", lambda: responses().get("consumers") == 2)
        task = api.post("/api/v1/tasks", json={"pool": NAME, "command": ["true"]}).json()
        assert task["sent"] is True

        # Positive control: a status sent now is consumed and applied.
        report(task["id"], 1, protocol.TaskState.RECEIVED)
        wait_for("the received status applied", lambda: state(task["id"]) == "received")
        wait_for("the response queue drained", lambda: responses().get("active_messages") == 0)

        retired = api.delete(f"/api/v1/pools/{NAME}")
        assert retired.json() == {"retired": NAME, "in_flight": 1, "receiver_closed": True}, retired.text
        # This replica closed its link before answering; the other one closes within its pool sync.
        assert responses()["consumers"] <= 1
        wait_for("no receiver left on the response queue", lambda: responses().get("consumers") == 0)

        # A status sent after the retire stays in the queue: nobody takes it.
        report(task["id"], 2, protocol.TaskState.RUNNING)
        wait_for("the status enqueued", lambda: responses().get("active_messages") == 1)
        time.sleep(3)  # several receive rounds of any receiver still attached
        after = responses()
        assert after["active_messages"] == 1 and after.get("locked_messages", 0) == 0 and after["consumers"] == 0
        assert state(task["id"]) == "received"

        # Registering the pool again reattaches the receivers; the waiting status is applied.
        assert api.post("/api/v1/pools", json=registration).status_code == 201
        wait_for("the waiting status applied", lambda: state(task["id"]) == "running")
        wait_for("the response queue drained again", lambda: responses().get("active_messages") == 0)

    # The CLI (thin client) retires through the same endpoint.
    env = {**os.environ, "POOL_SITE_TOKEN": ADMIN_TOKEN}
    command = [sys.executable, "-m", "worker", "competition", "retire", NAME, "--site", served_site.url]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert done.returncode == 0 and f"pool {NAME} retired" in done.stdout and "receiver" in done.stdout, done.stderr
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert again.returncode == 2 and "no pool named" in again.stderr
    wait_for("no receiver left after the CLI retire", lambda: responses().get("consumers") == 0)

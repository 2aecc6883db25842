"""Pools deployed elsewhere (the Pulumi program) registered with a running site from stack outputs:
`pool competition import --outputs-file` (the Pulumi CLI itself is not available here: the
`--stack` path and `competition create --azure` are tested only up to it), POST/DELETE /api/v1/pools."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.fixtures.site_service import ADMIN_TOKEN, REPO, deployed_outputs

pytestmark = pytest.mark.slow
NAME = "imported-comp"


def pool_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker", "competition", *args], cwd=REPO, check=False,
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def test_import_from_outputs_registers_a_working_pool_and_retire_removes_it(served_site, site_stack, tmp_path):
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(deployed_outputs(site_stack, NAME)))
    api = httpx.Client(base_url=served_site.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
    assert api.get(f"/api/v1/pools/{NAME}").status_code == 404

    wrong = pool_cli("import", "--outputs-file", str(outputs), "--site", served_site.url,
                     env={"POOL_SITE_TOKEN": "not-a-valid-token-at-all"})
    assert wrong.returncode == 1 and "401" not in wrong.stdout and "invalid bearer token" in wrong.stderr
    done = pool_cli("import", "--outputs-file", str(outputs), "--site", served_site.url,
                    env={"POOL_SITE_TOKEN": ADMIN_TOKEN})
    assert done.returncode == 0, done.stderr
    assert f"pool {NAME} registered" in done.stdout

    # The site sends through the registered access: the task waits in that queue (no agents there).
    task = api.post("/api/v1/tasks", json={"pool": NAME, "command": ["true"]})
    assert task.status_code == 201 and task.json()["sent"] is True
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        queue = api.get(f"/api/v1/pools/{NAME}").json()["queue"]
        if queue["active"] == 1:
            break
        time.sleep(0.3)
    assert queue["active"] == 1

    assert api.delete(f"/api/v1/pools/{NAME}").json() == {"retired": NAME, "in_flight": 1, "receiver_closed": True}
    refused = api.post("/api/v1/tasks", json={"pool": NAME, "command": ["true"]})
    assert refused.status_code == 404 and refused.json()["field"] == "pool"
    assert api.delete(f"/api/v1/pools/{NAME}").status_code == 404


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "x--y", "namespace": "ns.servicebus.windows.net"}, "name"),
    ({"name": "abc", "task_queue_connection_string": "Endpoint=sb://x/"}, "response_queue_connection_string"),
    ({"name": "abc"}, "namespace"),
    ({"name": "abc", "namespace": "a.b", "task_queue_connection_string": "Endpoint=sb://x/",
      "response_queue_connection_string": "Endpoint=sb://x/"}, "namespace"),
    ({"name": "abc", "task_queue_connection_string": "nope", "response_queue_connection_string": "nope"},
     "task_queue_connection_string"),
    ({"name": "abc", "namespace": "bad/namespace"}, "namespace"),
])
def test_register_refuses_bad_access_naming_the_field(served_site, body, field):
    with httpx.Client(base_url=served_site.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as api:
        answer = api.post("/api/v1/pools", json=body)
    assert answer.status_code == 422 and answer.json()["field"] == field, answer.text


def test_import_without_a_site_prints_the_site_yaml_entry_identity_outputs(tmp_path):
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"competition": "comp-id", "task_queue": "comp-id-tasks",
                                   "fully_qualified_namespace": "ns1.servicebus.windows.net"}))
    env = {k: v for k, v in os.environ.items() if k != "POOL_SITE_URL"}
    result = subprocess.run([sys.executable, "-m", "worker", "competition", "import", "--outputs-file", str(outputs)],
                            cwd=REPO, check=False, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert "comp-id:" in result.stdout and "namespace: ns1.servicebus.windows.net" in result.stdout
    outputs.write_text(json.dumps({"competition": "comp-id", "task_queue": "other-tasks"}))
    bad = pool_cli("import", "--outputs-file", str(outputs))
    assert bad.returncode == 2 and "task_queue" in bad.stderr


def test_import_from_a_stack_needs_the_pulumi_cli(tmp_path):
    env = {**os.environ, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = pool_cli("import", "--stack", "demo", env=env)
    assert result.returncode == 1 and "pulumi" in result.stderr.lower()


def test_the_local_stack_site_creates_a_pool_at_runtime_and_runs_its_tasks(site_stack, served_site):
    with httpx.Client(base_url=site_stack.service.url, timeout=60,
                      headers={"Authorization": f"Bearer {site_stack.profile.site_token}"}) as api:
        created = api.post("/api/v1/pools", json={"name": "made-by-api", "create": True})
        assert created.status_code == 201, created.text
        task = api.post("/api/v1/tasks", json={"pool": "made-by-api", "command": ["sh", "-c", "echo made"]}).json()
        deadline = time.monotonic() + 60  # its agents are started by the stack's supervisor
        while time.monotonic() < deadline and not api.get(f"/api/v1/tasks/{task['id']}").json()["terminal"]:
            time.sleep(0.2)
        assert api.get(f"/api/v1/tasks/{task['id']}").json()["state"] == "finished"
        assert api.get(f"/api/v1/tasks/{task['id']}/logs/stdout").text == "made\n"
    # A site without a way to create pools says so, naming the field.
    with httpx.Client(base_url=served_site.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as api:
        refused = api.post("/api/v1/pools", json={"name": "other-pool", "create": True})
        assert refused.status_code == 422 and refused.json()["field"] == "create"

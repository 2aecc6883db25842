"""Creating an Azure pool through the API: `POST /api/v1/pools` with `azure` validates the stack
config (4xx naming the key), answers 202 with an operation, runs the Automation API's `pulumi up` in
the background and registers the pool from the stack outputs (the `pool competition import` path).

Served by `pool site serve` (a subprocess) on a local stack. There is no Pulumi CLI and no Azure here:
the missing CLI is tested as is; the deployment itself is answered by a stand-in `pulumi` executable
on the site's PATH (tests/fixtures/fake_pulumi.py) whose outputs name queues really created in the
emulator, so the registered pool really takes tasks. What `pulumi up` deploys in Azure is untested."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from tests.fixtures import fake_pulumi
from tests.fixtures.site_service import (
    ADMIN_TOKEN,
    READ_TOKEN,
    REPO,
    Served,
    deployed_outputs,
    serve,
    site_yaml,
    stack_config,
    stop_served,
)
from tests.fixtures.waiting import wait_until
from worker.site.models import PoolOperation, utcnow

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pulumi_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pulumi-bin")


@pytest.fixture(scope="module")
def azure_site(site_stack, pulumi_bin, tmp_path_factory) -> Iterator[Served]:  # type: ignore[no-untyped-def]
    """A site whose PATH holds only pulumi_bin (empty until a test installs the stand-in) and the
    system directories; HOME has no ~/.pulumi."""
    home = tmp_path_factory.mktemp("home")
    served = serve(site_yaml(site_stack, tmp_path_factory.mktemp("azure") / "site.yaml"),
                   env={"PATH": f"{pulumi_bin}:/usr/bin:/bin", "HOME": str(home)})
    yield served
    stop_served(served)


@pytest.fixture
def no_pulumi(pulumi_bin: Path) -> Path:
    (pulumi_bin / "pulumi").unlink(missing_ok=True)
    return pulumi_bin


def api(served: Served, token: str | None = ADMIN_TOKEN) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=served.url, headers=headers, timeout=30)


def wait_done(client: httpx.Client, operation_id: str, timeout: float = 90) -> dict:
    def finished() -> dict | None:
        operation = client.get(f"/api/v1/operations/{operation_id}").json()
        return operation if operation["state"] != "provisioning" else None

    return wait_until(finished, timeout=timeout, what=f"operation {operation_id} to end", interval=0.2)


def operations_of(client: httpx.Client, pool: str) -> list[dict]:
    return client.get("/api/v1/operations", params={"pool": pool}).json()["operations"]


# --- validation and auth: refused before anything is recorded ------------------------------------------
def _without(config: dict, key: str) -> dict:
    return {k: v for k, v in config.items() if k != key}


BAD = [
    ({"name": "az-bad"}, None, "azure"),  # positive shape check below: `azure` itself must be an object
    ({"name": "az-bad", "azure": {}}, None, "azure.config"),
    ({"name": "az-bad", "azure": {"config": {}, "extra": 1}}, None, "azure.extra"),
    ({"name": "az-bad", "azure": {"config": "westeurope"}}, None, "azure.config"),
    ({"name": "az-bad", "azure": {"config": {}, "stack": "bad stack!"}}, None, "azure.stack"),
    ({"name": "az-bad", "namespace": "ns.servicebus.windows.net"}, "config", "azure"),
    ({"name": "az-bad", "create": True}, "config", "azure"),
    ({"name": "az-bad"}, "max_instances", "azure.config.workers.max_instances"),
    ({"name": "az-bad"}, "location", "azure.config.azure-native:location"),
    ({"name": "az-bad"}, "competition", "azure.config.competition"),
    ({"name": "az-bad"}, "workers", "azure.config.workers"),
]


@pytest.mark.parametrize(("body", "change", "field"), BAD)
def test_bad_azure_requests_are_422_naming_the_field_and_record_nothing(azure_site, body, change, field):
    body = dict(body)
    config = stack_config("az-bad")
    if change == "config":
        body["azure"] = {"config": config}
    elif change == "max_instances":
        config["pool:workers"] = {**config["pool:workers"], "max_instances": -1}
        body["azure"] = {"config": config}
    elif change == "location":
        body["azure"] = {"config": _without(config, "azure-native:location")}
    elif change == "competition":
        config["pool:competition"] = "another-one"
        body["azure"] = {"config": config}
    elif change == "workers":
        body["azure"] = {"config": _without(config, "pool:workers")}
    elif change is None and "azure" not in body:
        body["azure"] = "yes"
    with api(azure_site) as client:
        answer = client.post("/api/v1/pools", json=body)
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == field, answer.text
        assert operations_of(client, "az-bad") == []


def test_azure_create_needs_an_admin_token(azure_site, no_pulumi):
    body = {"name": "az-auth", "azure": {"config": stack_config("az-auth")}}
    with api(azure_site, READ_TOKEN) as reader:
        answer = reader.post("/api/v1/pools", json=body)
        assert answer.status_code == 403 and "admin" in answer.json()["detail"]
        assert reader.get("/api/v1/operations").status_code == 200  # reading operations is allowed
    with api(azure_site, None) as anonymous:
        assert anonymous.post("/api/v1/pools", json=body).status_code == 401
        assert anonymous.get("/api/v1/operations").status_code == 401
    with api(azure_site) as admin:
        assert operations_of(admin, "az-auth") == []
        # Positive control: the same body with the admin token is accepted (and fails in the background:
        # no Pulumi CLI on this site's PATH).
        accepted = admin.post("/api/v1/pools", json=body)
        assert accepted.status_code == 202, accepted.text
        assert wait_done(admin, accepted.json()["id"])["state"] == "failed"


# --- the background job ---------------------------------------------------------------------------------
def test_without_the_pulumi_cli_the_operation_fails_with_the_reason(azure_site, no_pulumi):
    with api(azure_site) as client:
        answer = client.post("/api/v1/pools", json={"name": "az-nocli", "azure": {"config": stack_config("az-nocli")}})
        assert answer.status_code == 202, answer.text
        operation = answer.json()
        assert answer.headers["location"] == f"/api/v1/operations/{operation['id']}"
        assert operation["state"] in ("provisioning", "failed") and operation["pool"] == "az-nocli"
        assert operation["requested_by"] == "admin" and operation["stack"] == "az-nocli"
        done = wait_done(client, operation["id"])
        assert done["state"] == "failed" and done["finished_at"] is not None
        assert "Pulumi CLI is not installed" in done["detail"], done
        assert client.get("/api/v1/pools/az-nocli").status_code == 404  # nothing registered
        assert [o["id"] for o in operations_of(client, "az-nocli")] == [operation["id"]]


def test_with_a_pulumi_cli_the_pool_is_deployed_then_registered_and_takes_tasks(azure_site, site_stack, pulumi_bin):
    name = "az-made"
    outputs = deployed_outputs(site_stack, name, resource_group="rg-fake")
    fake_pulumi.install(pulumi_bin, outputs, sys.executable)
    with api(azure_site) as client:
        assert client.get(f"/api/v1/pools/{name}").status_code == 404
        answer = client.post("/api/v1/pools", json={"name": name, "azure": {"config": stack_config(name),
                                                                            "stack": "prod-az-made"}})
        assert answer.status_code == 202, answer.text
        done = wait_done(client, answer.json()["id"])
        assert done["state"] == "ready", done
        assert done["stack"] == "prod-az-made"
        assert "Resources: + 12 created" in done["output_tail"]
        # Stack outputs are kept without the secret ones (the site's connection strings).
        assert done["outputs"]["resource_group"] == "rg-fake"
        assert not any("connection_string" in key for key in done["outputs"])

        pool = client.get(f"/api/v1/pools/{name}")
        assert pool.status_code == 200 and pool.json()["task_queue"] == f"{name}-tasks"
        # Registered with the stack's site connection strings: the site sends through them.
        task = client.post("/api/v1/tasks", json={"pool": name, "command": ["true"]})
        assert task.status_code == 201 and task.json()["sent"] is True
        wait_until(lambda: client.get(f"/api/v1/pools/{name}").json()["queue"]["active"] == 1, timeout=15,
                   what="the task in the deployed pool's queue", interval=0.3)
    # The Automation API drove the CLI: the stack selected, its config written (validated keys), `up` run.
    calls = fake_pulumi.calls(pulumi_bin)
    ups = [c for c in calls if "up" in c]
    assert ups and "--stack" in ups[-1] and ups[-1][ups[-1].index("--stack") + 1] == "prod-az-made"
    config_set = next(c for c in calls if "set-all" in c)
    assert f"pool:competition={name}" in config_set and "azure-native:location=westeurope" in config_set


def test_a_failed_pulumi_up_fails_the_operation_with_its_error(azure_site, site_stack, pulumi_bin):
    name = "az-upfail"
    fake_pulumi.install(pulumi_bin, {"competition": name}, sys.executable,
                        up_error="error: creating VM scale set: QuotaExceeded: not enough cores in westeurope\n")
    with api(azure_site) as client:
        answer = client.post("/api/v1/pools", json={"name": name, "azure": {"config": stack_config(name)}})
        assert answer.status_code == 202
        done = wait_done(client, answer.json()["id"])
        assert done["state"] == "failed"
        assert f"pulumi up of stack {name} failed" in done["detail"] and "QuotaExceeded" in done["detail"]
        assert client.get(f"/api/v1/pools/{name}").status_code == 404


def test_unusable_stack_outputs_fail_the_operation(azure_site, pulumi_bin):
    name = "az-badout"
    fake_pulumi.install(pulumi_bin, {"competition": name, "task_queue": f"{name}-tasks"}, sys.executable)
    with api(azure_site) as client:
        answer = client.post("/api/v1/pools", json={"name": name, "azure": {"config": stack_config(name)}})
        done = wait_done(client, answer.json()["id"])
        assert done["state"] == "failed" and "neither the site's queue connection strings" in done["detail"]
        assert client.get(f"/api/v1/pools/{name}").status_code == 404


def test_a_second_create_while_provisioning_is_409_and_a_silent_one_is_shown_failed(azure_site, site_stack):
    """A record whose replica stopped renewing it (crashed mid-deployment) ends failed when read, and
    then no longer blocks a new create; a live one does."""
    name = "az-busy"
    now = utcnow()
    with site_stack.site.sessions.begin() as session:
        session.add(PoolOperation(id="a" * 16, pool=name, kind="azure_create", state="provisioning", stack=name,
                                  replica="elsewhere:1:abc", started_at=now, heartbeat_at=now))
        session.add(PoolOperation(id="b" * 16, pool="az-silent", kind="azure_create", state="provisioning",
                                  stack="az-silent", replica="gone:2:def", started_at=now - timedelta(minutes=10),
                                  heartbeat_at=now - timedelta(minutes=5)))
    with api(azure_site) as client:
        busy = client.post("/api/v1/pools", json={"name": name, "azure": {"config": stack_config(name)}})
        assert busy.status_code == 409 and busy.json()["field"] == "name" and "a" * 16 in busy.text
        assert client.get(f"/api/v1/operations/{'a' * 16}").json()["state"] == "provisioning"  # still alive

        silent = client.get(f"/api/v1/operations/{'b' * 16}").json()
        assert silent["state"] == "failed" and "stopped renewing it" in silent["detail"]
        with site_stack.site.sessions() as session:  # stored, not only shown
            assert session.get(PoolOperation, "b" * 16).state == "failed"
        assert client.get("/api/v1/operations/0123456789abcdef").status_code == 404
        assert client.get("/api/v1/operations/not-an-id").status_code == 422


# --- the CLI: pool competition create NAME --azure --on-site ----------------------------------------------
def create_on_site(served: Served, name: str, config: dict, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    config_file = tmp_path / f"Pulumi.{name}.yaml"
    config_file.write_text(yaml.safe_dump({"config": config}))
    return subprocess.run([sys.executable, "-m", "worker", "competition", "create", name, "--azure", "--on-site",
                           "--stack-config", str(config_file), "--site", served.url],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "POOL_SITE_TOKEN": ADMIN_TOKEN})


def test_cli_create_on_site_follows_the_operation(azure_site, site_stack, pulumi_bin, tmp_path):
    (pulumi_bin / "pulumi").unlink(missing_ok=True)
    failed = create_on_site(azure_site, "az-cli-nocli", stack_config("az-cli-nocli"), tmp_path)
    assert failed.returncode == 1 and "Pulumi CLI is not installed" in failed.stderr, failed.stderr

    bad = stack_config("az-cli-bad")
    bad["pool:workers"] = {**bad["pool:workers"], "max_instances": -1}
    refused = create_on_site(azure_site, "az-cli-bad", bad, tmp_path)
    assert refused.returncode == 2 and "azure.config.workers.max_instances" in refused.stderr, refused.stderr

    name = "az-cli-made"
    fake_pulumi.install(pulumi_bin, deployed_outputs(site_stack, name, resource_group="rg-fake"), sys.executable)
    made = create_on_site(azure_site, name, stack_config(name), tmp_path)
    assert made.returncode == 0, made.stderr
    assert "Resources: + 12 created" in made.stdout and f"pool {name} deployed and registered" in made.stdout
    with api(azure_site) as client:
        assert client.get(f"/api/v1/pools/{name}").status_code == 200


def test_a_site_stopped_mid_deployment_leaves_its_operation_failed_not_provisioning(site_stack, tmp_path):
    """SIGTERM while `pulumi up` runs: the drained stop records the operation failed with the reason."""
    bin_dir = tmp_path / "bin"
    fake_pulumi.install(bin_dir, {"competition": "az-stopped"}, sys.executable, up_sleep_s=60)
    served = serve(site_yaml(site_stack, tmp_path / "site.yaml"),
                   env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)})
    try:
        with api(served) as client:
            answer = client.post("/api/v1/pools", json={"name": "az-stopped",
                                                        "azure": {"config": stack_config("az-stopped")}})
            assert answer.status_code == 202
            operation_id = answer.json()["id"]
            wait_until(lambda: (bin_dir / "up.pid").exists(), timeout=60, what="pulumi up to start")
            assert client.get(f"/api/v1/operations/{operation_id}").json()["state"] == "provisioning"
        assert stop_served(served) == 0
    finally:
        if served.process.poll() is None:
            served.process.kill()
        if (bin_dir / "up.pid").exists():  # the stand-in's `up`, if it outlived the site
            with contextlib.suppress(ProcessLookupError):
                os.kill(int((bin_dir / "up.pid").read_text()), signal.SIGKILL)
    with site_stack.site.sessions() as session:
        row = session.get(PoolOperation, operation_id)
        assert row.state == "failed" and "site service stopped during the deployment" in row.detail

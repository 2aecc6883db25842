"""The whole program: outputs (secrets marked secret) and the Pulumi entry point reading stack config."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pulumi
import pytest

from tests.infra.conftest import REPO, SSH_KEY, linux_config
from tests.infra.harness import Deployment, deploy

MAIN = Path(__file__).resolve().parents[2] / "infra" / "__main__.py"
SITE = "11111111-2222-3333-4444-555555555555"


def test_outputs_tell_the_organizer_where_to_send_and_keep_keys_secret(run_stack):
    d = run_stack(linux_config())
    assert d.outputs["task_queue"] == "demo-tasks" and d.outputs["response_queue"] == "demo-responses"
    assert d.outputs["fully_qualified_namespace"].endswith(".servicebus.windows.net")
    assert d.outputs["storage_account"] == d.one("storage:StorageAccount").inputs["accountName"]
    assert d.outputs["blob_endpoint"].startswith("https://")
    secrets = {k for k in d.outputs if "connection_string" in k}
    assert secrets == {"site_task_queue_connection_string", "site_response_queue_connection_string",
                       "site_storage_connection_string"}
    assert secrets <= d.secret_outputs
    assert d.secret_outputs == secrets  # names and endpoints stay readable
    assert "SharedAccessKeyName=site-send" in d.outputs["site_task_queue_connection_string"]
    assert "SharedAccessKeyName=site-listen" in d.outputs["site_response_queue_connection_string"]


def test_identity_stack_has_no_key_outputs(run_stack):
    d = run_stack(linux_config(auth="managed_identity", site={"principal_id": SITE},
                               servicebus={"disable_local_auth": True}))
    assert not d.secret_outputs
    assert d.outputs["auth"] == "managed_identity"
    assert d.outputs["worker_identity_client_id"] == "bbbbbbbb-0000-0000-0000-000000000002"


def test_existing_resource_group_is_used_not_created(run_stack):
    d = run_stack(linux_config(resource_group="rg-existing"))
    assert not d.of_type("resources:ResourceGroup")
    assert {r.inputs["resourceGroupName"] for r in d.resources
            if r.typ.startswith("azure-native:") and "resourceGroupName" in r.inputs
            and not r.typ.endswith(("Queue", "QueueAuthorizationRule"))} == {"rg-existing"}
    d = run_stack(linux_config())
    assert d.one("resources:ResourceGroup").inputs["resourceGroupName"] == "rg-pool-demo"


def test_tags_reach_resources(run_stack):
    d = run_stack(linux_config(tags={"owner": "ml-team"}))
    for typ in ("servicebus:Namespace", "storage:StorageAccount", "compute:VirtualMachineScaleSet"):
        tags = d.one(typ).inputs["tags"]
        assert tags == {"compute-pools:competition": "demo", "owner": "ml-team"}


def _run_main(config: dict[str, str], secret_keys: list[str] | None = None, into: Deployment | None = None):
    def program():
        pulumi.runtime.set_all_config(config, secret_keys or [])
        runpy.run_path(str(MAIN), run_name="__main__")
        return {}
    return deploy(program, deployment=into)


def test_entry_point_reads_structured_stack_config():
    d = _run_main({"azure-native:location": "westeurope", "pool:competition": "from-config",
                   "pool:workers": json.dumps({"os": "linux", "ssh_public_key": SSH_KEY, "max_instances": 3,
                                                "install": {"source": REPO}}),
                   "pool:servicebus": json.dumps({"task_queue": {"max_delivery_count": 4}})})
    assert d.one("servicebus:Queue", "queues-tasks").inputs["maxDeliveryCount"] == 4
    assert d.one("monitor:AutoscaleSetting").inputs["profiles"][0]["capacity"]["maximum"] == "3"
    assert d.one("storage:StorageAccount").inputs["location"] == "westeurope"


@pytest.mark.parametrize("config, message", [
    ({"azure-native:location": "westeurope", "pool:competition": "x!"}, "invalid competition name"),
    ({"pool:competition": "demo", "pool:workers": json.dumps({"os": "linux", "ssh_public_key": SSH_KEY,
                                                                "install": {"source": REPO}})},
     "set azure-native:location"),
    ({"azure-native:location": "westeurope", "pool:competition": "demo",
      "pool:workers": json.dumps({"os": "windows", "gallery_image_id": "/subscriptions/s/resourceGroups/r/providers/"
                                  "Microsoft.Compute/galleries/g/images/i"})},
     "needs pool:admin_password"),
])
def test_entry_point_stops_on_bad_config_before_declaring_anything(config, message):
    seen = Deployment()
    with pytest.raises(pulumi.RunError, match=message) as err:
        _run_main(config, into=seen)
    assert not seen.resources
    assert "stack config of pool/test" in str(err.value)


def test_windows_password_is_read_as_a_secret():
    d = _run_main({"azure-native:location": "westeurope", "pool:competition": "demo-win",
                   "pool:admin_password": "S3cret-Passw0rd!",
                   "pool:workers": json.dumps({"os": "windows", "gallery_image_id": "/subscriptions/s/resourceGroups/"
                                               "r/providers/Microsoft.Compute/galleries/g/images/i"})},
                  secret_keys=["pool:admin_password"])
    from tests.infra.conftest import is_secret, reveal

    vmss = d.one("compute:VirtualMachineScaleSet").inputs
    assert is_secret(vmss["virtualMachineProfile"])
    assert reveal(vmss)["virtualMachineProfile"]["osProfile"]["adminPassword"] == "S3cret-Passw0rd!"

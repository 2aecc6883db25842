"""Run the Pulumi program under Pulumi's own mocks and keep what it declared.

``Mocks.new_resource`` receives each resource's inputs as the engine would (camelCase keys, enums as
plain strings, secrets unwrapped); ids and a few computed outputs are synthesised the way Azure
would return them so that dependent resources get realistic values.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pulumi

SUBSCRIPTION = "00000000-1111-2222-3333-444444444444"
RG = "rg-under-test"

# The input that holds each resource type's Azure name (falls back to the Pulumi name).
_NAME_INPUT = {
    "azure-native:resources:ResourceGroup": "resourceGroupName",
    "azure-native:servicebus:Namespace": "namespaceName",
    "azure-native:servicebus:Queue": "queueName",
    "azure-native:servicebus:QueueAuthorizationRule": "authorizationRuleName",
    "azure-native:storage:StorageAccount": "accountName",
    "azure-native:storage:BlobContainer": "containerName",
    "azure-native:storage:ManagementPolicy": "managementPolicyName",
    "azure-native:managedidentity:UserAssignedIdentity": "resourceName",
    "azure-native:compute:VirtualMachineScaleSet": "vmScaleSetName",
    "azure-native:monitor:AutoscaleSetting": "autoscaleSettingName",
    "azure-native:network:Subnet": "subnetName",
}


def usable_event_loop() -> None:
    """Pulumi's mocks run on the thread's current event loop; pytest-asyncio (the emulator's aio
    tests) closes its loop and leaves none set, so make sure there is a usable one."""
    policy = asyncio.get_event_loop_policy()
    try:
        usable = not policy.get_event_loop().is_closed()
    except RuntimeError:
        usable = False
    if not usable:
        policy.set_event_loop(policy.new_event_loop())


@dataclass
class Declared:
    typ: str
    name: str
    inputs: dict[str, Any]
    id: str


@dataclass
class Deployment:
    resources: list[Declared] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)

    def of_type(self, typ: str) -> list[Declared]:
        return [r for r in self.resources if r.typ == f"azure-native:{typ}"]

    def one(self, typ: str, name: str | None = None) -> Declared:
        found = [r for r in self.of_type(typ) if name is None or r.name == name]
        assert len(found) == 1, f"expected one {typ} {name or ''}, found {[r.name for r in found]}"
        return found[0]

    def by_id(self, rid: str) -> Declared:
        return next(r for r in self.resources if r.id == rid)


class Mocks(pulumi.runtime.Mocks):
    def __init__(self, deployment: Deployment):
        self.deployment = deployment

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        inputs = dict(args.inputs)
        name = inputs.get(_NAME_INPUT.get(args.typ, ""), args.name)
        provider = args.typ.split(":")[1]
        rid = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RG}/providers/{provider}/{args.typ}/{name}"
        if args.typ == "azure-native:resources:ResourceGroup":
            rid = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{name}"
        self.deployment.resources.append(Declared(args.typ, args.name, inputs, rid))
        outputs = {**inputs, "name": name}
        if args.typ == "azure-native:managedidentity:UserAssignedIdentity":
            outputs.update(principalId="aaaaaaaa-0000-0000-0000-000000000001",
                           clientId="bbbbbbbb-0000-0000-0000-000000000002")
        elif args.typ == "azure-native:storage:StorageAccount":
            outputs["primaryEndpoints"] = {"blob": f"https://{name}.blob.core.windows.net/"}
        elif args.typ == "azure-native:compute:VirtualMachineScaleSet":  # a map in Azure's answer
            ids = inputs.get("identity", {}).get("userAssignedIdentities", [])
            outputs["identity"] = {**inputs["identity"], "userAssignedIdentities": {i: {} for i in ids}}
        elif args.typ == "azure-native:network:PublicIPAddress":
            outputs["ipAddress"] = "20.0.0.1"
        return [rid, outputs]

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.deployment.calls.append((args.token, dict(args.args)))
        a = args.args
        if args.token == "azure-native:authorization:getClientConfig":
            return {"subscriptionId": SUBSCRIPTION, "tenantId": "t", "clientId": "c", "objectId": "o"}
        if args.token == "azure-native:servicebus:listQueueKeys":
            return {"primaryConnectionString":
                    f"Endpoint=sb://{a['namespaceName']}.servicebus.windows.net/;SharedAccessKeyName="
                    f"{a['authorizationRuleName']};SharedAccessKey=SECRETKEY;EntityPath={a['queueName']}",
                    "keyName": a["authorizationRuleName"]}
        if args.token == "azure-native:storage:listStorageAccountKeys":
            return {"keys": [{"keyName": "key1", "value": "STORAGEKEY", "permissions": "FULL",
                              "creationTime": "2026-01-01T00:00:00Z"}]}
        if args.token == "azure-native:servicebus:getNamespace":
            return {"id": f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{a['resourceGroupName']}/providers/"
                          f"Microsoft.ServiceBus/namespaces/{a['namespaceName']}",
                    "name": a["namespaceName"], "location": "westeurope", "type": "Microsoft.ServiceBus/namespaces"}
        raise AssertionError(f"unexpected invoke {args.token}")


def deploy(build, *args, deployment: Deployment | None = None, mocks: type[Mocks] = Mocks, **kwargs) -> Deployment:
    """Run ``build(*args, **kwargs)`` (which returns a dict of outputs) under mocks; wait for
    every registration; return what was declared and the resolved outputs (into ``deployment``
    when given, so that a test can look at it even when the program raised). ``mocks``: a
    :class:`Mocks` subclass (called with the deployment) to answer some calls differently."""
    deployment = deployment if deployment is not None else Deployment()
    pulumi.runtime.set_mocks(mocks(deployment), project="pool", stack="test", preview=False)

    @pulumi.runtime.test
    def run():
        outputs = build(*args, **kwargs)

        async def collect():
            for key, out in outputs.items():
                deployment.outputs[key] = await out.future()
                if await out.is_secret():
                    deployment.secret_outputs.add(key)

        return asyncio.ensure_future(collect())

    run()
    return deployment

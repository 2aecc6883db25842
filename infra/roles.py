"""Built-in Azure role definitions the program assigns, and how to name them in a subscription."""

from __future__ import annotations

import pulumi

# https://learn.microsoft.com/azure/role-based-access-control/built-in-roles
SERVICE_BUS_DATA_RECEIVER = "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0"  # receive/peek/settle/renew
SERVICE_BUS_DATA_SENDER = "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39"  # send only
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"  # read/write/delete blobs
STORAGE_BLOB_DELEGATOR = "db58b8e5-c6ad-4a2a-8342-4190687cbf4a"  # get a user delegation key (SAS)

ROLE_NAMES = {
    SERVICE_BUS_DATA_RECEIVER: "Azure Service Bus Data Receiver",
    SERVICE_BUS_DATA_SENDER: "Azure Service Bus Data Sender",
    STORAGE_BLOB_DATA_CONTRIBUTOR: "Storage Blob Data Contributor",
    STORAGE_BLOB_DELEGATOR: "Storage Blob Delegator",
}


def subscription_id() -> pulumi.Output[str]:
    """The subscription the azure-native provider deploys to."""
    from pulumi_azure_native import authorization

    return authorization.get_client_config_output().subscription_id


def role_definition_id(role: str) -> pulumi.Output[str]:
    return subscription_id().apply(
        lambda sub: f"/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{role}")


def assign(name: str, *, role: str, scope: pulumi.Input[str], principal_id: pulumi.Input[str],
           principal_type: str, parent: pulumi.Resource) -> pulumi.Resource:
    """One role assignment of ``role`` to ``principal_id`` on exactly ``scope``."""
    from pulumi_azure_native import authorization

    return authorization.RoleAssignment(
        name,
        scope=scope,
        role_definition_id=role_definition_id(role),
        principal_id=principal_id,
        principal_type=principal_type,
        description=f"compute-pools: {ROLE_NAMES[role]}",
        opts=pulumi.ResourceOptions(parent=parent),
    )

"""The whole stack for one competition: identity, queues, worker pool, storage, and the outputs an
organizer needs. ``__main__`` reads the stack config and calls :func:`build`; tests call it directly
under Pulumi's mocks."""

from __future__ import annotations

import pulumi
from pulumi_azure_native import managedidentity, resources

from infra.custom_data import QueueAccess
from infra.naming import resource_group_name
from infra.queues import CompetitionQueues, CompetitionQueuesArgs
from infra.storage import CompetitionStorage, CompetitionStorageArgs
from infra.workers import WorkerPool, WorkerPoolArgs
from worker.stackconfig import StackConfig


def build(config: StackConfig, *, location: str | None = None,
          admin_password: pulumi.Input[str] | None = None) -> dict[str, pulumi.Output]:
    """Declare every resource; returns the stack outputs (secrets wrapped as secrets)."""
    competition = config.competition
    location = config.location or location
    tags = {"compute-pools:competition": competition, **config.tags}
    identity_mode = config.auth == "managed_identity"
    site_principal = config.site.principal_id if identity_mode else None

    if config.resource_group:
        rg_name: pulumi.Input[str] = config.resource_group
    else:
        rg = resources.ResourceGroup("resource-group", resource_group_name=resource_group_name(competition),
                                     location=location, tags=tags)
        rg_name = rg.name

    identity = managedidentity.UserAssignedIdentity(
        "worker-identity", resource_name_=f"id-pool-{competition}", resource_group_name=rg_name,
        location=location, tags=tags)

    queues = CompetitionQueues("queues", CompetitionQueuesArgs(
        competition=competition, resource_group_name=rg_name, location=location, config=config.servicebus,
        auth=config.auth, naming_salt=config.naming_salt,
        worker_principal_id=identity.principal_id if identity_mode else None,
        site_principal_id=site_principal, site_principal_type=config.site.principal_type, tags=tags))

    if identity_mode:
        access = pulumi.Output.all(queues.fully_qualified_namespace, identity.client_id).apply(
            lambda v: QueueAccess(queues.task_queue_name, queues.response_queue_name, auth="managed_identity",
                                  fully_qualified_namespace=v[0], managed_identity_client_id=v[1]))
    else:
        access = pulumi.Output.all(queues.worker_task_connection_string,
                                   queues.worker_response_connection_string).apply(
            lambda v: QueueAccess(queues.task_queue_name, queues.response_queue_name,
                                  task_queue_connection_string=v[0], response_queue_connection_string=v[1]))

    pool = WorkerPool("workers", WorkerPoolArgs(
        competition=competition, resource_group_name=rg_name, location=location, config=config.workers,
        identity_id=identity.id, queue_access=access, namespace_id=queues.namespace_id,
        task_queue_name=queues.task_queue_name, admin_password=admin_password, tags=tags))

    store = CompetitionStorage("storage", CompetitionStorageArgs(
        competition=competition, resource_group_name=rg_name, location=location, config=config.storage,
        auth=config.auth, naming_salt=config.naming_salt, worker_subnet_id=pool.subnet_id,
        site_principal_id=site_principal, site_principal_type=config.site.principal_type, tags=tags))

    outputs: dict[str, pulumi.Output] = {
        "competition": pulumi.Output.from_input(competition),
        "resource_group": pulumi.Output.from_input(rg_name),
        "auth": pulumi.Output.from_input(config.auth),
        # Where to send submissions: the task queue (and where statuses come back).
        "servicebus_namespace": queues.namespace_name,
        "fully_qualified_namespace": queues.fully_qualified_namespace,
        "task_queue": pulumi.Output.from_input(queues.task_queue_name),
        "response_queue": pulumi.Output.from_input(queues.response_queue_name),
        "storage_account": store.account_name,
        "blob_endpoint": store.blob_endpoint,
        "containers": pulumi.Output.from_input(store.containers),
        "scale_set": pool.scale_set_name,
        "worker_outbound_ip": pool.outbound_ip,
        "worker_identity_client_id": identity.client_id,
        "worker_identity_principal_id": identity.principal_id,
    }
    secrets = {  # connection information for the site (already secrets; None where identities are used)
        "site_task_queue_connection_string": queues.site_task_connection_string,
        "site_response_queue_connection_string": queues.site_response_connection_string,
        "site_storage_connection_string": store.site_connection_string,
    }
    outputs.update({k: pulumi.Output.secret(v) for k, v in secrets.items() if v is not None})
    return outputs

"""CompetitionQueues: a competition's task and response queues, and the least rights to use them.

Workers may Listen on the task queue and Send on the response queue; the site may Send on the task
queue and Listen on the response queue. Nobody gets Manage from this program. With
``auth: managed_identity`` the same rights are Azure RBAC role assignments scoped to the single queue
(Azure Service Bus Data Receiver / Data Sender) instead of shared access keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
from pulumi_azure_native import servicebus

from infra import roles
from infra.naming import competition_queues, namespace_name
from worker.stackconfig import ServiceBusConfig

WORKER_LISTEN, WORKER_SEND = "worker-listen", "worker-send"
SITE_SEND, SITE_LISTEN = "site-send", "site-listen"


@dataclass
class CompetitionQueuesArgs:
    competition: str
    resource_group_name: pulumi.Input[str]
    config: ServiceBusConfig
    auth: str = "connection_string"
    location: pulumi.Input[str] | None = None
    naming_salt: str = ""
    worker_principal_id: pulumi.Input[str] | None = None  # required with auth: managed_identity
    site_principal_id: str | None = None
    site_principal_type: str = "ServicePrincipal"
    tags: dict[str, str] = field(default_factory=dict)


class CompetitionQueues(pulumi.ComponentResource):
    namespace_name: pulumi.Output[str]
    namespace_id: pulumi.Output[str]
    fully_qualified_namespace: pulumi.Output[str]
    task_queue_name: str
    response_queue_name: str
    task_queue_id: pulumi.Output[str]
    response_queue_id: pulumi.Output[str]
    # Queue-level SAS connection strings (secrets); None where identities are used instead.
    worker_task_connection_string: pulumi.Output[str] | None = None
    worker_response_connection_string: pulumi.Output[str] | None = None
    site_task_connection_string: pulumi.Output[str] | None = None
    site_response_connection_string: pulumi.Output[str] | None = None

    def __init__(self, name: str, args: CompetitionQueuesArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("compute-pools:infra:CompetitionQueues", name, None, opts)
        cfg = args.config
        child = pulumi.ResourceOptions(parent=self)
        identity = args.auth == "managed_identity"
        if identity and args.worker_principal_id is None:
            raise ValueError("auth is managed_identity but no worker principal was given")

        if cfg.existing_namespace:
            existing = servicebus.get_namespace_output(namespace_name=cfg.existing_namespace.name,
                                                       resource_group_name=cfg.existing_namespace.resource_group)
            ns_rg: pulumi.Input[str] = cfg.existing_namespace.resource_group
            self.namespace_name = pulumi.Output.from_input(cfg.existing_namespace.name)
            self.namespace_id = existing.id
        else:
            namespace = servicebus.Namespace(
                f"{name}-namespace",
                namespace_name=cfg.namespace_name or namespace_name(args.competition, args.naming_salt),
                resource_group_name=args.resource_group_name,
                location=args.location,
                sku={"name": cfg.sku, "tier": cfg.sku},
                minimum_tls_version="1.2",
                disable_local_auth=cfg.disable_local_auth,
                tags=args.tags,
                opts=child,
            )
            ns_rg = args.resource_group_name
            self.namespace_name = namespace.name
            self.namespace_id = namespace.id
        self.fully_qualified_namespace = self.namespace_name.apply(lambda n: f"{n}.servicebus.windows.net")

        self.task_queue_name, self.response_queue_name = competition_queues(args.competition)
        queues = {}
        for kind, queue_name, props in (("tasks", self.task_queue_name, cfg.task_queue),
                                        ("responses", self.response_queue_name, cfg.response_queue)):
            queues[kind] = servicebus.Queue(
                f"{name}-{kind}",
                queue_name=queue_name,
                namespace_name=self.namespace_name,
                resource_group_name=ns_rg,
                **props.arm_properties(cfg.sku),
                opts=child,
            )
        self.task_queue_id = queues["tasks"].id
        self.response_queue_id = queues["responses"].id

        def sas(rule_name: str, kind: str, right: str) -> pulumi.Output[str]:
            rule = servicebus.QueueAuthorizationRule(
                f"{name}-{rule_name}",
                authorization_rule_name=rule_name,
                queue_name=queues[kind].name,
                namespace_name=self.namespace_name,
                resource_group_name=ns_rg,
                rights=[right],
                opts=child,
            )
            keys = servicebus.list_queue_keys_output(
                authorization_rule_name=rule.name, queue_name=queues[kind].name,
                namespace_name=self.namespace_name, resource_group_name=ns_rg)
            return pulumi.Output.secret(keys.primary_connection_string)

        if identity:
            roles.assign(f"{name}-worker-receive-tasks", role=roles.SERVICE_BUS_DATA_RECEIVER,
                         scope=self.task_queue_id, principal_id=args.worker_principal_id,
                         principal_type="ServicePrincipal", parent=self)
            roles.assign(f"{name}-worker-send-responses", role=roles.SERVICE_BUS_DATA_SENDER,
                         scope=self.response_queue_id, principal_id=args.worker_principal_id,
                         principal_type="ServicePrincipal", parent=self)
        else:
            self.worker_task_connection_string = sas(WORKER_LISTEN, "tasks", "Listen")
            self.worker_response_connection_string = sas(WORKER_SEND, "responses", "Send")

        if identity and args.site_principal_id:
            roles.assign(f"{name}-site-send-tasks", role=roles.SERVICE_BUS_DATA_SENDER,
                         scope=self.task_queue_id, principal_id=args.site_principal_id,
                         principal_type=args.site_principal_type, parent=self)
            roles.assign(f"{name}-site-receive-responses", role=roles.SERVICE_BUS_DATA_RECEIVER,
                         scope=self.response_queue_id, principal_id=args.site_principal_id,
                         principal_type=args.site_principal_type, parent=self)
        elif not cfg.disable_local_auth:
            self.site_task_connection_string = sas(SITE_SEND, "tasks", "Send")
            self.site_response_connection_string = sas(SITE_LISTEN, "responses", "Listen")

        self.register_outputs({
            "namespace_name": self.namespace_name,
            "task_queue_name": self.task_queue_name,
            "response_queue_name": self.response_queue_name,
        })

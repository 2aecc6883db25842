"""CompetitionStorage: the storage account and containers for bundles, logs and outputs.

HTTPS only, TLS 1.2 or later, no anonymous blob access, a firewall that denies everything except the
workers' subnet (service endpoint) and the site's listed addresses. Logs and outputs expire after a
configured age. The site signs per-task SAS URLs: as user-delegation SAS from its own identity
(``auth: managed_identity`` with ``site.principal_id``; shared keys are then disabled) or with the
account key (any other setup; the connection string is a secret output).
Workers never hold storage credentials: they only use the per-task SAS URLs inside each task.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
from pulumi_azure_native import storage

from infra import roles
from infra.naming import competition_containers, storage_account_name
from worker.stackconfig import StorageConfig


@dataclass
class CompetitionStorageArgs:
    competition: str
    resource_group_name: pulumi.Input[str]
    config: StorageConfig
    auth: str = "connection_string"
    location: pulumi.Input[str] | None = None
    naming_salt: str = ""
    worker_subnet_id: pulumi.Input[str] | None = None  # allowed through the firewall
    site_principal_id: str | None = None
    site_principal_type: str = "ServicePrincipal"
    tags: dict[str, str] = field(default_factory=dict)


class CompetitionStorage(pulumi.ComponentResource):
    account_name: pulumi.Output[str]
    account_id: pulumi.Output[str]
    blob_endpoint: pulumi.Output[str]
    containers: dict[str, str]  # kind (bundles, logs, outputs) -> container name
    site_connection_string: pulumi.Output[str] | None = None  # secret; None with identities

    def __init__(self, name: str, args: CompetitionStorageArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("compute-pools:infra:CompetitionStorage", name, None, opts)
        cfg = args.config
        child = pulumi.ResourceOptions(parent=self)
        # The site signs user-delegation SAS when it has an identity here; otherwise with the account key.
        site_identity = args.auth == "managed_identity" and args.site_principal_id is not None
        account_name = cfg.account_name or storage_account_name(args.competition, args.naming_salt)

        virtual_network_rules = []
        if args.worker_subnet_id is not None:
            virtual_network_rules.append({"virtual_network_resource_id": args.worker_subnet_id, "action": "Allow"})
        account = storage.StorageAccount(
            f"{name}-account",
            account_name=account_name,
            resource_group_name=args.resource_group_name,
            location=args.location,
            kind="StorageV2",
            sku={"name": cfg.sku},
            enable_https_traffic_only=True,
            minimum_tls_version="TLS1_2",
            allow_blob_public_access=False,
            allow_cross_tenant_replication=False,
            allow_shared_key_access=not site_identity,  # nobody needs the account key then
            default_to_o_auth_authentication=site_identity,
            network_rule_set={
                "default_action": "Deny",
                "bypass": "None",
                "ip_rules": [{"i_p_address_or_range": r, "action": "Allow"} for r in cfg.allowed_ip_ranges],
                "virtual_network_rules": virtual_network_rules,
            },
            tags=args.tags,
            opts=child,
        )
        self.account_name = account.name
        self.account_id = account.id
        self.blob_endpoint = account.primary_endpoints.apply(lambda e: e.blob if e else None)

        self.containers = competition_containers(args.competition)
        container_resources = {}
        for kind, container in self.containers.items():
            container_resources[kind] = storage.BlobContainer(
                f"{name}-{kind}",
                container_name=container,
                account_name=account.name,
                resource_group_name=args.resource_group_name,
                public_access="None",
                opts=child,
            )

        rules = []
        for kind, days in (("logs", cfg.logs_retention_days), ("outputs", cfg.outputs_retention_days)):
            rules.append({
                "name": f"expire-{kind}",
                "enabled": True,
                "type": "Lifecycle",
                "definition": {
                    "filters": {"blob_types": ["blockBlob", "appendBlob"],
                                "prefix_match": [f"{self.containers[kind]}/"]},
                    "actions": {"base_blob": {"delete": {"days_after_modification_greater_than": days}}},
                },
            })
        storage.ManagementPolicy(
            f"{name}-lifecycle",
            management_policy_name="default",  # the only name Azure accepts
            account_name=account.name,
            resource_group_name=args.resource_group_name,
            policy={"rules": rules},
            opts=child,
        )

        if site_identity:
            # Read/write blobs of this competition's containers only, and get user delegation keys.
            for kind, container in container_resources.items():
                roles.assign(f"{name}-site-blobs-{kind}", role=roles.STORAGE_BLOB_DATA_CONTRIBUTOR,
                             scope=container.id, principal_id=args.site_principal_id,
                             principal_type=args.site_principal_type, parent=self)
            roles.assign(f"{name}-site-delegator", role=roles.STORAGE_BLOB_DELEGATOR, scope=account.id,
                         principal_id=args.site_principal_id, principal_type=args.site_principal_type,
                         parent=self)
        else:
            keys = storage.list_storage_account_keys_output(account_name=account.name,
                                                            resource_group_name=args.resource_group_name)
            self.site_connection_string = pulumi.Output.secret(pulumi.Output.all(account.name, keys.keys).apply(
                lambda a: "DefaultEndpointsProtocol=https;AccountName={};AccountKey={};EndpointSuffix="
                          "core.windows.net".format(a[0], a[1][0]["value"])))

        self.register_outputs({"account_name": self.account_name, "containers": self.containers})

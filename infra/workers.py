"""WorkerPool: an autoscaled VM scale set of workers for one competition.

- Network: a private subnet with no inbound access (an NSG that denies everything except, when
  configured, SSH or WinRM over HTTPS from one range), outbound through a NAT gateway, and a
  Microsoft.Storage service endpoint so the storage firewall can admit the workers and nobody else.
- Identity: the user-assigned identity created by the program (queue-scoped roles with
  ``auth: managed_identity``; no other rights).
- Custom data: the agent config in exactly the agent's format (see custom_data.py).
- Autoscale (Microsoft.Insights autoscale settings) on the task queue's ActiveMessages: scale out on
  tasks per instance, wake from zero when a task arrives, scale in one instance at a time only after
  the queue has been empty for a while; Azure announces every removal as a scheduled event and waits
  the termination notice so a worker can finish or hand back its task.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
from pulumi_azure_native import compute, monitor, network

from infra import custom_data
from infra.naming import computer_name_prefix
from worker.stackconfig import HEALTH_PORT, WorkersConfig, iso_duration

SERVICE_BUS_METRICS = "Microsoft.ServiceBus/namespaces"
REMOTE_PORTS = {"linux": "22", "windows": "5986"}  # SSH / WinRM over HTTPS


@dataclass
class WorkerPoolArgs:
    competition: str
    resource_group_name: pulumi.Input[str]
    config: WorkersConfig
    identity_id: pulumi.Input[str]
    queue_access: pulumi.Output[custom_data.QueueAccess]  # may hold secrets: rendered inside apply
    namespace_id: pulumi.Input[str]  # where the task queue's metrics live
    task_queue_name: str
    location: pulumi.Input[str] | None = None
    admin_password: pulumi.Input[str] | None = None  # Windows only
    tags: dict[str, str] = field(default_factory=dict)


class WorkerPool(pulumi.ComponentResource):
    scale_set_name: pulumi.Output[str]
    scale_set_id: pulumi.Output[str]
    subnet_id: pulumi.Output[str]
    outbound_ip: pulumi.Output[str]
    autoscale_setting_id: pulumi.Output[str]

    def __init__(self, name: str, args: WorkerPoolArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("compute-pools:infra:WorkerPool", name, None, opts)
        cfg = args.config
        if cfg.os == "windows" and args.admin_password is None:
            raise ValueError("a Windows pool needs an admin password (pool:admin_password, a secret)")
        child = pulumi.ResourceOptions(parent=self)
        common = {"resource_group_name": args.resource_group_name, "location": args.location}
        prefix = computer_name_prefix(args.competition, cfg.os)

        subnet = self._network(name, args, common, child)
        self.subnet_id = subnet.id

        agent_config = args.queue_access.apply(
            lambda access: custom_data.build_agent_config(args.competition, cfg.os, access, cfg.agent))
        if cfg.os == "linux":
            rendered = agent_config.apply(lambda c: custom_data.encode(custom_data.linux_cloud_init(
                c, config_path=cfg.resolved_agent_config_path, service=cfg.agent_service,
                install=cfg.install if cfg.uses_install_playbook else None)))
            os_profile = {
                "computer_name_prefix": prefix,
                "admin_username": cfg.admin_username,
                "linux_configuration": {
                    "disable_password_authentication": True,
                    "ssh": {"public_keys": [{"path": f"/home/{cfg.admin_username}/.ssh/authorized_keys",
                                             "key_data": cfg.ssh_public_key}]},
                    "provision_vm_agent": True,
                },
            }
            extensions: list[dict] = []
        else:
            rendered = agent_config.apply(lambda c: custom_data.encode(custom_data.windows_custom_data(c)))
            os_profile = {
                "computer_name_prefix": prefix,
                "admin_username": cfg.admin_username,
                "admin_password": pulumi.Output.secret(args.admin_password),
                "windows_configuration": {"provision_vm_agent": True, "enable_automatic_updates": True},
            }
            extensions = [{
                "name": "pool-agent-config",
                "publisher": "Microsoft.Compute",
                "type": "CustomScriptExtension",
                "type_handler_version": "1.10",
                "auto_upgrade_minor_version": True,
                # protected settings are encrypted and never returned by the API
                "protected_settings": {"commandToExecute": custom_data.windows_setup_command(
                    cfg.resolved_agent_config_path, cfg.agent_service)},
            }]
        os_profile["custom_data"] = pulumi.Output.secret(rendered)

        image = cfg.image
        image_reference = ({"id": image} if isinstance(image, str) else
                           {"publisher": image.publisher, "offer": image.offer, "sku": image.sku,
                            "version": image.version})
        os_disk: dict = {"create_option": "FromImage", "caching": "ReadWrite",
                         "managed_disk": {"storage_account_type": "StandardSSD_LRS"}}
        if cfg.os_disk_size_gb:
            os_disk["disk_size_gb"] = cfg.os_disk_size_gb

        ip_configuration: dict = {"name": "ipconfig", "primary": True, "subnet": {"id": subnet.id}}
        if cfg.remote_access_cidr:
            ip_configuration["public_ip_address_configuration"] = {
                "name": "remote-access", "idle_timeout_in_minutes": 15, "sku": {"name": "Standard"}}

        vm_profile: dict = {
            "os_profile": os_profile,
            "storage_profile": {"image_reference": image_reference, "os_disk": os_disk},
            "network_profile": {"network_interface_configurations": [{
                "name": "nic", "primary": True, "ip_configurations": [ip_configuration]}]},
            # Scale-in and eviction are announced this long in advance (see termination_watch.py).
            "scheduled_events_profile": {"terminate_notification_profile": {
                "enable": True, "not_before_timeout": iso_duration(cfg.termination_notice)}},
        }
        upgrade = cfg.upgrade
        if upgrade.mode == "Rolling":
            # Rolling upgrades need a health signal; the extension reports the VM healthy once the
            # port answers (see UpgradeConfig).
            linux = cfg.os == "linux"
            extensions.append({
                "name": "pool-health",
                "publisher": "Microsoft.ManagedServices",
                "type": "ApplicationHealthLinux" if linux else "ApplicationHealthWindows",
                "type_handler_version": "1.0",
                "auto_upgrade_minor_version": True,
                "settings": {"protocol": "tcp", "port": upgrade.health_port or HEALTH_PORT[cfg.os]},
            })
        if extensions:
            vm_profile["extension_profile"] = {"extensions": extensions}
        if cfg.spot:
            vm_profile.update(priority="Spot", eviction_policy="Delete",
                              billing_profile={"max_price": cfg.spot_max_price})

        scale_set = compute.VirtualMachineScaleSet(
            f"{name}-vmss",
            vm_scale_set_name=f"vmss-{prefix}",
            sku={"name": cfg.vm_size, "tier": "Standard", "capacity": cfg.min_instances},
            identity={"type": "UserAssigned", "user_assigned_identities": [args.identity_id]},
            orchestration_mode="Uniform",
            # Overprovisioned extra VMs would boot agents that take tasks and are then deleted.
            overprovision=False,
            upgrade_policy=upgrade_policy(cfg),
            single_placement_group=cfg.max_instances <= 100,
            scale_in_policy={"rules": ["Default"], "force_deletion": False},
            virtual_machine_profile=vm_profile,
            tags=args.tags,
            **common,
            # Autoscale owns the capacity after creation.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["sku.capacity"]),
        )
        self.scale_set_name = scale_set.name
        self.scale_set_id = scale_set.id

        autoscale = monitor.AutoscaleSetting(
            f"{name}-autoscale",
            autoscale_setting_name=f"autoscale-{prefix}",
            target_resource_uri=scale_set.id,
            enabled=True,
            profiles=[{
                "name": "task-queue",
                "capacity": {"minimum": str(cfg.min_instances), "maximum": str(cfg.max_instances),
                             "default": str(cfg.min_instances)},
                "rules": autoscale_rules(cfg, args.namespace_id, args.task_queue_name),
            }],
            tags=args.tags,
            **common,
            opts=child,
        )
        self.autoscale_setting_id = autoscale.id
        self.register_outputs({"scale_set_name": self.scale_set_name, "subnet_id": self.subnet_id})

    def _network(self, name: str, args: WorkerPoolArgs, common: dict, child: pulumi.ResourceOptions):
        cfg = args.config
        rules = []
        if cfg.remote_access_cidr:
            rules.append({
                "name": "allow-remote-admin", "priority": 100, "direction": "Inbound", "access": "Allow",
                "protocol": "Tcp", "source_address_prefix": cfg.remote_access_cidr, "source_port_range": "*",
                "destination_address_prefix": "*", "destination_port_range": REMOTE_PORTS[cfg.os],
            })
        rules.append({
            "name": "deny-all-inbound", "priority": 4096, "direction": "Inbound", "access": "Deny",
            "protocol": "*", "source_address_prefix": "*", "source_port_range": "*",
            "destination_address_prefix": "*", "destination_port_range": "*",
        })
        nsg = network.NetworkSecurityGroup(f"{name}-nsg", security_rules=rules, tags=args.tags,
                                           **common, opts=child)
        outbound_ip = network.PublicIPAddress(
            f"{name}-outbound-ip", sku={"name": "Standard"}, public_ip_allocation_method="Static",
            tags=args.tags, **common, opts=child)
        self.outbound_ip = outbound_ip.ip_address
        nat = network.NatGateway(f"{name}-nat", sku={"name": "Standard"},
                                 public_ip_addresses=[{"id": outbound_ip.id}], idle_timeout_in_minutes=10,
                                 tags=args.tags, **common, opts=child)
        vnet = network.VirtualNetwork(f"{name}-vnet", address_space={"address_prefixes": [cfg.address_space]},
                                      tags=args.tags, **common, opts=child)
        return network.Subnet(
            f"{name}-subnet",
            subnet_name="workers",
            virtual_network_name=vnet.name,
            resource_group_name=args.resource_group_name,
            address_prefix=cfg.subnet_prefix,
            network_security_group={"id": nsg.id},
            nat_gateway={"id": nat.id},
            service_endpoints=[{"service": "Microsoft.Storage"}],
            default_outbound_access=False,
            opts=child,
        )


def upgrade_policy(cfg: WorkersConfig) -> dict:
    """The scale set's upgrade policy (see settings.UpgradeConfig for how a roll drains workers)."""
    upgrade = cfg.upgrade
    if upgrade.mode == "Manual":
        return {"mode": "Manual"}
    return {"mode": "Rolling", "rolling_upgrade_policy": {
        "max_surge": upgrade.max_surge,
        "max_batch_instance_percent": upgrade.max_batch_instance_percent,
        "max_unhealthy_instance_percent": upgrade.max_unhealthy_instance_percent,
        "max_unhealthy_upgraded_instance_percent": upgrade.max_unhealthy_upgraded_instance_percent,
        "pause_time_between_batches": iso_duration(upgrade.pause_time_between_batches),
        # Old instances are deleted (never reimaged in place): each deletion is a Terminate event.
        "rollback_failed_instances_on_policy_breach": True,
    }}


def _queue_metric(namespace_id: pulumi.Input[str], task_queue: str, *, window: str, aggregation: str,
                  operator: str, threshold: float, per_instance: bool) -> dict:
    return {
        "metric_name": "ActiveMessages",
        "metric_namespace": SERVICE_BUS_METRICS,
        "metric_resource_uri": namespace_id,
        "dimensions": [{"dimension_name": "EntityName", "operator": "Equals", "values": [task_queue]}],
        "time_grain": "PT1M",
        "statistic": "Average" if aggregation == "Average" else "Max",
        "time_window": window,
        "time_aggregation": aggregation,
        "operator": operator,
        "threshold": threshold,
        "divide_per_instance": per_instance,
    }


def autoscale_rules(cfg: WorkersConfig, namespace_id: pulumi.Input[str], task_queue: str) -> list[dict]:
    """ActiveMessages counts tasks waiting and tasks being run (a locked message stays active until the
    worker completes it), so ``ActiveMessages / instances`` is the load per worker."""
    return [
        {   # More tasks per worker than it can run: add `scale_out_step` instances.
            "metric_trigger": _queue_metric(namespace_id, task_queue, window="PT5M", aggregation="Average",
                                            operator="GreaterThan", threshold=cfg.messages_per_instance,
                                            per_instance=True),
            "scale_action": {"direction": "Increase", "type": "ChangeCount", "value": str(cfg.scale_out_step),
                             "cooldown": iso_duration(cfg.scale_out_cooldown)},
        },
        {   # Wake from zero: any task at all means at least one instance.
            "metric_trigger": _queue_metric(namespace_id, task_queue, window="PT5M", aggregation="Maximum",
                                            operator="GreaterThan", threshold=0, per_instance=False),
            "scale_action": {"direction": "Increase", "type": "ExactCount", "value": "1", "cooldown": "PT1M"},
        },
        {   # Slow scale-in: one instance at a time, only once no task has waited or run for a while,
            # so no busy worker is chosen; down to zero when idle.
            "metric_trigger": _queue_metric(namespace_id, task_queue, window=iso_duration(cfg.scale_in_idle),
                                            aggregation="Maximum", operator="LessThanOrEqual", threshold=0,
                                            per_instance=False),
            "scale_action": {"direction": "Decrease", "type": "ChangeCount", "value": "1",
                             "cooldown": iso_duration(cfg.scale_in_cooldown)},
        },
    ]

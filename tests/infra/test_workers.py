"""WorkerPool under Pulumi's mocks: custom data in the agent's format, network, identity, autoscale."""

from __future__ import annotations

import base64
import re

import pytest
import yaml

from infra.custom_data import BOOTSTRAP_DIR, WATCHER_PATH
from tests.infra.conftest import (
    GALLERY,
    REPO,
    cloud_init,
    is_secret,
    linux_config,
    reveal,
    windows_config,
    written_file,
)
from worker.config import load_agent_config, parse_agent_config

LINUX_GALLERY = GALLERY.replace("windows", "linux")


def _vmss(d):
    return d.one("compute:VirtualMachineScaleSet")


def test_linux_custom_data_is_the_agents_config_with_worker_keys(run_stack, tmp_path):
    d = run_stack(linux_config(workers={"agent": {"execution": {"limits": {"memory_bytes": "2GiB"}},
                                                  "heartbeat_interval_s": 5}}))
    vmss = _vmss(d)
    assert is_secret(vmss.inputs["virtualMachineProfile"])  # custom data holds keys: never in plain text
    document = cloud_init(vmss.inputs)
    text = written_file(document, "/etc/pool-agent/agent.yaml")
    entry = next(f for f in document["write_files"] if f["path"] == "/etc/pool-agent/agent.yaml")
    assert entry["permissions"] == "0600" and entry["owner"] == "root:root"
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    config = load_agent_config(path)  # the agent's own loader
    sb = config.servicebus
    assert (sb.auth.value, sb.task_queue, sb.response_queue) == ("connection_string", "demo-tasks", "demo-responses")
    assert "SharedAccessKeyName=worker-listen" in sb.task_queue_connection_string
    assert sb.task_queue_connection_string.endswith("EntityPath=demo-tasks")
    assert "SharedAccessKeyName=worker-send" in sb.response_queue_connection_string
    assert sb.response_queue_connection_string.endswith("EntityPath=demo-responses")
    assert config.pool == "demo" and config.execution.driver == "bwrap"
    assert config.execution.limits.memory_bytes == 2 * 1024**3 and config.heartbeat_interval_s == 5
    assert "site-" not in text  # the site's keys never reach a worker


def test_linux_marketplace_image_runs_the_install_playbook(run_stack):
    d = run_stack(linux_config(workers={"install": {"ref": "v1.2", "extra_vars": {"worker_agent_gpus": True}}}))
    vmss = reveal(_vmss(d).inputs)
    image = vmss["virtualMachineProfile"]["storageProfile"]["imageReference"]
    assert (image["publisher"], image["offer"], image["sku"], image["version"]) == (
        "Debian", "debian-12", "12-gen2", "latest")
    document = cloud_init(_vmss(d).inputs)
    script = written_file(document, f"{BOOTSTRAP_DIR}/first-boot.sh")
    assert f"git clone --depth 1 --branch v1.2 {REPO} src" in script
    assert "cd src/playbooks\n" in script  # its ansible.cfg applies
    assert (f"{BOOTSTRAP_DIR}/venv/bin/ansible-playbook -i {BOOTSTRAP_DIR}/inventory.ini install-worker.yml "
            f"-e @{BOOTSTRAP_DIR}/vars.json") in script
    assert script.index("ansible-playbook") < script.index("systemctl restart pool-agent")
    assert "chown pool-agent:pool-agent /etc/pool-agent/agent.yaml" in script
    extra = yaml.safe_load(written_file(document, f"{BOOTSTRAP_DIR}/vars.json"))
    assert extra["worker_agent_gpus"] is True and extra["worker_agent_config_path"] == "/etc/pool-agent/agent.yaml"
    assert document["runcmd"] == [[f"{BOOTSTRAP_DIR}/first-boot.sh"]]
    assert "git" in document["packages"]


def test_linux_gallery_image_only_restarts_the_agent(run_stack):
    d = run_stack(linux_config(workers={"gallery_image_id": LINUX_GALLERY}))
    vmss = reveal(_vmss(d).inputs)
    assert vmss["virtualMachineProfile"]["storageProfile"]["imageReference"] == {"id": LINUX_GALLERY}
    document = cloud_init(_vmss(d).inputs)
    script = written_file(document, f"{BOOTSTRAP_DIR}/first-boot.sh")
    assert "git clone" not in script and "ansible" not in script
    assert "systemctl restart pool-agent" in script
    assert "packages" not in document


def test_termination_watcher_is_installed(run_stack):
    document = cloud_init(_vmss(run_stack(linux_config())).inputs)
    assert "def check_once" in written_file(document, WATCHER_PATH)
    unit = written_file(document, "/etc/systemd/system/pool-termination-watch.service")
    assert "--stop-command 'systemctl stop pool-agent'" in unit
    assert "systemctl enable --now pool-termination-watch.service" in written_file(
        document, f"{BOOTSTRAP_DIR}/first-boot.sh")


def test_managed_identity_agent_config_has_no_keys(run_stack):
    d = run_stack(linux_config(auth="managed_identity"))
    document = cloud_init(_vmss(d).inputs)
    config = parse_agent_config(yaml.safe_load(written_file(document, "/etc/pool-agent/agent.yaml")))
    sb = config.servicebus
    assert sb.auth.value == "managed_identity"
    assert sb.fully_qualified_namespace == d.outputs["fully_qualified_namespace"]
    assert sb.managed_identity_client_id == "bbbbbbbb-0000-0000-0000-000000000002"
    assert sb.task_queue_connection_string is None and sb.response_queue_connection_string is None
    vmss = reveal(_vmss(d).inputs)
    identity_id = d.one("managedidentity:UserAssignedIdentity").id
    assert vmss["identity"] == {"type": "UserAssigned", "userAssignedIdentities": [identity_id]}


def test_linux_login_is_key_only(run_stack):
    profile = reveal(_vmss(run_stack(linux_config())).inputs)["virtualMachineProfile"]["osProfile"]
    assert profile["linuxConfiguration"]["disablePasswordAuthentication"] is True
    assert profile["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"].startswith("ssh-ed25519 ")
    assert "adminPassword" not in profile
    assert profile["computerNamePrefix"] == "w-demo"


def test_windows_pool(run_stack):
    d = run_stack(windows_config(), admin_password="S3cret-Passw0rd!")
    vmss = _vmss(d)
    assert is_secret(vmss.inputs["virtualMachineProfile"])
    profile = reveal(vmss.inputs)["virtualMachineProfile"]
    os_profile = profile["osProfile"]
    assert os_profile["adminPassword"] == "S3cret-Passw0rd!"
    assert len(os_profile["computerNamePrefix"]) <= 9 and "linuxConfiguration" not in os_profile
    assert profile["storageProfile"]["imageReference"] == {"id": GALLERY}
    config = parse_agent_config(yaml.safe_load(base64.b64decode(os_profile["customData"]).decode()))
    assert config.execution.driver == "jobobject"
    assert str(config.work_dir) == r"C:\ProgramData\pool-agent\work"
    assert config.servicebus.task_queue == "demo-win-tasks"
    ext = next(e for e in profile["extensionProfile"]["extensions"] if e["name"] == "pool-agent-config")
    assert ext["type"] == "CustomScriptExtension" and ext["publisher"] == "Microsoft.Compute"
    command = ext["protectedSettings"]["commandToExecute"]
    assert r"C:\AzureData\CustomData.bin" in command and r"C:\ProgramData\pool-agent\agent.yaml" in command
    assert "Restart-Service -Name 'pool-agent'" in command and "/inheritance:r" in command
    assert len(reveal(vmss.inputs)["vmScaleSetName"]) <= 15


def test_windows_needs_a_password():
    from infra.program import build
    from tests.infra.harness import deploy
    from worker.stackconfig import parse_stack_config

    with pytest.raises(Exception, match="admin password"):
        deploy(build, parse_stack_config(windows_config()), location="westeurope")


def test_no_inbound_access_by_default(run_stack):
    d = run_stack(linux_config())
    rules = d.one("network:NetworkSecurityGroup").inputs["securityRules"]
    assert [r for r in rules if r["access"] == "Allow"] == []
    assert any(r["access"] == "Deny" and r["direction"] == "Inbound" and r["sourceAddressPrefix"] == "*"
               for r in rules)
    nic = reveal(_vmss(d).inputs)["virtualMachineProfile"]["networkProfile"]["networkInterfaceConfigurations"][0]
    assert "publicIPAddressConfiguration" not in nic["ipConfigurations"][0]
    subnet = d.one("network:Subnet").inputs
    assert subnet["networkSecurityGroup"] == {"id": d.one("network:NetworkSecurityGroup").id}
    assert subnet["natGateway"] == {"id": d.one("network:NatGateway").id}  # outbound only
    assert subnet["defaultOutboundAccess"] is False


@pytest.mark.parametrize("make, port", [(linux_config, "22"), (windows_config, "5986")])
def test_remote_access_only_from_the_configured_range(run_stack, make, port):
    d = run_stack(make(workers={"remote_access_cidr": "198.51.100.0/28"}), admin_password="S3cret-Passw0rd!")
    rules = d.one("network:NetworkSecurityGroup").inputs["securityRules"]
    [allow] = [r for r in rules if r["access"] == "Allow"]
    assert (allow["direction"], allow["protocol"], allow["sourceAddressPrefix"], allow["destinationPortRange"]) == (
        "Inbound", "Tcp", "198.51.100.0/28", port)
    assert allow["priority"] < min(r["priority"] for r in rules if r["access"] == "Deny")
    nic = reveal(_vmss(d).inputs)["virtualMachineProfile"]["networkProfile"]["networkInterfaceConfigurations"][0]
    assert nic["ipConfigurations"][0]["publicIPAddressConfiguration"]["sku"] == {"name": "Standard"}


def test_spot_option(run_stack):
    profile = reveal(_vmss(run_stack(linux_config(workers={"spot": True, "spot_max_price": 0.05}))).inputs)[
        "virtualMachineProfile"]
    assert (profile["priority"], profile["evictionPolicy"], profile["billingProfile"]) == (
        "Spot", "Delete", {"maxPrice": 0.05})
    regular = reveal(_vmss(run_stack(linux_config())).inputs)["virtualMachineProfile"]
    assert "priority" not in regular


def test_scale_set_drains_gracefully(run_stack):
    vmss = reveal(_vmss(run_stack(linux_config(workers={"termination_notice": "PT15M"}))).inputs)
    assert vmss["overprovision"] is False
    assert vmss["scaleInPolicy"] == {"rules": ["Default"], "forceDeletion": False}
    assert vmss["virtualMachineProfile"]["scheduledEventsProfile"] == {
        "terminateNotificationProfile": {"enable": True, "notBeforeTimeout": "PT15M"}}
    assert vmss["sku"]["capacity"] == 0 and vmss["upgradePolicy"]["mode"] == "Rolling"


def test_autoscale_on_task_queue_depth(run_stack):
    d = run_stack(linux_config(workers={"min_instances": 0, "max_instances": 12, "messages_per_instance": 2,
                                        "scale_out_step": 3, "scale_out_cooldown": "PT4M",
                                        "scale_in_idle": "PT20M", "scale_in_cooldown": "PT12M"}))
    setting = d.one("monitor:AutoscaleSetting").inputs
    assert setting["targetResourceUri"] == _vmss(d).id and setting["enabled"] is True
    [profile] = setting["profiles"]
    assert profile["capacity"] == {"minimum": "0", "maximum": "12", "default": "0"}
    namespace = d.one("servicebus:Namespace").id
    for rule in profile["rules"]:
        metric = rule["metricTrigger"]
        assert metric["metricName"] == "ActiveMessages"
        assert metric["metricNamespace"] == "Microsoft.ServiceBus/namespaces"
        assert metric["metricResourceUri"] == namespace
        assert metric["dimensions"] == [{"dimensionName": "EntityName", "operator": "Equals", "values": ["demo-tasks"]}]
    out, wake, scale_in = profile["rules"]
    assert out["metricTrigger"]["dividePerInstance"] is True
    assert (out["metricTrigger"]["operator"], out["metricTrigger"]["threshold"]) == ("GreaterThan", 2)
    assert out["scaleAction"] == {"direction": "Increase", "type": "ChangeCount", "value": "3", "cooldown": "PT4M"}
    assert wake["metricTrigger"]["dividePerInstance"] is False
    assert (wake["metricTrigger"]["operator"], wake["metricTrigger"]["threshold"]) == ("GreaterThan", 0)
    assert wake["scaleAction"]["direction"] == "Increase" and wake["scaleAction"]["value"] == "1"
    trigger = scale_in["metricTrigger"]
    assert (trigger["operator"], trigger["threshold"], trigger["timeAggregation"], trigger["timeWindow"]) == (
        "LessThanOrEqual", 0, "Maximum", "PT20M")
    assert scale_in["scaleAction"] == {"direction": "Decrease", "type": "ChangeCount", "value": "1",
                                       "cooldown": "PT12M"}


def test_min_instances_is_the_floor(run_stack):
    d = run_stack(linux_config(workers={"min_instances": 2, "max_instances": 2}))
    assert d.one("monitor:AutoscaleSetting").inputs["profiles"][0]["capacity"] == {
        "minimum": "2", "maximum": "2", "default": "2"}
    assert reveal(_vmss(d).inputs)["sku"]["capacity"] == 2


@pytest.mark.parametrize("workers", [{}, {"gallery_image_id": LINUX_GALLERY}], ids=["marketplace", "gallery"])
def test_first_boot_script_is_valid_bash(run_stack, tmp_path, workers):
    import subprocess

    document = cloud_init(_vmss(run_stack(linux_config(workers=workers))).inputs)
    script = tmp_path / "first-boot.sh"
    script.write_text(written_file(document, f"{BOOTSTRAP_DIR}/first-boot.sh"))
    result = subprocess.run(["bash", "-n", str(script)], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_custom_data_size_is_checked():
    from infra.custom_data import encode

    assert base64.b64decode(encode("x" * 1000)) == b"x" * 1000
    with pytest.raises(ValueError, match="Azure allows 65535"):
        encode("x" * 60000)


# --- image roll (upgrade policy) --------------------------------------------------------------------
def test_default_upgrade_is_a_rolling_roll_with_surge_and_a_health_signal(run_stack):
    vmss = reveal(_vmss(run_stack(linux_config())).inputs)
    policy = vmss["upgradePolicy"]
    assert policy["mode"] == "Rolling"
    rolling = policy["rollingUpgradePolicy"]
    # New instances first, then the old ones are deleted: every deletion is a Terminate event, which
    # the termination watcher turns into a drained agent (task finished or handed back).
    assert rolling["maxSurge"] is True and rolling["maxBatchInstancePercent"] == 20
    assert rolling["pauseTimeBetweenBatches"] == "PT2M"
    notice = vmss["virtualMachineProfile"]["scheduledEventsProfile"]["terminateNotificationProfile"]
    assert notice == {"enable": True, "notBeforeTimeout": "PT10M"}
    document = cloud_init(_vmss(run_stack(linux_config())).inputs)
    assert "systemctl enable --now pool-termination-watch.service" in written_file(
        document, f"{BOOTSTRAP_DIR}/first-boot.sh")
    health = next(e for e in vmss["virtualMachineProfile"]["extensionProfile"]["extensions"]
                  if e["name"] == "pool-health")
    assert health["type"] == "ApplicationHealthLinux" and health["settings"] == {"protocol": "tcp", "port": 22}


def test_windows_roll_uses_the_windows_health_extension(run_stack):
    vmss = reveal(_vmss(run_stack(windows_config(workers={"upgrade": {"health_port": 5986}}),
                                  admin_password="S3cret!pass")).inputs)
    names = {e["name"]: e for e in vmss["virtualMachineProfile"]["extensionProfile"]["extensions"]}
    assert set(names) == {"pool-agent-config", "pool-health"}
    assert names["pool-health"]["type"] == "ApplicationHealthWindows"
    assert names["pool-health"]["settings"]["port"] == 5986


def test_manual_upgrade_has_no_rolling_policy_and_no_health_extension(run_stack):
    vmss = reveal(_vmss(run_stack(linux_config(workers={"upgrade": {"mode": "Manual"}}))).inputs)
    assert vmss["upgradePolicy"] == {"mode": "Manual"}
    assert "extensionProfile" not in vmss["virtualMachineProfile"]


@pytest.mark.parametrize("upgrade, message", [
    ({"mode": "Automatic"}, "pool:workers.upgrade.mode"),
    ({"max_batch_instance_percent": 1}, "pool:workers.upgrade.max_batch_instance_percent"),
    ({"pause_time_between_batches": "PT2H"}, "pause_time_between_batches must be between"),
])
def test_bad_upgrade_settings_are_named(upgrade, message):
    from worker.config import ConfigError
    from worker.stackconfig import parse_stack_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_stack_config(linux_config(workers={"upgrade": upgrade}))

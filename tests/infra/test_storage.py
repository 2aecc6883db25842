"""CompetitionStorage under Pulumi's mocks: locked-down account, containers, lifecycle, site access."""

from __future__ import annotations

from infra import roles
from tests.infra.conftest import linux_config

SITE = "11111111-2222-3333-4444-555555555555"


def test_account_is_https_tls12_private_and_firewalled(run_stack):
    d = run_stack(linux_config(storage={"allowed_ip_ranges": ["203.0.113.10", "198.51.100.0/24"]}))
    account = d.one("storage:StorageAccount").inputs
    subnet = d.one("network:Subnet")
    assert account["enableHttpsTrafficOnly"] is True
    assert account["minimumTlsVersion"] == "TLS1_2"
    assert account["allowBlobPublicAccess"] is False
    assert account["allowCrossTenantReplication"] is False
    rules = account["networkRuleSet"]
    assert rules["defaultAction"] == "Deny" and rules["bypass"] == "None"
    assert rules["ipRules"] == [{"iPAddressOrRange": "203.0.113.10", "action": "Allow"},
                                {"iPAddressOrRange": "198.51.100.0/24", "action": "Allow"}]
    assert rules["virtualNetworkRules"] == [{"virtualNetworkResourceId": subnet.id, "action": "Allow"}]
    assert subnet.inputs["serviceEndpoints"] == [{"service": "Microsoft.Storage"}]


def test_containers_are_private_and_named_after_the_competition(run_stack):
    d = run_stack(linux_config())
    containers = {c.inputs["containerName"]: c.inputs for c in d.of_type("storage:BlobContainer")}
    assert set(containers) == {"demo-bundles", "demo-logs", "demo-outputs"}
    account = d.one("storage:StorageAccount").inputs["accountName"]
    for inputs in containers.values():
        assert inputs["publicAccess"] == "None" and inputs["accountName"] == account
    assert d.outputs["containers"] == {"bundles": "demo-bundles", "logs": "demo-logs", "outputs": "demo-outputs"}


def test_lifecycle_expires_logs_and_outputs_only(run_stack):
    d = run_stack(linux_config(storage={"logs_retention_days": 7, "outputs_retention_days": 45}))
    policy = d.one("storage:ManagementPolicy").inputs
    assert policy["managementPolicyName"] == "default"
    rules = {r["name"]: r for r in policy["policy"]["rules"]}
    assert set(rules) == {"expire-logs", "expire-outputs"}
    for name, prefix, days in (("expire-logs", "demo-logs/", 7), ("expire-outputs", "demo-outputs/", 45)):
        rule = rules[name]
        assert rule["enabled"] and rule["type"] == "Lifecycle"
        assert rule["definition"]["filters"] == {"blobTypes": ["blockBlob", "appendBlob"], "prefixMatch": [prefix]}
        assert rule["definition"]["actions"] == {"baseBlob": {"delete": {"daysAfterModificationGreaterThan": days}}}


def test_site_signs_with_account_key_by_default(run_stack):
    d = run_stack(linux_config())
    account = d.one("storage:StorageAccount").inputs
    assert account["allowSharedKeyAccess"] is True
    assert "site_storage_connection_string" in d.secret_outputs
    assert "AccountKey=STORAGEKEY" in d.outputs["site_storage_connection_string"]
    assert not d.of_type("authorization:RoleAssignment")


def test_site_identity_uses_user_delegation_and_keys_are_off(run_stack):
    d = run_stack(linux_config(auth="managed_identity", site={"principal_id": SITE}))
    account = d.one("storage:StorageAccount")
    assert account.inputs["allowSharedKeyAccess"] is False
    assert account.inputs["defaultToOAuthAuthentication"] is True
    container_ids = {c.id for c in d.of_type("storage:BlobContainer")}
    site = [(r.inputs["roleDefinitionId"].rsplit("/", 1)[1], r.inputs["scope"])
            for r in d.of_type("authorization:RoleAssignment") if r.inputs["principalId"] == SITE]
    blob_scopes = {scope for role, scope in site if role == roles.STORAGE_BLOB_DATA_CONTRIBUTOR}
    assert blob_scopes == container_ids  # each container, not the account
    assert [(role, scope) for role, scope in site if role == roles.STORAGE_BLOB_DELEGATOR] == [
        (roles.STORAGE_BLOB_DELEGATOR, account.id)]
    assert "site_storage_connection_string" not in d.outputs
    assert not any(d.calls and t.endswith("listStorageAccountKeys") for t, _ in d.calls)
    # Workers never get storage rights: they use the per-task SAS URLs inside each task.
    worker = "aaaaaaaa-0000-0000-0000-000000000001"
    assert all("storage" not in r.inputs["scope"].lower() for r in d.of_type("authorization:RoleAssignment")
               if r.inputs["principalId"] == worker)


def test_explicit_account_name_is_used(run_stack):
    d = run_stack(linux_config(storage={"account_name": "mypoolstore", "sku": "Standard_ZRS"}))
    account = d.one("storage:StorageAccount").inputs
    assert account["accountName"] == "mypoolstore" and account["sku"] == {"name": "Standard_ZRS"}
    assert account["kind"] == "StorageV2"

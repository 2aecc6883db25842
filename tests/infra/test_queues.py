"""CompetitionQueues under Pulumi's mocks: queue properties, least-privilege SAS rules and roles."""

from __future__ import annotations

from infra import roles
from tests.infra.conftest import linux_config
from tests.infra.harness import SUBSCRIPTION

SITE = "11111111-2222-3333-4444-555555555555"


def test_queues_carry_the_configured_properties(run_stack):
    d = run_stack(linux_config(servicebus={
        "task_queue": {"lock_duration": "PT2M", "max_delivery_count": 3, "default_message_ttl": "P2D",
                       "dead_lettering_on_message_expiration": True, "requires_duplicate_detection": True,
                       "duplicate_detection_history_time_window": "PT30M"},
        "response_queue": {"lock_duration": "PT30S", "max_delivery_count": 20}}))
    tasks, responses = d.one("servicebus:Queue", "queues-tasks"), d.one("servicebus:Queue", "queues-responses")
    ns = d.one("servicebus:Namespace")
    assert tasks.inputs["queueName"] == "demo-tasks" and responses.inputs["queueName"] == "demo-responses"
    assert tasks.inputs["namespaceName"] == ns.inputs["namespaceName"]
    expected_tasks = {"lockDuration": "PT2M", "maxDeliveryCount": 3, "defaultMessageTimeToLive": "P2D",
                      "deadLetteringOnMessageExpiration": True, "requiresDuplicateDetection": True,
                      "duplicateDetectionHistoryTimeWindow": "PT30M"}
    assert {k: tasks.inputs.get(k) for k in expected_tasks} == expected_tasks
    expected_responses = {"lockDuration": "PT30S", "maxDeliveryCount": 20, "defaultMessageTimeToLive": "P14D",
                          "deadLetteringOnMessageExpiration": False, "requiresDuplicateDetection": False}
    assert {k: responses.inputs.get(k) for k in expected_responses} == expected_responses
    assert "duplicateDetectionHistoryTimeWindow" not in responses.inputs
    assert "maxMessageSizeInKilobytes" not in tasks.inputs  # Standard: fixed 256 KB


def test_dedicated_namespace_is_tls12_with_tier(run_stack):
    d = run_stack(linux_config(servicebus={"sku": "Premium", "task_queue": {"max_message_size_kb": 4096}}))
    ns = d.one("servicebus:Namespace")
    assert ns.inputs["minimumTlsVersion"] == "1.2"
    assert ns.inputs["sku"] == {"name": "Premium", "tier": "Premium"}
    assert ns.inputs["disableLocalAuth"] is False
    assert d.one("servicebus:Queue", "queues-tasks").inputs["maxMessageSizeInKilobytes"] == 4096
    assert d.one("servicebus:Queue", "queues-responses").inputs["maxMessageSizeInKilobytes"] == 1024


def test_sas_rules_grant_exactly_listen_or_send_on_one_queue(run_stack):
    d = run_stack(linux_config())
    rules = {r.inputs["authorizationRuleName"]: r.inputs for r in d.of_type("servicebus:QueueAuthorizationRule")}
    assert {name: (i["queueName"], i["rights"]) for name, i in rules.items()} == {
        "worker-listen": ("demo-tasks", ["Listen"]),
        "worker-send": ("demo-responses", ["Send"]),
        "site-send": ("demo-tasks", ["Send"]),
        "site-listen": ("demo-responses", ["Listen"]),
    }
    assert not any("Manage" in i["rights"] for i in rules.values())
    assert not d.of_type("servicebus:NamespaceAuthorizationRule")  # nothing namespace-wide
    assert not d.of_type("authorization:RoleAssignment")
    # The keys read back are those of the rules just created (not a namespace key).
    listed = {(c["authorizationRuleName"], c["queueName"]) for t, c in d.calls if t.endswith("listQueueKeys")}
    assert listed == {("worker-listen", "demo-tasks"), ("worker-send", "demo-responses"),
                      ("site-send", "demo-tasks"), ("site-listen", "demo-responses")}


def _assignments(d):
    out = {}
    for r in d.of_type("authorization:RoleAssignment"):
        role = r.inputs["roleDefinitionId"].rsplit("/", 1)[1]
        out.setdefault(r.inputs["principalId"], []).append((role, r.inputs["scope"]))
        assert r.inputs["roleDefinitionId"] == (f"/subscriptions/{SUBSCRIPTION}/providers/"
                                                f"Microsoft.Authorization/roleDefinitions/{role}")
    return out


def test_managed_identity_gets_queue_scoped_roles_and_no_keys(run_stack):
    d = run_stack(linux_config(auth="managed_identity"))
    identity = d.one("managedidentity:UserAssignedIdentity")
    tasks, responses = d.one("servicebus:Queue", "queues-tasks"), d.one("servicebus:Queue", "queues-responses")
    namespace = d.one("servicebus:Namespace")
    worker_roles = _assignments(d)["aaaaaaaa-0000-0000-0000-000000000001"]
    assert sorted(worker_roles) == sorted([(roles.SERVICE_BUS_DATA_RECEIVER, tasks.id),
                                           (roles.SERVICE_BUS_DATA_SENDER, responses.id)])
    assert all(scope != namespace.id for _, scope in worker_roles)
    assert all(r.inputs["principalType"] == "ServicePrincipal" for r in d.of_type("authorization:RoleAssignment"))
    names = {r.inputs["authorizationRuleName"] for r in d.of_type("servicebus:QueueAuthorizationRule")}
    assert names == {"site-send", "site-listen"}  # no site identity given: the site keeps queue keys
    assert identity.inputs["resourceName"] == "id-pool-demo"


def test_site_identity_gets_the_mirror_roles_and_local_auth_can_be_off(run_stack):
    d = run_stack(linux_config(auth="managed_identity", site={"principal_id": SITE},
                               servicebus={"disable_local_auth": True}))
    tasks, responses = d.one("servicebus:Queue", "queues-tasks"), d.one("servicebus:Queue", "queues-responses")
    site_roles = _assignments(d)[SITE]
    queue_roles = [r for r in site_roles if r[0] in (roles.SERVICE_BUS_DATA_SENDER, roles.SERVICE_BUS_DATA_RECEIVER)]
    assert sorted(queue_roles) == sorted([(roles.SERVICE_BUS_DATA_SENDER, tasks.id),
                                          (roles.SERVICE_BUS_DATA_RECEIVER, responses.id)])
    assert not d.of_type("servicebus:QueueAuthorizationRule")
    assert d.one("servicebus:Namespace").inputs["disableLocalAuth"] is True
    assert not any(k.endswith("connection_string") for k in d.outputs)


def test_existing_shared_namespace(run_stack):
    d = run_stack(linux_config(servicebus={"existing_namespace": {"name": "shared-pools", "resource_group": "rg-shared"}}))
    assert not d.of_type("servicebus:Namespace")
    for q in d.of_type("servicebus:Queue"):
        assert (q.inputs["namespaceName"], q.inputs["resourceGroupName"]) == ("shared-pools", "rg-shared")
    for r in d.of_type("servicebus:QueueAuthorizationRule"):
        assert (r.inputs["namespaceName"], r.inputs["resourceGroupName"]) == ("shared-pools", "rg-shared")
    assert d.outputs["fully_qualified_namespace"] == "shared-pools.servicebus.windows.net"
    metric = d.one("monitor:AutoscaleSetting").inputs["profiles"][0]["rules"][0]["metricTrigger"]
    assert metric["metricResourceUri"].endswith("/resourceGroups/rg-shared/providers/Microsoft.ServiceBus/"
                                                "namespaces/shared-pools")


def test_derived_names_for_a_long_competition(run_stack):
    name = "a-very-long-competition-name-for-testing-limits-xy"
    assert len(name) == 50
    d = run_stack(linux_config(competition=name))
    ns = d.one("servicebus:Namespace").inputs["namespaceName"]
    account = d.one("storage:StorageAccount").inputs["accountName"]
    assert len(ns) <= 50 and len(account) <= 24 and account.isalnum() and account.islower()
    assert {q.inputs["queueName"] for q in d.of_type("servicebus:Queue")} == {f"{name}-tasks", f"{name}-responses"}

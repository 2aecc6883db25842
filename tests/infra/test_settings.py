"""The stack config model: defaults, durations, and a clear error for every bad input."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tests.infra.conftest import GALLERY, REPO, SSH_KEY, linux_config, windows_config
from worker.config import ConfigError
from worker.stackconfig import QueueProperties, iso_duration, parse_stack_config

ROOT = Path(__file__).resolve().parents[2]


def test_queue_property_names_and_defaults_match_the_local_endpoint():
    emulator = pytest.importorskip("worker.emulator.config")
    ours = QueueProperties()
    theirs = emulator.QueueConfig(name="x")
    shared = set(QueueProperties.model_fields)
    assert shared == set(emulator.QueueConfig.model_fields) - {"name", "policies"}
    for name in shared:
        assert getattr(ours, name) == getattr(theirs, name), name


def test_queue_defaults_are_azures():
    q = QueueProperties()
    assert (q.lock_duration, q.max_delivery_count, q.max_message_size_kb) == (timedelta(minutes=1), 10, 256)
    props = q.arm_properties("Standard")
    assert props == {"lock_duration": "PT1M", "max_delivery_count": 10, "default_message_time_to_live": "P14D",
                     "dead_lettering_on_message_expiration": False, "requires_duplicate_detection": False}


@pytest.mark.parametrize("value, text", [
    (timedelta(minutes=1), "PT1M"), (timedelta(seconds=30), "PT30S"), (timedelta(days=14), "P14D"),
    (timedelta(days=1, hours=2, minutes=3, seconds=4), "P1DT2H3M4S"), (timedelta(hours=1), "PT1H"),
])
def test_iso_durations(value, text):
    assert iso_duration(value) == text
    assert QueueProperties(lock_duration="PT5M").lock_duration == timedelta(minutes=5)


def test_minimal_config_gets_safe_defaults():
    cfg = parse_stack_config({"pool:competition": "demo", "pool:workers": {"os": "linux", "ssh_public_key": SSH_KEY,
                                                                           "install": {"source": REPO}}})
    assert cfg.auth == "connection_string"
    assert cfg.servicebus.task_queue.requires_duplicate_detection  # the site's message ids dedupe resends
    assert cfg.workers.min_instances == 0 and cfg.workers.uses_install_playbook
    assert cfg.workers.resolved_agent_config_path == "/etc/pool-agent/agent.yaml"


def test_premium_takes_its_own_message_size_default():
    cfg = parse_stack_config(linux_config(servicebus={"sku": "Premium"}))
    assert cfg.servicebus.task_queue.max_message_size_kb == 1024
    assert cfg.servicebus.task_queue.arm_properties("Premium")["max_message_size_in_kilobytes"] == 1024


@pytest.mark.parametrize("example", ["Pulumi.linux-pool.yaml.example", "Pulumi.windows-pool.yaml.example"])
def test_example_stack_files_are_valid(example):
    import yaml

    data = yaml.safe_load((ROOT / example).read_text())["config"]
    cfg = parse_stack_config(data, example)
    assert cfg.workers.os in example
    assert data["azure-native:location"]


# (config, fragment of the expected message: it must name the key and say why)
BAD = [
    ({"workers": {"os": "linux", "ssh_public_key": SSH_KEY}}, "pool:competition: Field required"),
    (linux_config(competition="Demo!"), "invalid competition name"),
    (linux_config(competition="a" * 51), "invalid competition name"),
    (linux_config(unknown=1), "pool:unknown: Extra inputs are not permitted"),
    ({"competition": "demo"}, "pool:workers: Field required"),
    (linux_config(workers={"os": "solaris"}), "pool:workers.os"),
    (linux_config(workers={"ssh_public_key": None}), "ssh_public_key is required"),
    (linux_config(workers={"min_instances": 5, "max_instances": 2}), "min_instances (5) is above max_instances"),
    (linux_config(workers={"max_instances": 0}), "pool:workers.max_instances"),
    (linux_config(workers={"max_instances": 1001}), "pool:workers.max_instances"),
    (linux_config(workers={"termination_notice": "PT1M"}), "termination_notice must be between PT5M and PT15M"),
    (linux_config(workers={"scale_in_idle": "PT1M"}), "scale_in_idle must be between"),
    (linux_config(workers={"scale_in_cooldown": "PT10S"}), "scale_in_cooldown must be between"),
    (linux_config(workers={"gallery_image_id": "my-image"}), "gallery_image_id must be a Shared Image Gallery"),
    (linux_config(workers={"gallery_image_id": GALLERY, "marketplace_image": {"publisher": "a", "offer": "b",
                                                                              "sku": "c"}}),
     "either gallery_image_id or marketplace_image"),
    (linux_config(workers={"remote_access_cidr": "0.0.0.0/0"}), "must not be the whole internet"),
    (linux_config(workers={"remote_access_cidr": "10.0.0.1/8"}), "is not a CIDR range"),
    (linux_config(workers={"address_space": "8.8.0.0/16", "subnet_prefix": "8.8.0.0/20"}), "must be a private range"),
    (linux_config(workers={"subnet_prefix": "10.99.0.0/20"}), "is not inside address_space"),
    (linux_config(workers={"spot_max_price": 0.5}), "spot_max_price needs spot: true"),
    (linux_config(workers={"agent": {"servicebus": {}}}), "agent.servicebus is set by the program"),
    (linux_config(workers={"agent": {"worker_id": "w1"}}), "agent.worker_id would be shared"),
    (linux_config(workers={"agent": {"execution": {"driver": "chroot"}}}), "not a valid agent config"),
    (linux_config(workers={"agent": {"shutdown_grace_s": 600}}), "must be at least 60 s shorter"),
    (linux_config(workers={"install": {"source": "http://example.com/repo.git"}}), "must be an https:// git URL"),
    (linux_config(workers={"install": {"source": None}}), "install.source is required without gallery_image_id"),
    (linux_config(workers={"install": {"source": "ssh://git@example.com/repo.git"}}), "must be an https:// git URL"),
    (linux_config(workers={"marketplace_image": {"publisher": "Canonical", "offer": "0001-com-ubuntu-server-jammy",
                                                 "sku": "22_04-lts-gen2"}}),
     "pool:workers.marketplace_image: Canonical/0001-com-ubuntu-server-jammy (Ubuntu 22.04) has Python 3.10"),
    (linux_config(workers={"marketplace_image": {"publisher": "Canonical", "offer": "0001-com-ubuntu-server-focal",
                                                 "sku": "20_04-lts-gen2"}}), "(Ubuntu 20.04) has Python 3.8"),
    (linux_config(workers={"marketplace_image": {"publisher": "debian", "offer": "Debian-11", "sku": "11-gen2"}}),
     ("pool:workers.marketplace_image: debian/Debian-11 (Debian 11) has Python 3.9; the agent and the first-boot "
      "install need Python >= 3.11")),
    (windows_config(workers={"gallery_image_id": None}), "Windows pools need gallery_image_id"),
    (windows_config(workers={"ssh_public_key": SSH_KEY}), "ssh_public_key applies to Linux pools"),
    (linux_config(servicebus={"sku": "Gold"}), "pool:servicebus.sku"),
    (linux_config(servicebus={"namespace_name": "ab"}), "namespace name 'ab'"),
    (linux_config(servicebus={"namespace_name": "my-space-sb"}), "namespace name 'my-space-sb'"),
    (linux_config(servicebus={"namespace_name": "n-s", "existing_namespace": {"name": "shared-ns", "resource_group": "rg"}}),
     "namespace name 'n-s'"),
    (linux_config(servicebus={"namespace_name": "own-ns1", "existing_namespace": {"name": "shared-ns",
                                                                                 "resource_group": "rg"}}),
     "either namespace_name"),
    (linux_config(servicebus={"task_queue": {"lock_duration": "PT10M"}}), "lock_duration must be between PT5S and PT5M"),
    (linux_config(servicebus={"task_queue": {"lock_duration": "soon"}}), "pool:servicebus.task_queue.lock_duration"),
    (linux_config(servicebus={"task_queue": {"max_delivery_count": 0}}), "max_delivery_count"),
    (linux_config(servicebus={"task_queue": {"duplicate_detection_history_time_window": "P8D"}}),
     "duplicate_detection_history_time_window must be between"),
    (linux_config(servicebus={"task_queue": {"max_message_size_kb": 1024}}), "fixed 256 KB limit"),
    (linux_config(servicebus={"sku": "Premium", "response_queue": {"max_message_size_kb": 256}}),
     "Premium namespaces take 1024 to 102400"),
    (linux_config(servicebus={"sku": "Basic"}), "Basic tier has no duplicate detection"),
    (linux_config(servicebus={"disable_local_auth": True}), "disable_local_auth needs auth: managed_identity"),
    (linux_config(auth="managed_identity", servicebus={"disable_local_auth": True}),
     "disable_local_auth needs site.principal_id"),
    (linux_config(auth="keys"), "pool:auth"),
    (linux_config(site={"principal_id": "11111111-2222-3333-4444-555555555555"}),
     "site.principal_id is used with auth: managed_identity only"),
    (linux_config(auth="managed_identity", site={"principal_id": "site"}), "must be an object id"),
    (linux_config(storage={"account_name": "Has_Upper"}), "storage account name 'Has_Upper'"),
    (linux_config(storage={"account_name": "a" * 25}), "3-24 lowercase letters and digits"),
    (linux_config(storage={"logs_retention_days": 0}), "pool:storage.logs_retention_days"),
    (linux_config(storage={"allowed_ip_ranges": ["10.0.0.1"]}), "public IPv4 addresses and ranges only"),
    (linux_config(storage={"allowed_ip_ranges": ["203.0.113.0/31"]}), "rejects /31"),
    (linux_config(storage={"allowed_ip_ranges": ["not-an-ip"]}), "is not an IPv4 address"),
    (linux_config(resource_group="bad/name"), "resource group name 'bad/name'"),
]


@pytest.mark.parametrize("config, message", BAD, ids=[m for _, m in BAD])
def test_every_config_error_is_clear(config, message):
    with pytest.raises(ConfigError) as err:
        parse_stack_config(config, "Pulumi.test.yaml")
    text = str(err.value)
    assert text.startswith("Pulumi.test.yaml is not valid:"), text
    assert message in text, text


def test_all_errors_are_reported_at_once():
    with pytest.raises(ConfigError) as err:
        parse_stack_config(linux_config(competition="X", storage={"logs_retention_days": -1}))
    assert "pool:competition" in str(err.value) and "pool:storage.logs_retention_days" in str(err.value)


def test_keys_of_other_namespaces_are_ignored_and_prefix_is_optional():
    cfg = parse_stack_config({"azure-native:location": "westeurope", "pool:competition": "demo",
                              "workers": {"os": "linux", "ssh_public_key": SSH_KEY, "gallery_image_id": GALLERY}})
    assert cfg.competition == "demo"


def test_a_non_mapping_is_rejected():
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_stack_config(["competition"])  # type: ignore[arg-type]


def test_default_linux_image_is_debian_12_whose_python_runs_the_agent():
    from worker.stackconfig import MIN_PYTHON, marketplace_python_problem

    cfg = parse_stack_config(linux_config())
    image = cfg.workers.image
    assert (image.publisher, image.offer, image.sku, image.version) == ("Debian", "debian-12", "12-gen2", "latest")
    assert marketplace_python_problem(image) is None
    assert MIN_PYTHON == (3, 11)


@pytest.mark.parametrize("image", [
    {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server"},  # the documented alternative
    {"publisher": "Debian", "offer": "debian-12", "sku": "12-arm64"},
    {"publisher": "Contoso", "offer": "custom", "sku": "1"},  # unknown images are not second-guessed
])
def test_images_with_a_recent_or_unknown_python_are_accepted(image):
    assert parse_stack_config(linux_config(workers={"marketplace_image": image})).workers.marketplace_image


def test_min_python_matches_the_project():
    """The check guards what pyproject.toml requires: they must not drift apart."""
    import tomllib

    from worker.stackconfig import MIN_PYTHON

    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires.replace(" ", "") == ">=" + ".".join(map(str, MIN_PYTHON)), requires


def test_file_url_source_is_accepted_for_a_repository_on_the_vm():
    cfg = parse_stack_config(linux_config(workers={"install": {"source": "file:///srv/compute-pools.git"}}))
    assert cfg.workers.install.source == "file:///srv/compute-pools.git"

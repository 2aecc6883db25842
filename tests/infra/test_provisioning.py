"""worker.site.provisioning: the Automation API entry, tested up to the Pulumi CLI (not installable here).

What the CLI would receive (the stack config entries) is fed to the real program under Pulumi's
mocks, so the path file -> validated entries -> program is covered end to end except ``pulumi up``.
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pulumi
import pytest
import yaml

from tests.infra.conftest import GALLERY, REPO, SSH_KEY
from tests.infra.harness import deploy
from worker.config import ConfigError
from worker.site import provisioning

ROOT = Path(__file__).resolve().parents[2]
LINUX_EXAMPLE = ROOT / "Pulumi.linux-pool.yaml.example"
WINDOWS_EXAMPLE = ROOT / "Pulumi.windows-pool.yaml.example"


@pytest.fixture
def no_cli(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(provisioning.ADMIN_PASSWORD_ENV, raising=False)


def _write(tmp_path, data) -> Path:
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_reads_a_pulumi_stack_file():
    values = provisioning.read_config_file(LINUX_EXAMPLE)
    assert values["azure-native:location"] == "westeurope"
    assert values["pool:competition"] == "demo" and values["pool:workers"]["os"] == "linux"


def test_reads_a_bare_mapping(tmp_path):
    path = _write(tmp_path, {"competition": "demo", "workers": {"os": "linux"}, "azure-native:location": "x"})
    assert provisioning.read_config_file(path) == {"pool:competition": "demo", "pool:workers": {"os": "linux"},
                                                   "azure-native:location": "x"}


@pytest.mark.parametrize("content, message", [
    ("config: [1, 2]", "'config' must be a mapping"),
    ("- a\n- b\n", "the top level must be a mapping"),
    ("config: {pool:admin_password: {secure: AAEAAQ==}}", "encrypted for another stack"),
    ("a: [unclosed", "is not valid YAML"),
])
def test_bad_files_are_refused_clearly(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        provisioning.read_config_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read stack config"):
        provisioning.read_config_file(tmp_path / "nope.yaml")


def test_entries_are_validated_text_values():
    entries = provisioning.stack_config_values("demo", LINUX_EXAMPLE)
    assert entries["pool:competition"] == ("demo", False)
    assert entries["azure-native:location"] == ("westeurope", False)
    text, secret = entries["pool:workers"]
    assert not secret and json.loads(text)["max_instances"] == 8


@pytest.mark.parametrize("competition, data, message", [
    ("other", None, "is for competition 'demo', not 'other'"),
    ("Bad Name", None, "invalid competition name"),
    ("demo", {"pool:competition": "demo", "pool:workers": {"os": "linux", "ssh_public_key": SSH_KEY,
                                                    "install": {"source": REPO}}},
     "set azure-native:location"),
    ("demo", {"azure-native:location": "westeurope", "pool:workers": {"os": "linux"}}, "ssh_public_key is required"),
    ("demo", {"azure-native:location": "westeurope", "pool:workers": {"os": "windows", "gallery_image_id": GALLERY}},
     "needs an admin password"),
])
def test_config_errors_come_first_even_without_the_cli(tmp_path, no_cli, competition, data, message):
    path = LINUX_EXAMPLE if data is None else _write(tmp_path, data)
    with pytest.raises(ConfigError, match=message):
        provisioning.create_competition_stack(competition, config_file=path, on_output=lambda line: None)


def test_missing_cli_is_reported_with_what_to_do(no_cli):
    lines = []
    with pytest.raises(provisioning.PulumiCLIMissing) as err:
        provisioning.create_competition_stack("demo", config_file=LINUX_EXAMPLE, on_output=lines.append)
    text = str(err.value)
    assert "Pulumi CLI is not installed" in text and "get.pulumi.com" in text and "az login" in text
    assert lines == []  # nothing was started


def test_windows_password_from_the_environment_is_a_secret_entry(monkeypatch):
    monkeypatch.setenv(provisioning.ADMIN_PASSWORD_ENV, "S3cret-Passw0rd!")
    entries = provisioning.stack_config_values("demo-win", WINDOWS_EXAMPLE)
    assert entries["pool:admin_password"] == ("S3cret-Passw0rd!", True)


def test_project_dir_is_this_checkout_or_the_override(monkeypatch, tmp_path):
    assert provisioning.project_dir() == ROOT
    monkeypatch.setenv(provisioning.PROJECT_DIR_ENV, str(tmp_path))
    assert provisioning.project_dir() == ROOT  # the override lacks Pulumi.yaml: fall back
    (tmp_path / "infra").mkdir()
    (tmp_path / "Pulumi.yaml").write_text("name: x\n")
    (tmp_path / "infra" / "__main__.py").write_text("")
    assert provisioning.project_dir() == tmp_path


def test_the_entries_drive_the_real_program(monkeypatch):
    """Exactly what create_competition_stack hands to the CLI, read back by infra/__main__.py."""
    monkeypatch.setenv(provisioning.ADMIN_PASSWORD_ENV, "S3cret-Passw0rd!")
    entries = provisioning.stack_config_values("demo-win", WINDOWS_EXAMPLE)

    def program():
        pulumi.runtime.set_all_config({k: v for k, (v, _) in entries.items()},
                                      [k for k, (_, secret) in entries.items() if secret])
        runpy.run_path(str(ROOT / "infra" / "__main__.py"), run_name="__main__")
        return {}

    d = deploy(program)
    vmss = d.one("compute:VirtualMachineScaleSet")
    assert vmss.inputs["vmScaleSetName"].startswith("vmss-w")
    assert {q.inputs["queueName"] for q in d.of_type("servicebus:Queue")} == {"demo-win-tasks", "demo-win-responses"}
    assert d.of_type("authorization:RoleAssignment")  # the example uses managed identities


def test_secret_output_names_match_the_program(run_stack):
    from tests.infra.conftest import linux_config

    d = run_stack(linux_config())
    assert d.secret_outputs == provisioning.SECRET_OUTPUTS

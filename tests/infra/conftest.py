"""Fixtures for the Pulumi program's tests (Pulumi's own mocks; no CLI, no Azure)."""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.infra.harness import Deployment, deploy, usable_event_loop

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITestKeyOnly test@example"
GALLERY = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-images/providers/"
           "Microsoft.Compute/galleries/poolimages/images/pool-worker-windows")
REPO = "https://git.example.org/ml/compute-pools.git"
SECRET_SIG = "4dabf18193072939515e22adb298388d"


@pytest.fixture(autouse=True)
def _event_loop_for_pulumi():
    usable_event_loop()


def linux_config(**overrides: Any) -> dict[str, Any]:
    base = {"competition": "demo", "workers": {"os": "linux", "ssh_public_key": SSH_KEY,
                                               "install": {"source": REPO}}}
    return merge(base, overrides)


def windows_config(**overrides: Any) -> dict[str, Any]:
    base = {"competition": "demo-win", "workers": {"os": "windows", "gallery_image_id": GALLERY}}
    return merge(base, overrides)


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and SECRET_SIG in value


def reveal(value: Any) -> Any:
    """Unwrap Pulumi's secret envelopes (recursively) to read the plain inputs."""
    if is_secret(value):
        return reveal(value["value"])
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


def cloud_init(vmss_inputs: dict[str, Any]) -> dict[str, Any]:
    text = base64.b64decode(reveal(vmss_inputs)["virtualMachineProfile"]["osProfile"]["customData"]).decode()
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


def written_file(document: dict[str, Any], path: str) -> str:
    entry = next(f for f in document["write_files"] if f["path"] == path)
    if entry.get("encoding") == "b64":
        return base64.b64decode(entry["content"]).decode()
    return entry["content"]


@pytest.fixture
def run_stack() -> Callable[..., Deployment]:
    """run_stack(config_dict, admin_password=None) -> Deployment of the whole program."""
    from infra.program import build
    from worker.stackconfig import parse_stack_config

    def run(config: dict[str, Any], *, admin_password: str | None = None, location: str = "westeurope"):
        return deploy(build, parse_stack_config(config), location=location, admin_password=admin_password)

    return run

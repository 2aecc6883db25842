"""Read the stack config from Pulumi (``pool:*`` keys) and validate it."""

from __future__ import annotations

import json
from typing import Any

import pulumi

from worker.config import ConfigError
from worker.stackconfig import CONFIG_NAMESPACE, SECTIONS, StackConfig, parse_stack_config


def read_stack_config() -> tuple[StackConfig, str | None, pulumi.Output[str] | None]:
    """(validated config, azure-native:location, pool:admin_password as a secret Output or None).

    A bad config stops the program with the list of problems before any resource is declared.
    """
    cfg = pulumi.Config(CONFIG_NAMESPACE)
    raw: dict[str, Any] = {}
    for key in SECTIONS:
        value = cfg.get(key)
        if value is None:
            continue
        try:  # structured values reach the program as JSON text
            raw[key] = json.loads(value) if value[:1] in "{[" else value
        except json.JSONDecodeError:
            raw[key] = value
    stack = f"{pulumi.get_project()}/{pulumi.get_stack()}"
    try:
        config = parse_stack_config(raw, f"stack config of {stack}")
    except ConfigError as exc:
        raise pulumi.RunError(str(exc)) from None
    location = pulumi.Config("azure-native").get("location")
    if not (config.location or location):
        raise pulumi.RunError(f"stack config of {stack}: set azure-native:location (or pool:location)")
    admin_password = cfg.get_secret("admin_password")
    if config.workers.os == "windows" and admin_password is None:
        raise pulumi.RunError(f"stack config of {stack}: a Windows pool needs pool:admin_password; set it "
                              "with: pulumi config set --secret pool:admin_password")
    return config, location, admin_password

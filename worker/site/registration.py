"""Register a pool deployed by the Pulumi program with a site, from the stack's outputs
(``pool competition create NAME --azure`` does it after ``pulumi up``; ``pool competition import``
for a stack brought up with plain ``pulumi up``).

The outputs name the competition, its queues, and the site's access: queue-level connection strings
(SAS auth) or, with identities, the namespace the site reaches with DefaultAzureCredential."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from worker.config import ConfigError, check_competition_name, competition_queues


def pool_from_outputs(outputs: dict[str, Any]) -> dict[str, Any]:
    """The body of ``POST /api/v1/pools`` for these stack outputs (ConfigError naming what is missing)."""
    name = outputs.get("competition")
    if not isinstance(name, str):
        raise ConfigError("the stack outputs have no 'competition' (is this a compute-pools stack?)")
    check_competition_name(name)
    task_queue, response_queue = competition_queues(name)
    for key, expected in (("task_queue", task_queue), ("response_queue", response_queue)):
        if outputs.get(key) not in (None, expected):
            raise ConfigError(f"the stack's {key} is {outputs[key]!r}; the site expects {expected!r}")
    body: dict[str, Any] = {"name": name}
    task_cs = outputs.get("site_task_queue_connection_string")
    response_cs = outputs.get("site_response_queue_connection_string")
    if task_cs and response_cs:
        body["task_queue_connection_string"] = task_cs
        body["response_queue_connection_string"] = response_cs
    elif outputs.get("fully_qualified_namespace"):
        body["namespace"] = outputs["fully_qualified_namespace"]
    else:
        raise ConfigError("the stack outputs hold neither the site's queue connection strings "
                          "(site_task_queue_connection_string, site_response_queue_connection_string) nor "
                          "fully_qualified_namespace")
    return body


def read_outputs_file(path: Path) -> dict[str, Any]:
    """``pulumi stack output --json --show-secrets > FILE``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read stack outputs from {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of stack outputs")
    return data


def stack_outputs(stack: str) -> dict[str, Any]:
    """The outputs of a deployed stack, through the Automation API (needs the Pulumi CLI and the
    stack's backend login; not runnable here)."""
    from worker.site import provisioning

    provisioning.pulumi_cli()
    from pulumi import automation as auto

    try:
        selected = auto.select_stack(stack_name=stack, work_dir=str(provisioning.project_dir()))
        return {key: getattr(value, "value", value) for key, value in selected.outputs().items()}
    except auto.errors.CommandError as exc:
        raise provisioning.ProvisioningError(f"cannot read the outputs of stack {stack}:\n{exc}") from None


def site_yaml_snippet(body: dict[str, Any]) -> str:
    """What to add under ``pools:`` in site.yaml when no site is given to register with."""
    import yaml

    access = {k: v for k, v in body.items() if k != "name"}
    return yaml.safe_dump({"pools": {body["name"]: access}}, sort_keys=False)

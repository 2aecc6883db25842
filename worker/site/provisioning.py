"""Create (or update) a competition's pool in Azure through Pulumi's Automation API.

``create_competition_stack("demo", config_file=Path("Pulumi.linux-pool.yaml.example"))`` validates the
stack config with the Pulumi program's own model (:mod:`worker.stackconfig`), selects or creates the stack
(named after the competition unless told otherwise), writes the config into it and runs ``pulumi up``
on the program in ``infra/`` (``Pulumi.yaml`` at the repository root), streaming the engine's output.

It needs the Pulumi CLI on PATH (the Automation API drives it) and Azure credentials (``az login``);
a missing CLI is reported before anything else happens. Config errors are ``worker.config.ConfigError``;
everything else that stops a deployment is :class:`ProvisioningError`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from worker.config import ConfigError, check_competition_name, load_yaml
from worker.errors import PoolError
from worker.stackconfig import CONFIG_NAMESPACE, parse_stack_config

ADMIN_PASSWORD_ENV = "POOL_ADMIN_PASSWORD"  # Windows pools: the VMs' admin password (stored as a secret)
PROJECT_DIR_ENV = "POOL_INFRA_PROJECT_DIR"  # a checkout holding Pulumi.yaml + infra/, if not this one


# Stack outputs that hold keys (see infra/program.py): store them, never print them.
SECRET_OUTPUTS = frozenset({"site_task_queue_connection_string", "site_response_queue_connection_string",
                            "site_storage_connection_string"})


class ProvisioningError(PoolError, RuntimeError):
    """The stack could not be deployed; the message says why and what to do."""


class PulumiCLIMissing(ProvisioningError):
    pass


def project_dir() -> Path:
    """The directory holding ``Pulumi.yaml`` (the repository root of a source checkout)."""
    candidates = [Path(os.environ[PROJECT_DIR_ENV])] if os.environ.get(PROJECT_DIR_ENV) else []
    candidates.append(Path(__file__).resolve().parents[2])
    for candidate in candidates:
        if (candidate / "Pulumi.yaml").is_file() and (candidate / "infra" / "__main__.py").is_file():
            return candidate
    raise ProvisioningError(
        f"cannot find the Pulumi project (Pulumi.yaml and infra/) in {', '.join(map(str, candidates))}; "
        f"run from a source checkout or set {PROJECT_DIR_ENV}")


def pulumi_cli() -> str:
    """Path of the ``pulumi`` executable, or a clear error saying how to get one."""
    found = shutil.which("pulumi") or shutil.which("pulumi", path=str(Path.home() / ".pulumi" / "bin"))
    if not found:
        raise PulumiCLIMissing(
            "the Pulumi CLI is not installed (pool competition create --azure drives it through the "
            "Automation API). Install it (https://www.pulumi.com/docs/install/: "
            "curl -fsSL https://get.pulumi.com | sh), log in to a backend (pulumi login, or "
            "pulumi login --local), run az login, and try again")
    return found


def read_config_file(path: Path) -> dict[str, Any]:
    """A stack config file -> ``{"pool:key": value, "azure-native:location": …}``.

    Accepts a Pulumi stack file (``config:`` with ``pool:*`` keys, e.g. Pulumi.linux-pool.yaml.example)
    or a bare mapping of the ``pool`` keys (``competition``, ``workers``, …).
    """
    return config_values(load_yaml(path, what="stack config"), str(path))


def config_values(data: Mapping[str, Any], source: str = "stack config") -> dict[str, Any]:
    """A stack config mapping (a stack file's content, or the ``azure.config`` of an API request) ->
    ``{"pool:key": value, "azure-native:location": …}``: keys without a provider get ``pool:``."""
    if "config" in data:
        if not isinstance(data["config"], dict):
            raise ConfigError(f"{source}: 'config' must be a mapping of keys to values")
        data = data["config"]
    values: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key)
        full = key if ":" in key else f"{CONFIG_NAMESPACE}:{key}"
        if isinstance(value, dict) and set(value) == {"secure"}:
            raise ConfigError(f"{source}: {full} is encrypted for another stack; give it in plain text here "
                              f"(admin password: the {ADMIN_PASSWORD_ENV} environment variable)")
        values[full] = value
    return values


def stack_config_values(competition: str, config_file: Path | None = None, *,
                        config: Mapping[str, Any] | None = None) -> dict[str, tuple[str, bool]]:
    """Validated stack config (a file, or a mapping such as an API request's) as Pulumi config
    entries: key -> (text value, is secret). A ConfigError's ``fields`` names the keys at fault.

    Structured values are JSON text, which the program reads back with ``json.loads``.
    """
    check_competition_name(competition)
    if config_file is not None:
        values, source = read_config_file(config_file), str(config_file)
    else:
        values, source = config_values(config or {}), "stack config"
    named = values.get(f"{CONFIG_NAMESPACE}:competition")
    if named is not None and named != competition:
        raise _config_error(f"{source} is for competition {named!r}, not {competition!r}", "competition")
    values[f"{CONFIG_NAMESPACE}:competition"] = competition
    password = values.pop(f"{CONFIG_NAMESPACE}:admin_password", None) or os.environ.get(ADMIN_PASSWORD_ENV)

    parsed = parse_stack_config(values, source)  # raises ConfigError listing every problem
    if not (parsed.location or values.get("azure-native:location")):
        raise _config_error(f"{source}: set azure-native:location (the Azure region, e.g. westeurope)",
                            "azure-native:location")
    if parsed.workers.os == "windows" and not password:
        raise _config_error(f"{source}: a Windows pool needs an admin password: set {ADMIN_PASSWORD_ENV}",
                            "admin_password")

    entries: dict[str, tuple[str, bool]] = {}
    for key, value in values.items():
        text = value if isinstance(value, str) else json.dumps(value)
        entries[key] = (text, False)
    if password:
        entries[f"{CONFIG_NAMESPACE}:admin_password"] = (str(password), True)
    return entries


def _config_error(message: str, field: str) -> ConfigError:
    error = ConfigError(message)
    error.fields = [field]  # type: ignore[attr-defined]
    return error


def create_competition_stack(competition: str, *, config_file: Path | None = None,
                             config: Mapping[str, Any] | None = None, stack: str | None = None,
                             on_output: Callable[[str], None] = print) -> dict[str, Any]:
    """Deploy (create or update) the competition's stack from a config file or mapping; returns the
    stack outputs.

    The returned mapping includes the secret outputs (:data:`SECRET_OUTPUTS`, the site's connection
    strings where keys are used) in plain text: store them, do not print them.
    """
    entries = stack_config_values(competition, config_file, config=config)
    pulumi_cli()  # before touching any stack
    root = project_dir()
    from pulumi import automation as auto

    stack_name = stack or competition
    on_output(f"pulumi: selecting stack {stack_name} of {root / 'Pulumi.yaml'}")
    try:
        target = auto.create_or_select_stack(stack_name=stack_name, work_dir=str(root))
        target.set_all_config({key: auto.ConfigValue(value=value, secret=secret)
                               for key, (value, secret) in entries.items()})
        result = target.up(on_output=on_output)
    except auto.errors.CommandError as exc:
        raise ProvisioningError(f"pulumi up of stack {stack_name} failed:\n{exc}") from None
    return _plain_outputs(result.outputs)


def _plain_outputs(outputs: Mapping[str, Any]) -> dict[str, Any]:
    return {key: getattr(value, "value", value) for key, value in outputs.items()}

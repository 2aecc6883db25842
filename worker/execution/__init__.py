"""Execution drivers: how a task's program is run (see :mod:`worker.execution.base`)."""

from __future__ import annotations

from worker.errors import ConfigError
from worker.execution.base import ExecutionDriver

_DRIVERS = {
    "process": "worker.execution.process:ProcessDriver",
    "bwrap": "worker.execution.bwrap:BwrapDriver",
    "jobobject": "worker.execution.jobobject:JobObjectDriver",
    "docker": "worker.execution.docker:DockerDriver",
}


def driver_names() -> list[str]:
    return list(_DRIVERS)


def get_driver(name: str, **options: object) -> ExecutionDriver:
    """Instantiate a driver by name (imported lazily: drivers pull platform-specific modules)."""
    import importlib

    try:
        target = _DRIVERS[name]
    except KeyError:
        raise ConfigError(f"unknown execution driver {name!r}; choose one of {', '.join(_DRIVERS)}") from None
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**options)

"""Pulumi entry point (``main: infra/`` in the repository's Pulumi.yaml).

Reads the ``pool:*`` stack config, validates it (clear errors, nothing deployed on bad input), builds
the stack and exports its outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Pulumi runs this folder as a script, with the folder itself first on sys.path: import the program
# as the ``infra`` package from the repository root instead (and keep module names from shadowing).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(_HERE.parent) not in sys.path:
    sys.path.insert(0, str(_HERE.parent))

import pulumi

from infra.config_source import read_stack_config
from infra.program import build

config, location, admin_password = read_stack_config()
for name, value in build(config, location=location, admin_password=admin_password).items():
    pulumi.export(name, value)

"""Which execution driver the local stack's agents use: sandboxed (bwrap) by default, wherever it
really works here; otherwise the unsandboxed process driver, with a warning nobody can miss.

A user who evaluates other people's submissions on one machine should not have to know about a
flag to get them confined. "Really works" is `pool sandbox check`'s verdict: the driver is usable
and its self-test passes (a program ran confined, network isolation probed), plus, as root, the
agents' work directories are reachable by the sandbox uid (bwrap runs as that uid).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

AUTO = "auto"
SANDBOXED = "bwrap"


def sandbox_problem(data_dir: Path) -> str | None:
    """Why the bwrap driver cannot be the default here (None: it can)."""
    if os.name != "posix":
        return "bubblewrap is Linux-only"
    from worker.execution import get_driver
    from worker.execution.base import DriverUnavailable
    from worker.execution.commands import _self_test

    try:
        driver = get_driver(SANDBOXED)
        driver.check_available()
    except (DriverUnavailable, OSError, ValueError) as exc:
        return str(exc)
    if getattr(driver, "is_root", False):
        from worker.execution.bwrap import _check_traversable

        existing = data_dir / "agents"
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent  # what the stack creates later is 0755 (umask 022)
        try:
            _check_traversable(existing / "work", getattr(driver, "host_uid", 65534))
        except PermissionError as exc:
            return str(exc)
    failed = [f"{name} ({detail})" if detail else name
              for name, passed, detail in _self_test(SANDBOXED, driver) if not passed]
    if failed:
        return "`pool sandbox check` self-test failed: " + ", ".join(failed)
    return None


def choose_driver(requested: str, data_dir: Path, say: Callable[[str], None]) -> str:
    """``auto``: bwrap where it works, else process with a warning; any other name as given."""
    if requested != AUTO:
        return requested
    problem = sandbox_problem(data_dir)
    if problem is None:
        say(f"execution driver: {SANDBOXED} (task programs run sandboxed; see docs/sandbox.md)")
        return SANDBOXED
    say(f"WARNING: the {SANDBOXED} sandbox cannot run here: {problem}")
    say("WARNING: task programs run UNSANDBOXED (driver process) with this user's rights: run only code you "
        "trust. Fix the above (`pool sandbox check` says more), or pass --driver process to choose this.")
    return "process"

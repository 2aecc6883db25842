"""The root of every error this project raises on purpose, and the errors shared across areas.

Every such error derives from :class:`PoolError` (the CLI catches it once and prints its one-line
message); each also keeps the built-in base its callers rely on (``ValueError`` for bad input,
``RuntimeError`` for a failed operation, ``OSError``, ``LookupError``). This module imports nothing.
"""

from __future__ import annotations


class PoolError(Exception):
    """An expected failure with a message written for the user (``str(error)`` is one line)."""


class ConfigError(PoolError, ValueError):
    """A configuration (agent, emulator or stack) that cannot be used; the message says which field and why."""


class TaskRejected(PoolError, ValueError):
    """This worker cannot run this task (its inputs are unusable, or it asks for what the driver cannot
    give: GPUs, network, an image): a final ``failed`` status with this message, the message completed,
    no retry."""

"""Effective limits of a task: the smaller of what the task asks and the worker's ceilings."""

from __future__ import annotations

from worker.config import AgentConfig
from worker.execution.base import Limits
from worker.protocol import Task

MIB = 1024 * 1024


def _smaller(a: float | None, b: float | None):
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def effective_limits(task: Task, config: AgentConfig) -> Limits:
    ceilings = config.execution.limits
    asked = task.resources
    return Limits(
        wall_time_s=min(task.time_limit_s, ceilings.max_time_limit_s),
        memory_bytes=_smaller(asked.memory_mb * MIB if asked.memory_mb else None, ceilings.memory_bytes),
        max_processes=ceilings.max_processes,
        cpu_time_s=ceilings.cpu_time_s,
        file_size_bytes=ceilings.file_size_bytes,
        open_files=ceilings.open_files,
        scratch_bytes=_smaller(asked.disk_mb * MIB if asked.disk_mb else None, ceilings.scratch_bytes),
        tmp_bytes=ceilings.tmp_bytes,
    )

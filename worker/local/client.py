"""What the demo, `pool competition limits` and the tests do against a local stack's site directly (its
database and storage): open it, wait for a task, read logs. The user-facing commands go through the
site's HTTP API (worker.site.commands)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from worker.errors import PoolError
from worker.local.profile import load_profile
from worker.site.models import Task
from worker.site.service import Site
from worker.storage import LogStream


class ClientError(PoolError, RuntimeError):
    pass


def open_site(data_dir: str | Path, *, require_running: bool = True) -> Site:
    profile = load_profile(data_dir, require_running=require_running)
    return Site(profile.site_settings())


def get_task(site: Site, task_id: str) -> Task:
    with site.sessions() as session:
        task = session.get(Task, task_id)
    if task is None:
        raise ClientError(f"no task {task_id!r}")
    return task


def wait_for(site: Site, task_id: str, timeout: float | None = None, poll_s: float = 0.05,
             on_change: Callable[[Task], None] | None = None) -> Task:
    """Poll the database until the task reaches a final state."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last_state = None
    while True:
        task = get_task(site, task_id)
        if task.state != last_state:
            last_state = task.state
            if on_change:
                on_change(task)
        if task.site_state.terminal:
            return task
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} still {task.state} after {timeout:.0f} s")
        time.sleep(poll_s)


def stream_logs(site: Site, task_id: str, *, follow: bool, write: Callable[[LogStream, bytes], None],
                streams: tuple[LogStream, ...] = ("stdout", "stderr"), attempt: int | None = None,
                poll_s: float = 0.5) -> Task:
    """Print a task's logs; with ``follow`` keep tailing until the task is final (then drain)."""
    task = get_task(site, task_id)
    attempt = attempt or task.attempt
    offsets = dict.fromkeys(streams, 0)
    while True:
        task = get_task(site, task_id)
        final = task.site_state.terminal
        for stream in streams:
            chunk = site.storage.read_log(task.pool, task_id, attempt, stream, offsets[stream])
            if chunk:
                offsets[stream] += len(chunk)
                write(stream, chunk)
        if not follow or final:
            return task
        time.sleep(poll_s)

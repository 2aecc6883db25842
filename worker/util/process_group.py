"""Stopping a child that was started in its own process group (``start_new_session=True``). POSIX only."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_process_group(process: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """SIGTERM the process's group, then SIGKILL whatever is left after ``timeout``.
    Returns the exit code (None if even SIGKILL did not end it within 5 s)."""
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    # Children of the leader may outlive it: kill the rest of the group either way.
    _signal_group(process, signal.SIGKILL)
    try:
        return process.wait(5)
    except subprocess.TimeoutExpired:  # pragma: no cover - unkillable process
        return None


def kill_process_group(process: subprocess.Popen) -> None:
    """SIGKILL the whole group at once (no clean shutdown) and reap the leader."""
    _signal_group(process, signal.SIGKILL)
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pass


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass

"""Runs one :class:`~worker.execution.base.Execution` to its end, whatever the driver.

The supervisor drains stdout/stderr in two threads (so a chatty program never blocks on a full
pipe), hands every chunk to a callback, and stops the program through ``Execution.kill(reason)``
when the wall-clock limit passes, when someone calls :meth:`Supervisor.kill` (cancellation,
shutdown) or when a stream exceeds its output ceiling. It knows nothing about blobs or queues.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import IO

from worker.execution.base import Execution, ExecutionResult
from worker.protocol import KillReason
from worker.util.threads import spawn

log = logging.getLogger(__name__)

OutputCallback = Callable[[str, bytes], None]  # (stream name "stdout" | "stderr", chunk)

_CHUNK = 64 * 1024
_PIPE_GRACE_S = 5.0  # after the tree is gone, how long we wait for the pipes' last bytes


class Supervisor:
    def __init__(
        self,
        execution: Execution,
        *,
        wall_time_s: float,
        on_output: OutputCallback,
        max_output_bytes: int | None = None,
    ) -> None:
        """``max_output_bytes``: per stream; past it the program is killed with reason ``output``."""
        self.execution = execution
        self.wall_time_s = wall_time_s
        self.on_output = on_output
        self.max_output_bytes = max_output_bytes
        self.output_bytes = {"stdout": 0, "stderr": 0}
        self._wake = threading.Event()
        self._pending_kill: KillReason | None = None
        self._lock = threading.Lock()

    def kill(self, reason: KillReason) -> None:
        """Ask the running program to be stopped (thread-safe, idempotent: the first reason wins)."""
        with self._lock:
            if self._pending_kill is None:
                self._pending_kill = reason
        self._wake.set()

    def run(self) -> ExecutionResult:
        readers = [spawn(f"pump-{name}", self._pump, name, pipe)  # reused threads (worker.util.threads)
                   for name, pipe in (("stdout", self.execution.stdout), ("stderr", self.execution.stderr))]
        exited = threading.Event()

        def wait_main() -> None:
            self.execution.wait()
            exited.set()
            self._wake.set()

        spawn("wait-main", wait_main)

        deadline = time.monotonic() + self.wall_time_s
        killed = False
        while not exited.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0 and not killed:
                self._do_kill(KillReason.TIME)
                killed = True
                continue
            self._wake.wait(timeout=max(remaining, 0.05) if not killed else 0.5)
            self._wake.clear()
            with self._lock:
                reason = self._pending_kill
            if reason is not None and not killed:
                self._do_kill(reason)
                killed = True

        result = self.execution.result()  # also kills anything the program left behind
        for thread in readers:
            thread.join(_PIPE_GRACE_S)
        for thread, pipe in zip(readers, (self.execution.stdout, self.execution.stderr)):
            if thread.is_alive():  # an escaped process holds the pipe: leave the daemon reader be
                log.warning("%s still open after the program ended", thread.name)
                continue
            try:
                pipe.close()
            except OSError:
                pass
        return result

    def _do_kill(self, reason: KillReason) -> None:
        log.info("stopping program: %s", reason.value)
        self.execution.kill(reason)

    def _pump(self, name: str, pipe: IO[bytes]) -> None:
        fd = pipe.fileno()  # raw reads: whatever is there, as soon as it is there
        while True:
            try:
                chunk = os.read(fd, _CHUNK)
            except OSError:
                return
            if not chunk:
                return
            self.output_bytes[name] += len(chunk)
            try:
                self.on_output(name, chunk)
            except Exception:  # a broken sink must not stop the draining (the pipe would fill)
                log.exception("output callback failed")
            if self.max_output_bytes is not None and self.output_bytes[name] > self.max_output_bytes:
                self.kill(KillReason.OUTPUT)

"""Streams a program's stdout/stderr to append blobs while it runs.

Chunks from the supervisor are buffered in memory and appended by one flusher thread every
``log_flush_interval_s`` (≤ 1 s), only when there is something new. Each stream is capped at
``limits.log_bytes``: the blob then ends with a visible truncation marker and further output is
counted and discarded (the supervisor kills a program that keeps flooding, see
:data:`FLOOD_FACTOR`). An append blob holds at most 50,000 blocks, so after
:data:`SLOW_AFTER_BLOCKS` a chatty stream is flushed every :data:`SLOW_INTERVAL_S` instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from worker.agent.blobs import AppendBlob
from worker.agent.errors import InfrastructureError
from worker.util.threads import Job, spawn

log = logging.getLogger(__name__)

FLOOD_FACTOR = 4  # a stream past FLOOD_FACTOR x its cap gets the program killed (kill reason "output")
SLOW_AFTER_BLOCKS = 25_000
SLOW_INTERVAL_S = 10.0
MAX_BLOCKS = 49_000
FAILURES_BEFORE_GIVING_UP = 3  # consecutive failed flushes (each already retried by the SDK)


def truncation_marker(stream: str, cap: int) -> bytes:
    return (f"\n[pool-agent] {stream} truncated: the log reached its limit of {cap} bytes; "
            "further output is discarded.\n").encode()


class _Stream:
    def __init__(self, name: str, blob: AppendBlob, cap: int) -> None:
        self.name = name
        self.blob = blob
        self.cap = cap
        self.accepted = 0  # bytes taken into the log (≤ cap)
        self.discarded = 0
        self.pending = bytearray()
        self.truncated = False
        self.marker_written = False
        self.blocks = 0
        self.last_flush = 0.0

    def take(self, chunk: bytes) -> None:
        room = self.cap - self.accepted
        if room <= 0:
            self.discarded += len(chunk)
            self.truncated = True
            return
        keep = chunk[:room]
        self.pending += keep
        self.accepted += len(keep)
        if len(keep) < len(chunk):
            self.discarded += len(chunk) - len(keep)
            self.truncated = True


class LogStreamer:
    """``write(stream, chunk)`` is cheap and never blocks on the network."""

    def __init__(self, stdout: AppendBlob, stderr: AppendBlob, *, cap_bytes: int, interval_s: float,
                 on_failure: Callable[[InfrastructureError], None] | None = None) -> None:
        self.streams = {"stdout": _Stream("stdout", stdout, cap_bytes), "stderr": _Stream("stderr", stderr, cap_bytes)}
        self.interval_s = interval_s
        self.on_failure = on_failure
        self.error: InfrastructureError | None = None
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Job | None = None
        self._failures = 0

    def create(self) -> None:
        for stream in self.streams.values():
            stream.blob.create()

    def start(self) -> None:
        self._thread = spawn("log-flusher", self._run)

    def write(self, stream: str, chunk: bytes) -> None:
        with self._lock:
            self.streams[stream].take(chunk)

    def close(self) -> None:
        """Stop the flusher and flush everything left; raises InfrastructureError if that fails."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._flush(final=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._flush(final=False)
                self._failures = 0
            except InfrastructureError as exc:
                self._failures += 1
                log.warning("log flush failed (%d in a row): %s", self._failures, exc)
                if self._failures >= FAILURES_BEFORE_GIVING_UP and self.error is None:
                    self.error = exc
                    if self.on_failure:
                        self.on_failure(exc)
                    return

    def _flush(self, final: bool) -> None:
        with self._flush_lock:
            now = time.monotonic()
            for stream in self.streams.values():
                if not final and stream.blocks >= SLOW_AFTER_BLOCKS and now - stream.last_flush < SLOW_INTERVAL_S:
                    continue
                with self._lock:
                    if stream.blocks >= MAX_BLOCKS and not stream.truncated:
                        stream.truncated = True  # out of blocks: end the log here
                        stream.cap = stream.accepted
                    data = bytes(stream.pending)
                    stream.pending.clear()
                    add_marker = stream.truncated and not stream.marker_written
                marker = truncation_marker(stream.name, stream.cap) if add_marker else b""
                if not data and not marker:
                    continue
                try:
                    stream.blob.append(data + marker)
                except InfrastructureError:
                    with self._lock:  # keep it for the next try: nothing is lost
                        stream.pending[:0] = data
                    raise
                stream.blocks += 1
                stream.last_flush = now
                stream.marker_written = stream.marker_written or add_marker

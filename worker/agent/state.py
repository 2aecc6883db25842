"""The agent's local control surface: a JSON state file it keeps current and a drain flag it obeys.

No network listener: both live in the agent's control directory (``control_dir`` in the config,
default the parent of ``work_dir`` — ``/var/lib/pool-agent`` in the image: mode 0750, owned by the
service user, so an operator reads it with sudo and a sandboxed task, which only sees its own task
directory, cannot reach it).

* ``agent-state.json`` — written atomically (temporary file + rename) on every change of state and
  at most every few seconds otherwise: state, current task, version, driver, pool, last report
  (heartbeat or presence) queued, tasks done/failed since start, pid. A task shows (``busy``) once
  it has run :data:`BUSY_SHOWN_AFTER_S` (at the receive loop's next look, within about half a
  second): one that ends sooner costs one write, its end (idle and the counts), not two.
* ``drain`` — its existence means "finish the current task, take no new one". It is a file, so it
  survives an agent restart until ``pool agent resume`` removes it. The agent checks it before each
  receive call; a task that arrived in the receive call during which the flag appeared still runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.util.pids import pid_alive

log = logging.getLogger(__name__)

STATE_FILE = "agent-state.json"
DRAIN_FILE = "drain"
REFRESH_S = 5.0  # an unchanged state is still rewritten this often (updated_at says the agent is alive)
BUSY_SHOWN_AFTER_S = 0.25  # a task in hand is written once it has lasted this long (or at its end)

# starting: connecting; idle: waiting for a task; busy: running one; draining: drain requested, the
# current task still running; drained: drain requested and no task in hand; stopped: exited cleanly.
STATES = ("starting", "idle", "busy", "draining", "drained", "stopped")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class AgentState:
    """What ``agent-state.json`` holds (also what ``pool agent status --json`` prints)."""

    state: str = "starting"
    worker_id: str = ""
    pool: str | None = None
    driver: str = ""
    version: str = ""
    pid: int = 0
    started_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)
    task_id: str | None = None
    task_attempt: int | None = None
    task_since: str | None = None
    drain_requested: bool = False
    last_report_at: str | None = None  # last heartbeat or idle presence report queued for sending
    tasks_done: int = 0  # ended with a final status `finished`
    tasks_failed: int = 0  # any other end: failed, timed out, cancelled, handed back, lock lost

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def write_atomic(path: Path, text: str, mode: int = 0o640, *, durable: bool = True) -> None:
    """Readers see the old or the new file, never a half-written one. ``durable``: fsync before the
    rename, so the new file also survives a power loss (not needed for the state file, rewritten
    once or twice per task and within seconds anyway: a reader takes an unreadable one for "unknown")."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_state(control_dir: Path) -> AgentState | None:
    try:
        data = json.loads((control_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    return AgentState.from_dict(data)



def drain_requested(control_dir: Path) -> bool:
    return (control_dir / DRAIN_FILE).exists()


def request_drain(control_dir: Path, by: str = "") -> bool:
    """Set the drain flag; False if it was set already."""
    flag = control_dir / DRAIN_FILE
    if flag.exists():
        return False
    write_atomic(flag, json.dumps({"requested_at": _now(), "by": by}) + "\n", mode=0o644)
    return True


def clear_drain(control_dir: Path) -> bool:
    """Remove the drain flag; False if it was not set."""
    try:
        (control_dir / DRAIN_FILE).unlink()
    except FileNotFoundError:
        return False
    return True


class StateFile:
    """The agent's side: thread-safe transitions, each written through to the file."""

    def __init__(self, control_dir: Path, *, worker_id: str, pool: str | None, driver: str) -> None:
        from worker import __version__

        self.control_dir = control_dir
        self.path = control_dir / STATE_FILE
        self._lock = threading.Lock()
        self._written = 0.0
        self._task_since = 0.0  # monotonic time the task in hand started
        self._task_shown = False  # the file shows the task in hand
        self.current = AgentState(worker_id=worker_id, pool=pool, driver=driver, version=__version__,
                                  pid=os.getpid())

    def start(self) -> None:
        """The agent runs (not merely checked with --check): the file appears, state `starting`."""
        try:
            self.control_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("cannot create the control directory %s: %s", self.control_dir, exc)
        other = None
        try:
            other = read_state(self.control_dir)
        except (OSError, ValueError, TypeError):
            pass  # unreadable or from an older format: ours replaces it
        if other is not None and other.state != "stopped" and other.pid != os.getpid() and pid_alive(other.pid):
            log.warning("control directory %s is also used by the running agent pid %d (%s): give each agent "
                        "its own control_dir, or their states and drain flags mix", self.control_dir, other.pid,
                        other.worker_id)
        with self._lock:
            self._noticed(drain_requested(self.control_dir))
            self._write()

    # -- what the receive loop asks --------------------------------------------------------------
    def may_receive(self) -> bool:
        """Checked before each receive call: False while draining (the state then says `drained`)."""
        draining = drain_requested(self.control_dir)
        with self._lock:
            self._noticed(draining)
            if self.current.task_id is None:
                self._set("drained" if draining else "idle")
            elif self.current.state in ("busy", "draining"):  # a task in hand: only the label changes
                self._set("draining" if draining else "busy")
        return not draining

    def refresh(self) -> None:
        """Called while a task runs (the watch loop, twice a second): notices a drain request or a
        resume, and keeps updated_at fresh."""
        draining = drain_requested(self.control_dir)
        with self._lock:
            if self.current.task_id is None:
                return
            self._noticed(draining)
            due = not self._task_shown and time.monotonic() - self._task_since >= BUSY_SHOWN_AFTER_S
            self._set("draining" if draining else "busy", force=due)

    def track_heartbeats(self, reporter: Any) -> None:
        """Record the task's heartbeats as reports (wraps ``reporter.heartbeat``, which the status-sender
        thread ticks), so the state file needs no hook in the sender."""
        beat = reporter.heartbeat

        def heartbeat() -> Any:
            status = beat()
            if status is not None:
                self.reported()
            return status

        reporter.heartbeat = heartbeat

    # -- transitions -----------------------------------------------------------------------------
    def task_started(self, task_id: str, attempt: int) -> None:
        """Not written yet: :meth:`refresh` writes it once the task has lasted BUSY_SHOWN_AFTER_S
        (a task of a few milliseconds would cost a write for a state nobody can see)."""
        with self._lock:
            self.current.task_id, self.current.task_attempt, self.current.task_since = task_id, attempt, _now()
            self.current.state = "draining" if self.current.drain_requested else "busy"
            self._task_since, self._task_shown = time.monotonic(), False

    def task_ended(self, finished: bool) -> None:
        with self._lock:
            if finished:
                self.current.tasks_done += 1
            else:
                self.current.tasks_failed += 1
            self.current.task_id = self.current.task_attempt = self.current.task_since = None
            self._set("drained" if self.current.drain_requested else "idle", force=True)

    def reported(self) -> None:
        """A heartbeat or presence report was queued (called from the status-sender thread)."""
        with self._lock:
            self.current.last_report_at = _now()
            self._set(self.current.state)

    def stopped(self) -> None:
        with self._lock:
            self.current.task_id = self.current.task_attempt = self.current.task_since = None
            self._set("stopped", force=True)

    def _noticed(self, draining: bool) -> None:  # with self._lock held
        if draining != self.current.drain_requested:
            log.info("drain %s: %s", "requested" if draining else "lifted",
                     "taking no new task" if draining else "taking tasks again")
        self.current.drain_requested = draining

    def _set(self, state: str, force: bool = False) -> None:  # with self._lock held
        changed = state != self.current.state
        self.current.state = state
        if changed or force or time.monotonic() - self._written >= REFRESH_S:
            self._write()

    def _write(self) -> None:
        self.current.updated_at = _now()
        try:
            # vars(): the fields are flat values, so asdict()'s deep copy is not needed
            write_atomic(self.path, json.dumps(vars(self.current), indent=1) + "\n", durable=False)
            self._written = time.monotonic()
            self._task_shown = self.current.task_id is not None
        except OSError as exc:  # the state file is for operators: never let it stop the agent
            log.warning("cannot write the state file %s: %s", self.path, exc)

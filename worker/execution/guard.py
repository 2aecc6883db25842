"""The task guard: a task's processes die when their agent dies, even by SIGKILL.

A program run by the ``process`` driver leads a session of its own (so that it can be killed as a
tree and never reads the agent's terminal); a container of the ``docker`` driver belongs to the
engine. Neither notices when the agent that supervises it is killed: the program would run on
unsupervised and the next attempt of its task would run beside it.

So each agent (POSIX) has one small helper process, started with the first task, in a session of
its own: the guard. The agent tells it, over a pipe, what each running task consists of (its
session id, the token in its environment, a cleanup command such as ``docker rm -f NAME``) and
when the task is over. The pipe's write end lives only in the agent (close-on-exec), so when the
agent dies the guard reads end-of-file and kills what is still registered, then exits; after a
clean stop nothing is registered and it just exits. The guard runs this file as a script, with
the standard library only, so it starts in a few tens of milliseconds.

bwrap tasks do not need it (``--die-with-parent``: the sandbox's pid namespace dies with bwrap);
jobobject tasks neither (``KILL_ON_JOB_CLOSE``: the job dies with the agent's last handle to it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

_GUARD: TaskGuard | None = None
_GUARD_LOCK = threading.Lock()


class TaskGuard:
    """The agent's side: starts the guard process once, then registers and releases tasks."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._pipe: IO[str] | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-S", str(Path(__file__).resolve())], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True,
                text=True, env={"PATH": os.environ.get("PATH", os.defpath)},
            )
            self._pipe = self._proc.stdin

    def _send(self, message: dict) -> None:
        with self._lock:
            self._ensure()
            try:
                self._pipe.write(json.dumps(message) + "\n")  # type: ignore[union-attr]
                self._pipe.flush()  # type: ignore[union-attr]
            except (BrokenPipeError, OSError):  # the guard died: the next message starts a new one
                self._proc = None

    def watch(self, key: str, *, session: int | None = None, token: str | None = None,
              cleanup: list[str] | None = None) -> None:
        """Kill this if the agent dies: a session (and its process group), every process whose
        environment carries ``token``, and/or run ``cleanup`` (argv). Repeatable: fields add up."""
        self._send({"op": "watch", "key": key, "session": session, "token": token, "cleanup": cleanup})

    def release(self, key: str) -> None:
        """The task is over (its processes were killed or ended): nothing to do for it any more."""
        self._send({"op": "release", "key": key})

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None


def task_guard() -> TaskGuard:
    """This process's guard (one per agent)."""
    global _GUARD
    with _GUARD_LOCK:
        if _GUARD is None:
            _GUARD = TaskGuard()
        return _GUARD


# --- the guard process (standard library only) ----------------------------------------------------
def _processes_of(sessions: set[int], tokens: set[bytes]) -> list[int]:
    me, found = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        try:
            if sessions and os.getsid(pid) in sessions:
                found.append(pid)
                continue
            if tokens:
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    environ = fh.read()
                if any(token in environ for token in tokens):
                    found.append(pid)
        except OSError:
            continue
    return found


def kill_registered(tasks: dict[str, dict]) -> None:
    sessions = {t["session"] for t in tasks.values() if t.get("session")}
    tokens = {f"={t['token']}".encode() for t in tasks.values() if t.get("token")}
    for _ in range(5):  # a forking program can race one sweep
        for sid in sessions:
            try:
                os.killpg(sid, signal.SIGKILL)
            except OSError:
                pass
        victims = _processes_of(sessions, tokens)
        if not victims:
            break
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    for task in tasks.values():
        for argv in task.get("cleanups", []):
            try:
                subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=60, check=False)
            except (OSError, subprocess.SubprocessError):
                pass


def main(stream: IO[str] = sys.stdin) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the agent's terminal is the agent's business
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # so is a clean stop: the agent releases what it ends
    tasks: dict[str, dict] = {}
    for line in stream:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        key = str(message.get("key"))
        if message.get("op") == "release":
            tasks.pop(key, None)
            continue
        task = tasks.setdefault(key, {"cleanups": []})
        for field in ("session", "token"):
            if message.get(field):
                task[field] = message[field]
        if message.get("cleanup"):
            task["cleanups"].append(message["cleanup"])
    kill_registered(tasks)  # end of file: the agent is gone


if __name__ == "__main__":
    main()

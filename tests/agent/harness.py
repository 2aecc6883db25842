"""A small pool for the agent's tests: a task/response queue pair on the real emulator (queue-level
policies with least rights, like production), per-task SAS URLs on the real Azurite, a status
collector on the response queue, and agents run in-process or as ``python -m worker agent``."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusSubQueue

from worker.agent import run_agent
from worker.config import AgentConfig, dump_agent_config, parse_agent_config
from worker.emulator.launcher import EmulatorProcess, generate_key
from worker.protocol import CONTENT_TYPE, Presence, Status, Task, TaskState, encode
from worker.storage import Storage
from worker.wire import decode_reports


def least_rights_queues(queue_factory: Callable[..., str], **task_queue_props: Any) -> tuple[str, str]:
    tasks = queue_factory(prefix="tasks", policies=[{"name": "worker", "key": generate_key(), "rights": ["Listen"]}],
                          **task_queue_props)
    responses = queue_factory(prefix="resp", policies=[{"name": "worker", "key": generate_key(), "rights": ["Send"]}])
    return tasks, responses


class StatusCollector:
    """Receives every status (and presence report) from the response queue in a thread (as the site's
    watcher would)."""

    def __init__(self, client: ServiceBusClient, queue: str) -> None:
        self.statuses: list[Status] = []
        self.presences: list[Presence] = []
        self._client = client
        self._queue = queue
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with self._client.get_queue_receiver(self._queue, max_wait_time=0.5) as receiver:
            while not self._stop.is_set():
                for message in receiver.receive_messages(max_message_count=20, max_wait_time=0.5):
                    reports = decode_reports(message)  # one status, one presence, or a task's statuses
                    receiver.complete_message(message)
                    with self._cond:
                        for report in reports:
                            (self.presences if isinstance(report, Presence) else self.statuses).append(report)  # type: ignore[arg-type]
                        self._cond.notify_all()

    def wait_presence(self, predicate: Callable[[Presence], bool], timeout: float = 30) -> Presence:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for presence in self.presences:
                    if predicate(presence):
                        return presence
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching presence within {timeout}s; seen {self.presences}")
                self._cond.wait(left)

    def of(self, task_id: str) -> list[Status]:
        with self._cond:
            return [s for s in self.statuses if s.task_id == task_id]

    def wait_for(self, task_id: str, predicate: Callable[[Status], bool], timeout: float = 30) -> Status:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for status in self.statuses:
                    if status.task_id == task_id and predicate(status):
                        return status
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(s.state.value, s.seq) for s in self.statuses if s.task_id == task_id]
                    raise AssertionError(f"no matching status for {task_id} within {timeout}s; seen {seen}")
                self._cond.wait(left)

    def wait_terminal(self, task_id: str, timeout: float = 30) -> Status:
        return self.wait_for(task_id, lambda s: s.state.terminal, timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


@dataclass
class Pool:
    emulator: EmulatorProcess
    storage: Storage
    competition: str
    task_queue: str
    response_queue: str
    tmp: Path
    client: ServiceBusClient = field(init=False)
    collector: StatusCollector = field(init=False)
    _agents: list[tuple[threading.Thread, threading.Event]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = ServiceBusClient.from_connection_string(self.emulator.connection_string())
        self.collector = StatusCollector(self.client, self.response_queue)

    # -- configuration ---------------------------------------------------------------------------
    def config_dict(self, **overrides: Any) -> dict[str, Any]:
        data: dict[str, Any] = {
            "worker_id": f"w-{uuid.uuid4().hex[:6]}",
            "servicebus": {
                "task_queue": self.task_queue,
                "response_queue": self.response_queue,
                "task_queue_connection_string": self.emulator.connection_string("worker", self.task_queue),
                "response_queue_connection_string": self.emulator.connection_string("worker", self.response_queue),
            },
            "work_dir": str(self.tmp / "work"),
            "cache": {"dir": str(self.tmp / "cache"), "max_bytes": "50MiB"},
            "heartbeat_interval_s": 0.5,
            "log_flush_interval_s": 0.2,
            "cancel_poll_interval_s": 0.5,
            "receive_wait_s": 1,
            "shutdown_grace_s": 10,
        }
        for key, value in overrides.items():
            data[key] = value
        return data

    def config(self, **overrides: Any) -> AgentConfig:
        return parse_agent_config(self.config_dict(**overrides))

    def write_config(self, path: Path, **overrides: Any) -> Path:
        path.write_text(dump_agent_config(self.config(**overrides)))
        return path

    # -- tasks -----------------------------------------------------------------------------------
    def task(self, command: list[str], task_id: str | None = None, time_limit_s: float = 60, **kwargs: Any) -> Task:
        task_id = task_id or f"task-{uuid.uuid4().hex[:10]}"
        urls = self.storage.task_urls(self.competition, task_id, 1, time_limit_s)
        return Task(task_id=task_id, competition=self.competition, command=command, stdout_url=urls.stdout_url,
                    stderr_url=urls.stderr_url, control_url=urls.control_url, output_url=urls.output_url,
                    time_limit_s=time_limit_s, reply_to=self.response_queue, **kwargs)

    def python(self, code: str, **kwargs: Any) -> Task:
        return self.task([sys.executable, "-c", code], **kwargs)

    def send(self, task: Task | bytes) -> None:
        body = encode(task) if isinstance(task, Task) else task
        message_id = task.message_id if isinstance(task, Task) else uuid.uuid4().hex
        with self.client.get_queue_sender(self.task_queue) as sender:
            sender.send_messages(ServiceBusMessage(body, content_type=CONTENT_TYPE, message_id=message_id))

    def log(self, task: Task, stream: str = "stdout") -> bytes:
        return self.storage.read_log(self.competition, task.task_id, task.attempt, stream)  # type: ignore[arg-type]

    def task_messages(self, wait: float = 1.0, sub_queue: ServiceBusSubQueue | None = None) -> list[Any]:
        """Receive (and complete) what is left on the task queue or its dead-letter queue."""
        with self.client.get_queue_receiver(self.task_queue, sub_queue=sub_queue, max_wait_time=wait) as receiver:
            messages = receiver.receive_messages(max_message_count=10, max_wait_time=wait)
            for message in messages:
                receiver.complete_message(message)
            return messages

    # -- agents ----------------------------------------------------------------------------------
    def start_agent(self, **overrides: Any) -> threading.Event:
        stop = threading.Event()
        result: dict[str, int] = {}
        config = self.config(**overrides)
        thread = threading.Thread(target=lambda: result.setdefault("rc", run_agent(config, stop)), daemon=True)
        thread.start()
        self._agents.append((thread, stop))
        return stop

    def spawn_agent(self, config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
        with log_path.open("wb") as log:
            return subprocess.Popen([sys.executable, "-m", "worker", "agent", "--config", str(config_path)],
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def close(self) -> None:
        for _thread, stop in self._agents:
            stop.set()
        for thread, _stop in self._agents:
            thread.join(30)
        self.collector.close()
        self.client.close()


def states(statuses: list[Status], heartbeats: bool = False) -> list[TaskState]:
    return [s.state for s in statuses if heartbeats or not s.heartbeat]

"""The receive loop: one task at a time, the receiver owned by this thread alone.

For each message: decode (invalid -> dead-letter with the readable reason), run the task in a
thread while this thread keeps the lock alive and watches for shutdown, then settle according to
the run's outcome. Lost connections are reopened with exponential backoff (:mod:`worker.reconnect`).

While it has no task the agent reports its presence (worker id, host facts) on the response queue at
start, every ``heartbeat_interval_s`` and once more, ``left``, on a clean shutdown; the status-sender
thread sends them, so waiting for a task never waits for them.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from azure.servicebus import ServiceBusReceivedMessage, ServiceBusReceiver
from azure.servicebus.exceptions import MessageLockLostError

from worker.agent.cache import InputCache
from worker.agent.hostfacts import host_facts
from worker.agent.lifecycle import Outcome, StopReason, TaskRun
from worker.agent.lock import LockKeeper
from worker.agent.reporter import TaskReporter
from worker.agent.sender import StatusSender
from worker.agent.state import StateFile
from worker.config import AgentConfig
from worker.execution import get_driver
from worker.execution.base import ExecutionDriver
from worker.protocol import Activity, Presence, ProtocolError, Task, TaskState
from worker.reconnect import run_with_reconnect
from worker.servicebus import response_client, task_client, task_receiver
from worker.wire import decode_task_message

log = logging.getLogger(__name__)

MAX_DEAD_LETTER_DESCRIPTION = 1000


class Agent:
    def __init__(self, config: AgentConfig, stop_event: threading.Event | None = None,
                 driver: ExecutionDriver | None = None) -> None:
        self.config = config
        self.stop_event = stop_event or threading.Event()
        self.worker_id = config.resolved_worker_id()
        self.driver = driver or get_driver(config.execution.driver)
        self.driver.check_available()
        self.host = host_facts(self.driver, config.execution.gpus)
        self.cache = InputCache(config.resolved_cache_dir(), config.cache.max_bytes)
        self.tasks_handled = 0
        self.metrics = None  # worker.agent.metrics.AgentMetrics with `pool agent --metrics-port`
        self._busy = False  # a task message is in hand (no idle presence reports meanwhile)
        self._presence_seq = 0
        self._presence_lock = threading.Lock()
        self.reconnects = 0
        # Kept for the agent's life: a task's preparation round trips start no threads of their own.
        self._prepare_pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="prepare")
        self.state = StateFile(config.resolved_control_dir(), worker_id=self.worker_id, pool=config.pool,
                               driver=self.driver.name)

    # -- outer loop: connections ---------------------------------------------------------------
    def run(self) -> int:
        settings = self.config.servicebus
        self.config.work_dir.mkdir(parents=True, exist_ok=True)
        self.state.start()
        log.info("agent %s: queue %s, responses %s, driver %s", self.worker_id, settings.task_queue,
                 settings.response_queue, self.driver.name)
        response = response_client(settings)
        sender = StatusSender(response)
        if self.metrics is not None:
            sender.on_sent = self.metrics.reported
        sender.warm(settings.response_queue)
        sender.presence(settings.response_queue, self._idle_presence, self.config.heartbeat_interval_s)
        try:
            run_with_reconnect(lambda: self._session(sender), self.stop_event, what="Service Bus",
                               on_reconnect=self._count_reconnect)
        finally:
            sender.presence(settings.response_queue, None)
            if not sender.send_presence(settings.response_queue, self.presence(Activity.LEFT)):
                log.warning("could not tell the site that this worker leaves")
            sender.close()
            response.close()
            self._prepare_pool.shutdown(wait=False)
            self.state.stopped()
        log.info("agent %s stopped after %d task(s)", self.worker_id, self.tasks_handled)
        return 0

    def presence(self, activity: Activity) -> Presence:
        with self._presence_lock:
            seq, self._presence_seq = self._presence_seq, self._presence_seq + 1
        return Presence(worker_id=self.worker_id, activity=activity, interval_s=self.config.heartbeat_interval_s,
                        seq=seq, host=self.host)

    def _idle_presence(self) -> Presence | None:
        """Called by the status-sender thread when a presence report is due."""
        if self._busy:
            return None
        self.state.reported()
        return self.presence(Activity.IDLE)

    def _count_reconnect(self) -> None:
        self.reconnects += 1

    def _session(self, sender: StatusSender) -> None:
        """Receive until stopped; a broken connection raises (worker.reconnect opens a new session)."""
        settings = self.config.servicebus
        client = task_client(settings)
        try:
            with task_receiver(client, settings.task_queue) as receiver:
                log.info("agent %s ready, waiting for tasks", self.worker_id)
                while not self.stop_event.is_set():
                    if not self.state.may_receive():  # drained: hold the link, take nothing
                        self.stop_event.wait(min(1.0, self.config.receive_wait_s))
                        continue
                    for message in receiver.receive_messages(max_message_count=1,
                                                             max_wait_time=self.config.receive_wait_s):
                        self._busy = True
                        try:
                            self._handle(receiver, message, sender)
                        finally:
                            self._busy = False
        finally:
            try:
                client.close()
            except Exception as exc:  # noqa: BLE001 - closing a broken client is best effort
                log.debug("closing a broken client: %r", exc)

    # -- one message ------------------------------------------------------------------------------
    def _handle(self, receiver: ServiceBusReceiver, message: ServiceBusReceivedMessage, sender: StatusSender) -> None:
        if self.stop_event.is_set():  # arrived while we were stopping: let another worker have it
            receiver.abandon_message(message)
            return
        try:
            task = decode_task_message(message)
            assert isinstance(task, Task)
        except ProtocolError as exc:
            log.warning("dead-lettering message %s: %s: %s", message.message_id, exc.reason, exc.description)
            receiver.dead_letter_message(message, reason=exc.reason,
                                         error_description=exc.description[:MAX_DEAD_LETTER_DESCRIPTION])
            return
        log.info("task %s attempt %d received (delivery %s)", task.task_id, task.attempt, message.delivery_count)
        reporter = TaskReporter(sender, task, self.worker_id, self.host, message.delivery_count)
        run = TaskRun(task, reporter, self.config, self.driver, self.cache, self._prepare_pool)
        self.state.task_started(task.task_id, task.attempt)
        self.state.track_heartbeats(reporter)
        result, lost = None, True
        began = time.monotonic()
        try:
            thread = threading.Thread(target=run.run, name=f"task-{task.task_id}", daemon=True)
            thread.start()
            lost = self._watch(run, thread, LockKeeper(receiver, message))
            result = run.result
        finally:
            self.state.task_ended(finished=not lost and result is not None and result.state is TaskState.FINISHED)
        self.tasks_handled += 1
        if self.metrics is not None:
            final = result is not None and not lost and result.outcome is Outcome.COMPLETE
            self.metrics.task_done(result.state.value if final and result.state else None,  # type: ignore[union-attr]
                                   result.kill_reason.value if final and result.kill_reason else None,  # type: ignore[union-attr]
                                   final and result.exit_code not in (None, 0), time.monotonic() - began)  # type: ignore[union-attr]
        if lost or result is None:
            log.warning("task %s: lock lost; not settling (Service Bus redelivers it)", task.task_id)
            return
        try:
            if result.outcome is Outcome.COMPLETE:
                receiver.complete_message(message)
                log.info("task %s: %s", task.task_id, result.state.value if result.state else "done")
            else:
                receiver.abandon_message(message)
                log.info("task %s: handed back (%s)", task.task_id, result.reason)
        except MessageLockLostError as exc:
            log.warning("task %s: lock lost while settling: %s", task.task_id, exc)

    def _watch(self, run: TaskRun, thread: threading.Thread, keeper: LockKeeper) -> bool:
        """Renew the lock until the task thread ends; apply the shutdown grace. True if the lock was lost."""
        renew_at = time.monotonic() + keeper.next_wait()
        grace_deadline: float | None = None
        while thread.is_alive():
            now = time.monotonic()
            if grace_deadline is None and self.stop_event.is_set():
                grace_deadline = now + self.config.shutdown_grace_s
                log.info("stopping: the current task has %.0f s to finish", self.config.shutdown_grace_s)
            if grace_deadline is not None and now >= grace_deadline:
                run.stop(StopReason.SHUTDOWN)
                grace_deadline = float("inf")
            if now >= renew_at:
                keeper.renew(on_lost=lambda why: run.stop(StopReason.LOCK_LOST))
                renew_at = time.monotonic() + keeper.next_wait()
            wake = min(renew_at, grace_deadline if grace_deadline is not None else now + 0.5)
            thread.join(max(0.01, wake - time.monotonic()))
            self.state.refresh()
        return keeper.lost

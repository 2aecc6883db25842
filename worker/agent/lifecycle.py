"""One delivery of one task, from ``received`` to its final status.

The run never touches the Service Bus receiver: it returns an :class:`Outcome` and the receive
loop (which owns the receiver and renews the lock meanwhile) settles the message accordingly.

=====================================  ==================================  ==================
what happened                          statuses                            message
=====================================  ==================================  ==================
program exited 0                       ... running, uploading, finished    completed
program exited non-zero / was killed   ... failed (exit code, kill reason)  completed (no retry)
  for memory, output flood...
wall-clock limit                       ... timed_out                       completed
cancelled by the site                  ... cancelled                       completed
unusable bundle, program won't start   ... failed (reason)                 completed
storage failure, bundle download,      ... failed (``failure``: the code)      completed; the site
  agent error (statuses still go out)                                      retries after a back-off
Service Bus failure (no status goes)   (no final status)                   abandoned -> retried
agent shutting down past its grace     (no final status)                   abandoned -> retried
=====================================  ==================================  ==================
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import tempfile
import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from worker.agent import blobs
from worker.agent.cache import InputCache
from worker.agent.cancel import CancelWatcher, cancelled_before_run
from worker.agent.errors import InfrastructureError, TaskRejected
from worker.agent.heartbeat import Heartbeat
from worker.agent.limits import effective_limits
from worker.agent.logs import FLOOD_FACTOR, LogStreamer
from worker.agent.outputs import OutputTooLarge, pack
from worker.agent.reporter import TaskReporter
from worker.agent.workspace import Workspace
from worker.config import AgentConfig
from worker.execution.base import Execution, ExecutionDriver, ExecutionResult, ExecutionSpec
from worker.execution.supervisor import Supervisor
from worker.protocol import KillReason, Task, TaskState

log = logging.getLogger(__name__)


class StopReason(enum.Enum):
    """Why the agent stopped a task it had not finished (the task is handed back, not failed)."""

    SHUTDOWN = "shutdown"  # the agent is stopping and the task's grace period ran out
    LOCK_LOST = "lock lost"  # the message lock could not be renewed: Service Bus redelivers the task
    INFRASTRUCTURE = "infrastructure"  # its logs or statuses could not be written


class Outcome(enum.Enum):
    COMPLETE = "complete"  # a final status was sent: settle for good
    ABANDON = "abandon"  # hand back: Service Bus redelivers (and dead-letters after max deliveries)


@dataclass
class RunResult:
    outcome: Outcome
    state: TaskState | None = None
    reason: str | None = None
    kill_reason: KillReason | None = None
    exit_code: int | None = None


@dataclass
class _Prepared:
    streamer: LogStreamer
    spec: ExecutionSpec


_FINAL_STATE = {
    KillReason.TIME: TaskState.TIMED_OUT,
    KillReason.CANCELLED: TaskState.CANCELLED,
}


class TaskRun:
    def __init__(self, task: Task, reporter: TaskReporter, config: AgentConfig, driver: ExecutionDriver,
                 cache: InputCache, executor: Executor | None = None) -> None:
        """``executor``: threads for the independent round trips before the start (the agent keeps
        one for all its tasks, so no thread is started per task); without one a private pool is used."""
        self.task = task
        self.reporter = reporter
        reporter.on_failure = self._infrastructure_failed  # a status that could not be sent
        self.executor = executor
        self.config = config
        self.driver = driver
        self.cache = cache
        self.workspace = Workspace(config.work_dir, task)
        self._supervisor: Supervisor | None = None
        self._stop_why: StopReason | None = None
        self._lock = threading.Lock()
        self._infra_error: InfrastructureError | None = None
        self.result: RunResult | None = None

    # -- called from other threads -------------------------------------------------------------
    def stop(self, why: StopReason) -> None:
        """Stop the program and hand the task back; the first reason given is the one reported. Idempotent."""
        with self._lock:
            if self._stop_why is None:
                self._stop_why = why
            supervisor = self._supervisor
        if supervisor is not None:
            supervisor.kill(KillReason.SHUTDOWN)

    def _infrastructure_failed(self, error: InfrastructureError) -> None:
        """Logs or statuses cannot be written: stop the program; the run hands the task back."""
        self._infra_error = self._infra_error or error
        self.stop(StopReason.INFRASTRUCTURE)

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> RunResult:
        try:
            self.result = self._run()
        except InfrastructureError as exc:
            log.warning("task %s: infrastructure error: %s", self.task.task_id, exc)
            self.result = self._infrastructure_final(exc.code, str(exc))
        except Exception as exc:  # a bug must not lose the task: report it, or hand it back
            log.exception("task %s: unexpected error", self.task.task_id)
            self.result = self._infrastructure_final("agent_error", f"agent error: {exc!r}")
        finally:
            try:  # every status of this run is out before its message is settled (a no-op after a final one)
                self.reporter.flush(timeout=30)
            except InfrastructureError:
                pass
            try:
                self.workspace.remove()
            except OSError as exc:
                log.warning("cannot remove %s: %s", self.workspace.root, exc)
        return self.result

    def _infrastructure_final(self, code: str, reason: str) -> RunResult:
        """Not the program's fault: say so in a final status (the site retries the task after a
        back-off, as a new attempt); if no status can be sent, hand the message back instead."""
        state = self.reporter.state
        if self.reporter.error is None and state is not None and not state.terminal:
            try:
                return self._final(TaskState.FAILED, reason=reason, failure=code)
            except InfrastructureError as exc:
                log.warning("task %s: cannot report the failure (%s); handing it back", self.task.task_id, exc)
        return RunResult(Outcome.ABANDON, reason=reason)

    def _final(self, state: TaskState, **fields: object) -> RunResult:
        self.reporter.finish(state, **fields)  # waits until it and every status before it were sent
        return RunResult(Outcome.COMPLETE, state=state, reason=fields.get("reason"),  # type: ignore[arg-type]
                         kill_reason=fields.get("kill_reason"), exit_code=fields.get("exit_code"))  # type: ignore[arg-type]

    def _run(self) -> RunResult:
        self.reporter.send(TaskState.RECEIVED)
        with Heartbeat(self.reporter.sender, self.reporter, self.config.heartbeat_interval_s):
            return self._run_received()

    def _run_received(self) -> RunResult:
        prepared = self._prepare()
        if isinstance(prepared, RunResult):  # cancelled while queued, or unusable inputs
            return prepared
        execution = self._start(prepared)
        if isinstance(execution, RunResult):  # stopped before running, or the program cannot start
            return execution
        return self._supervise(prepared, execution)

    def _prepare(self) -> _Prepared | RunResult:
        """``preparing``: the log blobs, the cancel check, the workspace and inputs, the spec."""
        task = self.task
        self.reporter.send(TaskState.PREPARING)
        streamer = LogStreamer(blobs.AppendBlob(task.stdout_url), blobs.AppendBlob(task.stderr_url),
                               cap_bytes=self.config.execution.limits.log_bytes,
                               interval_s=self.config.log_flush_interval_s, on_failure=self._infrastructure_failed)
        # The cancel check (one storage request; it also fails the task early if storage cannot be
        # reached) runs while the workspace and the spec are made: the program still never starts
        # before its answer, and no bundle is fetched before it. The log blobs are made with their
        # first bytes (blobs.AppendBlob), so a silent program costs no other request; a redelivery
        # makes them now, empty, replacing what an earlier delivery wrote, beside the check.
        with contextlib.ExitStack() as stack:
            pool = self.executor or stack.enter_context(ThreadPoolExecutor(3, thread_name_prefix="prepare"))
            checked = pool.submit(cancelled_before_run, task.control_url)
            created = ([pool.submit(stream.blob.create) for stream in streamer.streams.values()]
                       if self.reporter.delivery_count else [])
            self.workspace.create()
            for future in created:
                future.result()  # raises InfrastructureError if storage is unreachable
            made: ExecutionSpec | TaskRejected | None = None
            signal = checked.result() if task.program is not None or task.inputs else None
            if signal is None:
                made = self._make_spec()
                signal = checked.result()  # raises InfrastructureError if storage is unreachable
        if signal is not None:  # cancelled while queued: never runs
            return self._final(TaskState.CANCELLED, kill_reason=KillReason.CANCELLED, reason=signal.reason)
        if isinstance(made, TaskRejected):
            return self._reject(streamer, made)
        assert made is not None
        return _Prepared(streamer, made)

    def _make_spec(self) -> ExecutionSpec | TaskRejected:
        """The bundles placed into the workspace and the program's spec, or why the task cannot run."""
        task, limits_cfg = self.task, self.config.execution.limits
        limits = effective_limits(task, self.config)
        try:
            self.workspace.prepare(task, self.cache, limits.scratch_bytes or limits_cfg.scratch_bytes or 2**62)
            return ExecutionSpec(
                task_id=task.task_id,
                argv=list(task.command),
                scratch_dir=self.workspace.scratch,
                output_dir=self.workspace.output,
                mounts=self.workspace.mounts(),
                env={**task.env, "POOL_ATTEMPT": str(task.attempt)},
                limits=limits,
                network=task.resources.network and self.config.execution.network,
                gpus=task.resources.gpus if self.config.execution.gpus else 0,
                image=self.config.execution.image,
            )
        except TaskRejected as exc:
            return exc

    def _start(self, prepared: _Prepared) -> Execution | RunResult:
        """Start the program, unless the agent stopped the task meanwhile."""
        if self._stop_why is not None:  # shutdown or lock lost while preparing
            return RunResult(Outcome.ABANDON, reason=f"stopped before running ({self._stop_why.value})")
        try:
            return self.driver.start(prepared.spec)
        except (OSError, ValueError) as exc:  # TaskRejected (a ValueError) included: the driver cannot run it
            return self._reject(prepared.streamer, TaskRejected(f"cannot start the program: {exc}"))

    def _reject(self, streamer: LogStreamer, exc: TaskRejected) -> RunResult:
        streamer.write("stderr", f"[pool-agent] {exc}\n".encode())
        streamer.close()
        return self._final(TaskState.FAILED, reason=str(exc))

    def _supervise(self, prepared: _Prepared, execution: Execution) -> RunResult:
        """``running``: logs streamed, limits and cancellation watched, until the program ends."""
        task, streamer, limits = self.task, prepared.streamer, prepared.spec.limits
        supervisor = Supervisor(execution, wall_time_s=limits.wall_time_s, on_output=streamer.write,
                                max_output_bytes=FLOOD_FACTOR * self.config.execution.limits.log_bytes)
        with self._lock:
            self._supervisor = supervisor
            pending_stop = self._stop_why
        if pending_stop is not None:
            supervisor.kill(KillReason.SHUTDOWN)
        streamer.start()
        try:
            self.reporter.send(TaskState.RUNNING)
        except InfrastructureError:
            supervisor.kill(KillReason.SHUTDOWN)
            supervisor.run()
            raise
        watcher = CancelWatcher(task.control_url, self.config.cancel_poll_interval_s,
                                lambda sig: supervisor.kill(KillReason.CANCELLED))
        with watcher:
            result = supervisor.run()
        streamer.close()  # raises InfrastructureError if the logs cannot be written
        if self._infra_error is not None:
            raise self._infra_error
        log.info("task %s: program ended: exit=%s signal=%s kill=%s in %.1fs", task.task_id, result.exit_code,
                 result.signal, result.kill_reason, result.duration_s)
        if result.kill_reason is KillReason.SHUTDOWN:
            why = self._stop_why.value if self._stop_why else "shutdown"
            return RunResult(Outcome.ABANDON, reason=f"agent stopped the task ({why})")
        return self._finish(result, watcher)

    def _finish(self, result: ExecutionResult, watcher: CancelWatcher) -> RunResult:
        fields: dict[str, object] = {"exit_code": result.exit_code, "kill_reason": result.kill_reason}
        if result.kill_reason is KillReason.CANCELLED:
            reason = watcher.signal.reason if watcher.signal else "cancelled"
            return self._final(TaskState.CANCELLED, reason=reason, **fields)
        output_bytes = None
        if self.task.output_url and not self._nothing_to_upload():
            self.reporter.send(TaskState.UPLOADING)
            try:
                output_bytes = self._upload()
            except OutputTooLarge as exc:
                return self._final(TaskState.FAILED, reason=str(exc), **fields)
        elif self.task.output_url:
            output_bytes = 0  # output/ is empty: no archive
        fields["output_bytes"] = output_bytes
        if result.kill_reason is not None:
            state = _FINAL_STATE.get(result.kill_reason, TaskState.FAILED)
            return self._final(state, reason=kill_message(result, self.task), **fields)
        if result.exit_code == 0:
            return self._final(TaskState.FINISHED, **fields)
        reason = (f"the program exited with code {result.exit_code}" if result.exit_code is not None
                  else f"the program was killed by signal {result.signal}")
        return self._final(TaskState.FAILED, reason=reason, **fields)

    def _nothing_to_upload(self) -> bool:
        """output/ is empty and no earlier delivery of this attempt can have left an archive behind
        (a redelivery always uploads, so the blob never shows another delivery's output)."""
        if self.reporter.delivery_count:
            return False
        try:
            with os.scandir(self.workspace.output) as entries:
                return next(entries, None) is None
        except FileNotFoundError:  # the program removed output/ itself
            return True

    def _upload(self) -> int:
        assert self.task.output_url
        with tempfile.TemporaryDirectory(dir=self.workspace.root, prefix=".upload-") as tmp:
            archive = Path(tmp) / "output.tar.gz"
            size = pack(self.workspace.output, archive, self.config.execution.limits.output_bytes)
            blobs.upload_file(self.task.output_url, archive)
            return size


def kill_message(result: ExecutionResult, task: Task) -> str:
    reason = result.kill_reason
    if reason is KillReason.TIME:
        return f"time limit exceeded ({result.duration_s:.1f} s)"
    if reason is KillReason.OUTPUT:
        return f"the program kept writing output far past the log limit (killed after {FLOOD_FACTOR}x the cap)"
    return result.detail or f"killed: {reason.value if reason else 'unknown'}"

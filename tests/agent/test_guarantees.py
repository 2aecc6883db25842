"""Guarantees the docs claim, each with a test that fails when it is broken (tried by breaking the code
in a copy): one task at a time per agent (no prefetch, no second lock while busy), and cancellation
within 5 s with the agent's *default* control-poll interval."""

from __future__ import annotations

import threading
import time

import pytest

from tests.agent.harness import states
from worker.config import AgentConfig
from worker.protocol import TaskState

S = TaskState
DEFAULT_CANCEL_POLL_S = AgentConfig.model_fields["cancel_poll_interval_s"].default


@pytest.mark.slow
def test_one_task_at_a_time_the_second_message_stays_unlocked_while_the_first_runs(pool):
    """Two queued tasks, one agent: while the first runs, the broker holds exactly one lock and the
    second message is still available to any other worker (no prefetch, no early lock)."""
    first = pool.python("import time; time.sleep(3); print('first')")
    second = pool.python("print('second')")
    pool.send(first)
    pool.send(second)
    pool.start_agent()
    pool.collector.wait_for(first.task_id, lambda s: s.state is S.RUNNING, timeout=30)
    seen = []
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:  # sample the broker's view for 2 s of the first task's run
        queue = pool.emulator.metrics()[pool.task_queue.lower()]
        seen.append((int(queue["locked_messages"]), int(queue["active_messages"])))
        time.sleep(0.1)
    assert set(seen) == {(1, 1)}, f"(locked, active) while the first task ran: {sorted(set(seen))}"
    assert pool.collector.of(second.task_id) == []  # not received either
    assert pool.collector.wait_terminal(first.task_id, timeout=30).state is S.FINISHED
    assert pool.collector.wait_terminal(second.task_id, timeout=30).state is S.FINISHED
    received = [s for s in pool.collector.statuses if s.state is S.RECEIVED]
    assert [s.task_id for s in received] == [first.task_id, second.task_id]  # strictly one after the other


@pytest.mark.slow
def test_cancellation_within_5s_with_the_default_control_poll_interval(pool, monkeypatch):
    """The worst case: the request lands just after a poll of the control blob, so it waits a whole
    default interval for the next one (a spy on the agent's real blob read tells when polls happen)."""
    from worker.agent import blobs

    polls = threading.Event()
    real_read = blobs.read_control

    def spy(url):  # type: ignore[no-untyped-def]
        signal = real_read(url)
        polls.set()
        return signal

    monkeypatch.setattr(blobs, "read_control", spy)
    task = pool.python("import time; time.sleep(120)")
    pool.start_agent(cancel_poll_interval_s=DEFAULT_CANCEL_POLL_S)  # the harness shortens it; not here
    pool.send(task)
    pool.collector.wait_for(task.task_id, lambda s: s.state is S.RUNNING, timeout=30)
    polls.clear()
    assert polls.wait(DEFAULT_CANCEL_POLL_S + 5), "the agent does not poll its control blob"
    asked = time.monotonic()  # right after a poll: the longest wait for the next one
    pool.storage.cancel(pool.competition, task.task_id, 1, reason="user asked")
    final = pool.collector.wait_terminal(task.task_id, timeout=15)
    took = time.monotonic() - asked
    assert final.state is S.CANCELLED and final.reason == "user asked"
    assert took < 5, f"cancellation took {took:.1f} s with the default poll interval {DEFAULT_CANCEL_POLL_S} s"
    assert S.RUNNING in states(pool.collector.of(task.task_id))

"""The local stack's restart policy for agents, with real child processes standing in for agents
(a shell that writes the agent's "ready" log line, or exits before it): an agent that had been ready
is always restarted at once; one that never gets ready is restarted after doubling pauses and given
up only after MAX_FAILED_STARTS such exits in a row."""

from __future__ import annotations

import itertools
import subprocess
import time

import pytest

from worker.local import stack as stack_module
from worker.local.stack import MAX_FAILED_STARTS, READY_LINE, AgentProcess, LocalStack


@pytest.fixture
def local(tmp_path, monkeypatch):
    monkeypatch.setattr(stack_module, "RESTART_BACKOFF_S", (0.05, 0.2))
    lines: list[str] = []
    stack = LocalStack(tmp_path, workers=1, on_output=lines.append)
    stack.lines = lines  # type: ignore[attr-defined]
    behaviour = {"ready": True}

    def start_agent(agent: AgentProcess) -> None:  # the real bookkeeping, a stand-in program
        agent.started_at, agent.restart_at = time.monotonic(), None
        with open(agent.log_path, "ab") as log:
            agent.log_offset = log.tell()
            script = f"echo '{READY_LINE.decode()}'; sleep 60" if behaviour["ready"] else "exit 3"
            agent.process = subprocess.Popen(["sh", "-c", script], stdout=log, start_new_session=True)

    monkeypatch.setattr(stack, "start_agent", start_agent)
    stack.behaviour = behaviour  # type: ignore[attr-defined]
    agent = AgentProcess("p-w1", "p", tmp_path / "config.yaml", tmp_path / "agent.log")
    stack.agents["p"] = [agent]
    yield stack, agent
    if agent.process and agent.process.poll() is None:
        agent.process.kill()
        agent.process.wait()


def _wait_ready_line(agent: AgentProcess) -> None:
    deadline = time.monotonic() + 10
    while not agent.reached_ready() and time.monotonic() < deadline:
        time.sleep(0.02)


def _run_until(stack: LocalStack, agent: AgentProcess, done, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        if agent.process:
            agent.process.poll()
        stack.restart_dead_agents()
        time.sleep(0.02)


def test_an_agent_that_was_ready_is_always_restarted(local):
    stack, agent = local
    stack.start_agent(agent)
    for _ in range(MAX_FAILED_STARTS + 3):  # more crashes than the give-up count: never given up
        _wait_ready_line(agent)
        old = agent.process
        old.kill()
        old.wait()
        assert stack.restart_dead_agents() == ["p-w1"]  # at once, no pause
        assert agent.process is not old and agent.alive and not agent.given_up
    assert agent.failed_starts == 0


def test_an_agent_that_never_gets_ready_backs_off_then_is_given_up(local):
    stack, agent = local
    stack.behaviour["ready"] = False
    stack.start_agent(agent)
    starts: list[float] = []
    last = agent.process

    def progressed() -> bool:
        nonlocal last
        if agent.process is not last:
            starts.append(time.monotonic())
            last = agent.process
        return agent.given_up

    _run_until(stack, agent, progressed)
    assert agent.given_up and agent.failed_starts == MAX_FAILED_STARTS
    assert len(starts) == MAX_FAILED_STARTS - 1  # restarted after each failure but the last
    pauses = [b - a for a, b in itertools.pairwise(starts)]
    assert pauses[-1] >= 0.15 and pauses[0] < pauses[-1]  # growing pauses, capped at 0.2 s here
    assert any("not restarting it" in line for line in stack.lines)
    assert stack.restart_dead_agents() == []  # given up stays given up

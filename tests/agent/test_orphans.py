"""No orphaned programs: when an agent is SIGKILLed mid-task, every process of its task dies too —
the program, its children, and a grandchild that left the session (setsid + double fork).
Real agents (``python -m worker agent``) with the process driver and, as root with bubblewrap, the
bwrap driver. The docker and jobobject drivers' mechanisms are tested at unit level
(tests/execution/test_guard.py, tests/sandbox/test_jobobject.py)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
from pathlib import Path

import psutil
import pytest

from tests.agent.harness import Pool, least_rights_queues
from tests.fixtures.waiting import wait_until
from worker.execution.scratchfs import sweep
from worker.protocol import TaskState

pytestmark = pytest.mark.slow

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
HAVE_BWRAP = shutil.which("bwrap") is not None


def _sleepers(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.info["cmdline"] == ["sleep", marker] and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize("driver", [
    "process",
    pytest.param("bwrap", marks=[pytest.mark.root, pytest.mark.skipif(
        not (IS_ROOT and HAVE_BWRAP), reason="needs root and bubblewrap (loop disks, uid switch)")]),
])
def test_sigkilled_agent_takes_its_task_processes_with_it(emulator, queue_factory, storage, competition, driver):
    tasks, responses = least_rights_queues(queue_factory, lock_duration="PT10S", max_delivery_count=2)
    # The sandbox uid must be able to traverse the work dir (as it can /var/lib/pool-agent).
    home = Path(tempfile.mkdtemp(prefix="pool-orphans-", dir="/var/tmp"))
    os.chmod(home, 0o711)
    pool = Pool(emulator, storage, competition, tasks, responses, home)
    agent = None
    marker = str(random.randint(100_000, 999_999))  # a sleep nobody else runs
    try:
        config = pool.write_config(home / "agent.yaml", execution={"driver": driver})
        agent = pool.spawn_agent(config, home / "agent.log")
        task = pool.task(["sh", "-c", f"sleep {marker} & (setsid sleep {marker} &); sleep {marker}"],
                         time_limit_s=600)
        pool.send(task)
        pool.collector.wait_for(task.task_id, lambda s: s.state is TaskState.RUNNING, timeout=60)
        sleepers = wait_until(lambda: len(found := _sleepers(marker)) == 3 and found, 30, "the task's 3 sleeps")
        assert any(os.getsid(p.pid) != os.getsid(sleepers[0].pid) for p in sleepers[1:]) or driver == "bwrap"

        os.kill(agent.pid, signal.SIGKILL)  # the agent alone, as the OOM killer or a crash would
        agent.wait(10)
        wait_until(lambda: not _sleepers(marker), 10, f"the task's processes to die with their agent "
                                                      f"(left: {[p.pid for p in _sleepers(marker)]})")
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
        for proc in _sleepers(marker):
            proc.kill()
        pool.close()
        sweep(home / "work" / ".sandbox-disks")  # the killed agent's loop disks (not this process's)
        shutil.rmtree(home, ignore_errors=True)

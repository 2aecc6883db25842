"""`pool node status|drain|resume` over real SSH (sshd on 127.0.0.1) against a real agent (emulator +
Azurite), with the host described by an INI inventory: idle, busy, drain lets the task finish and the
next one stays queued, resume takes it."""

from __future__ import annotations

import shlex
import sys
import time
from functools import partial
from pathlib import Path

import pytest

from tests.fixtures import waiting
from tests.node.test_ssh import node
from worker.agent.state import read_state

pytestmark = [pytest.mark.slow, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]


wait_until = partial(waiting.wait_until, timeout=30, interval=0.2)


def test_status_drain_resume_over_ssh(pool, sshd, user_key, tmp_path):
    control = tmp_path / "control"
    config = pool.write_config(tmp_path / "agent.yaml", control_dir=str(control), pool="ssh-pool")
    # This machine has no installed agent: the inventory points `pool` at this checkout's code.
    command = f"env PYTHONPATH={shlex.quote(str(REPO))} {shlex.quote(sys.executable)} -m worker"
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(
        "[workers]\n"
        f"node-a ansible_host=127.0.0.1 ansible_port={sshd.port} ansible_user=root "
        f"ansible_ssh_private_key_file={user_key} worker_agent_config_path={config} "
        f"pool_agent_command=\"{command}\"\n")
    known = tmp_path / "known_hosts"
    known.write_text(sshd.host_key_line)
    common = ["-i", str(inventory), "--no-agent", "--known-hosts", str(known)]

    rc, out = node(*common, "status")
    assert rc == 1 and "agent not running" in out and "no state file" not in out, out  # nothing ran yet

    pool.start_agent(control_dir=str(control), pool="ssh-pool")
    wait_until(lambda: (s := read_state(control)) and s.state == "idle", what="agent idle")
    rc, out = node(*common, "status")
    assert rc == 0 and "idle" in out and "0/0" in out and "1 ok, 0 failed" in out, out

    gate = tmp_path / "gate"  # the first task runs until the test has seen it busy and draining
    first = pool.python(f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.1)\n"
                        "print('first')")
    pool.send(first)
    wait_until(lambda: (s := read_state(control)) and s.state == "busy", what="agent busy")
    rc, out = node(*common, "status")
    assert rc == 0 and "busy" in out and first.task_id in out, out

    rc, out = node(*common, "drain")
    assert rc == 0 and ("draining" in out or "drain pending" in out), out
    second = pool.python("print('second')")
    pool.send(second)
    gate.touch()
    assert pool.collector.wait_terminal(first.task_id, timeout=30).state.value == "finished"
    rc, out = node(*common, "drain", "--wait", "30")  # already drained: returns at once, says so
    assert rc == 0 and "drained" in out and "1/0" in out, out
    time.sleep(3)
    assert pool.collector.of(second.task_id) == [], "a drained agent took a new task"

    rc, out = node(*common, "resume")
    assert rc == 0 and "1 ok" in out, out
    assert pool.collector.wait_terminal(second.task_id, timeout=30).state.value == "finished"
    rc, out = node(*common, "status")
    assert rc == 0 and "idle" in out and "2/0" in out, out

"""Finding an earlier stack's processes: by the profile's records (pid AND start time, so a reused pid
is not mistaken for one) and by command lines that name this data dir; nothing else is touched."""

from __future__ import annotations

import subprocess
import sys

import pytest

from worker.local.profile import EmulatorInfo, LocalProfile
from worker.local.survivors import find_survivors, record, stop_survivors


def _profile(data_dir, **processes) -> LocalProfile:  # type: ignore[no-untyped-def]
    return LocalProfile(pid=1, data_dir=str(data_dir), storage_connection_string="x", database_url="sqlite://",
                        emulator=EmulatorInfo(host="127.0.0.1", port=1, http_port=2, config_path="c",
                                              root_connection_string="x"),
                        processes=processes)


@pytest.fixture
def spawn():
    started: list[subprocess.Popen] = []

    def make(*argv: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *argv],
                                start_new_session=True)
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.kill()
        proc.wait()


def test_recorded_children_are_found_only_with_their_own_start_time(tmp_path, spawn):
    child = spawn()
    good = record(child.pid, "agent")
    assert [s.process.pid for s in find_survivors(tmp_path, _profile(tmp_path, **{"agent:a": good}))] == [child.pid]
    reused = good.model_copy(update={"started": good.started - 3600})  # same pid, another process
    assert find_survivors(tmp_path, _profile(tmp_path, **{"agent:a": reused})) == []


def test_command_lines_naming_this_data_dir_are_found_and_stopped_others_untouched(tmp_path, spawn):
    data = tmp_path.resolve()
    emulator = spawn("-m", "worker", "emulator", "--data-dir", f"{data}/emulator")
    agent = spawn("-m", "worker", "agent", "--config", f"{data}/agents/default-w1/config.yaml")
    other_dir = spawn("-m", "worker", "emulator", "--data-dir", f"{data}-other/emulator")
    a_client = spawn("-m", "worker", "submit", "--data-dir", str(data))  # a command, not a stack child
    found = find_survivors(data, None)
    assert {(s.role, s.process.pid) for s in found} == {("emulator", emulator.pid), ("agent", agent.pid)}
    assert [s.role for s in found] == ["agent", "emulator"]  # agents stop first
    said: list[str] = []
    stop_survivors(found, said.append, agent_timeout_s=5, timeout_s=5)
    assert emulator.wait(5) is not None and agent.wait(5) is not None
    assert other_dir.poll() is None and a_client.poll() is None
    assert said[0].startswith("stopping agent default-w1")

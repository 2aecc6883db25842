"""`pool local up` as a user runs it (a subprocess in the foreground), and the commands around it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.fixtures.azurite import require_azurite
from worker.cli import app

REPO = Path(__file__).resolve().parents[2]


def pool(*args: str, data_dir: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "POOL_DATA_DIR": str(data_dir)}  # the documented alternative to --data-dir
    return subprocess.run([sys.executable, "-m", "worker", *args], check=False, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], check=False, capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.slow
def test_local_up_ready_runtime_competition_submit_and_clean_stop(tmp_path):
    require_azurite()
    data = tmp_path / "pool"
    up = subprocess.Popen([sys.executable, "-m", "worker", "local", "up", "--workers", "1", "--data-dir", str(data)],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            assert line or up.poll() is None, f"local up exited: {''.join(lines)}"
            lines.append(line)
            if line.startswith("ready"):  # (a warning naming a path may contain the word)
                break
        assert lines[-1].startswith("ready"), "".join(lines)
        profile = yaml.safe_load((data / "profile.yaml").read_text())
        assert profile["state"] == "ready" and set(profile["pools"]) == {"default"}
        components = children_of(up.pid)
        assert len(components) >= 3  # emulator, Azurite, one agent

        done = pool("submit", "--wait", "--", "sh", "-c", "echo from-the-cli", data_dir=data)
        assert done.returncode == 0, done.stdout + done.stderr
        task_id = done.stdout.split()[1]
        logs = pool("logs", task_id, data_dir=data)
        assert logs.stdout == "from-the-cli\n"

        created = pool("competition", "create", "second-comp", data_dir=data)
        assert created.returncode == 0, created.stderr
        assert "second-comp-tasks" in created.stdout
        # `local up` starts its agent without a restart; the task waits in the queue until then.
        other = pool("submit", "--competition", "second-comp", "--wait", "--timeout", "60", "--", "true",
                     data_dir=data)
        assert other.returncode == 0, other.stdout + other.stderr
        # Retiring it stops its agent (the stack keeps none for a retired pool); the default pool's stays.
        second_agent = yaml.safe_load((data / "profile.yaml").read_text())["processes"]["agent:second-comp-w1"]["pid"]
        default_agent = yaml.safe_load((data / "profile.yaml").read_text())["processes"]["agent:default-w1"]["pid"]
        retired = pool("competition", "retire", "second-comp", data_dir=data)
        assert retired.returncode == 0, retired.stdout + retired.stderr
        deadline = time.monotonic() + 30
        while second_agent in children_of(up.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert second_agent not in children_of(up.pid), "the retired pool's agent still runs"
        assert default_agent in children_of(up.pid)
        record = yaml.safe_load((data / "profile.yaml").read_text())["processes"]["agent:second-comp-w1"]
        assert record["state"] == "retired"

        failed = pool("submit", "--wait", "--", "false", data_dir=data)
        assert failed.returncode == 1 and ": failed, exit code 1" in failed.stdout

        status = pool("status", data_dir=data)
        assert status.returncode == 0 and task_id in status.stdout and "short of agents" not in status.stdout
    finally:
        up.send_signal(signal.SIGTERM)
        rest, _ = up.communicate(timeout=60)
    assert up.returncode == 0, rest
    assert "stopped" in rest
    for pid in components:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert yaml.safe_load((data / "profile.yaml").read_text())["state"] == "stopped"
    # Started again, the stack brings back its known pools, but not the retired one.
    again = subprocess.Popen([sys.executable, "-m", "worker", "local", "up", "--workers", "1", "--data-dir", str(data)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (lines and lines[-1].startswith("ready")):
            lines.append(again.stdout.readline())
            assert lines[-1] or again.poll() is None, "".join(lines)
        processes = yaml.safe_load((data / "profile.yaml").read_text())["processes"]
        assert processes["agent:default-w1"]["state"] == "running"
        assert not [name for name in processes if name.startswith("agent:second-comp")], processes
        refused = pool("submit", "--competition", "second-comp", "--", "true", data_dir=data)
        assert refused.returncode != 0, refused.stdout
    finally:
        again.send_signal(signal.SIGTERM)
        again.communicate(timeout=60)


def test_commands_without_a_stack_say_how_to_start_one(tmp_path):
    runner = CliRunner()
    for args in (["submit", "--", "true"], ["logs", "t1"], ["competition", "create", "abc"], ["cancel", "t1"]):
        result = runner.invoke(app, [*args, "--data-dir", str(tmp_path)])
        assert result.exit_code != 0
        assert "pool local up" in result.output, (args, result.output)


def test_submit_needs_a_command_or_a_bundle(tmp_path):
    result = CliRunner().invoke(app, ["submit", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--bundle" in result.output


def test_invalid_competition_name_is_rejected_before_anything_runs(tmp_path):
    result = CliRunner().invoke(app, ["competition", "create", "Bad_Name", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "invalid competition name" in result.output


def test_help_explains_the_commands():
    result = CliRunner().invoke(app, ["--help"])
    for command in ("local", "submit", "status", "logs", "demo", "competition"):
        assert command in result.output
    up = CliRunner().invoke(app, ["local", "up", "--help"])
    assert "ready" in up.output and "--workers" in up.output

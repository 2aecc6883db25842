"""``pool emulator``: prints a connection string per policy, serves, and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusReceiveMode

from tests.fixtures.emulator import write_emulator_config
from worker.emulator.auth import generate_key


def test_cli_prints_connection_strings_and_stops_on_sigterm(tmp_path):
    write_emulator_config(tmp_path / "c.yaml", queues=[
        {"name": "jobs", "policies": [{"name": "worker", "key": generate_key(), "rights": ["Listen"]}]}])
    proc = subprocess.Popen([sys.executable, "-m", "worker", "emulator", "--config", str(tmp_path / "c.yaml"),
                             "--port", "0", "--data-dir", str(tmp_path / "data")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert "listening on amqp://127.0.0.1:" in lines[0]
        root = next(line for line in lines if "RootManageSharedAccessKey" in line).split(": ", 1)[1].strip()
        worker = next(line for line in lines if "policy worker" in line).split(": ", 1)[1].strip()
        assert root.endswith(";UseDevelopmentEmulator=true") and ";EntityPath=jobs;" in worker
        with ServiceBusClient.from_connection_string(root) as c, c.get_queue_sender("jobs") as s:
            s.send_messages(ServiceBusMessage("via cli"))
        with ServiceBusClient.from_connection_string(worker) as c, c.get_queue_receiver(
                "jobs", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as r:
            assert [str(m) for m in r.receive_messages(max_wait_time=5)] == ["via cli"]
        start = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 0 and time.monotonic() - start < 5
        assert "shutting down" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_cli_reports_a_bad_config(tmp_path):
    (tmp_path / "c.yaml").write_text("queues: [{name: q, lock_duration: PT9M}]\n")
    out = subprocess.run([sys.executable, "-m", "worker", "emulator", "--config", str(tmp_path / "c.yaml"),
                          "--port", "0", "--data-dir", str(tmp_path / "d")], capture_output=True, text=True,
                         timeout=30, check=False)
    assert out.returncode == 2 and "lock_duration" in out.stderr


def test_exit_with_parent_stops_an_orphaned_emulator(tmp_path):
    """A fixture's emulator must not outlive a pytest that was killed before its teardown."""
    write_emulator_config(tmp_path / "c.yaml")
    starter = (
        "import sys, time; from pathlib import Path; from worker.emulator.launcher import EmulatorProcess; "
        f"e = EmulatorProcess(Path({str(tmp_path / 'c.yaml')!r}), Path({str(tmp_path / 'd')!r}), "
        "exit_with_parent=True).start(); print(e.proc.pid, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()  # SIGKILL: no teardown runs
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the orphaned emulator kept running")

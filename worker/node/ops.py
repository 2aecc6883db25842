"""What each ``pool node`` command does on one connected host; each returns the row of the result
table (``Row``) or raises :class:`~worker.node.ssh.NodeError` with one line."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from worker.node.remote import Remote
from worker.node.ssh import NodeError, Session, last_line

UP_STATES = ("idle", "busy", "draining", "drained")


@dataclass
class Row:
    """One host's result: short columns for the table, optional text printed after it."""

    columns: dict[str, str] = field(default_factory=dict)
    output: str = ""
    ok: bool = True
    error: str = ""


def read_status(session: Session, remote: Remote) -> dict:
    result = session.run(remote.status())
    try:
        report = json.loads(result.stdout)
    except ValueError:
        raise NodeError(f"`pool agent status` failed with exit code {result.exit_code}: {last_line(result)}") from None
    if not isinstance(report, dict) or "state" not in report:
        raise NodeError("`pool agent status` printed no state")
    return report


def service_state(session: Session, remote: Remote) -> str:
    return session.run(remote.service_state()).stdout.strip() or "unknown"


def _state_columns(report: dict, service: str | None = None) -> dict[str, str]:
    state = report["state"]
    if report.get("drain_requested") and state in ("idle", "busy"):
        state += " (drain pending)"
    columns = {"service": service} if service is not None else {}
    columns |= {
        "agent": state,
        "task": f"{report['task_id']} since {str(report.get('task_since', ''))[11:19]}" if report.get("task_id") else "-",
        "done/failed": f"{report.get('tasks_done', 0)}/{report.get('tasks_failed', 0)}",
        "version": str(report.get("version") or "-"),
    }
    return columns


def status(session: Session, remote: Remote) -> Row:
    service = service_state(session, remote)
    report = read_status(session, remote)
    row = Row(_state_columns(report, service))
    if not report.get("running"):  # (an agent run by hand, not by the service, still counts as up)
        row.ok = False
        row.error = f"agent not running (service {service}, agent state {report['state']})"
    return row


def drain(session: Session, remote: Remote, wait_s: float) -> Row:
    result = session.run(remote.drain(wait_s), timeout=wait_s + session.options.command_timeout)
    if result.exit_code not in (0, 1):
        raise NodeError(f"`pool agent drain` failed with exit code {result.exit_code}: {last_line(result)}")
    report = read_status(session, remote)
    row = Row(_state_columns(report))
    if result.exit_code == 1:
        row.ok, row.error = False, f"still running task {report.get('task_id')} after {wait_s:g}s"
    return row


def resume(session: Session, remote: Remote) -> Row:
    session.check(remote.resume(), "`pool agent resume`")
    return Row(_state_columns(read_status(session, remote)))


def wait_up(session: Session, remote: Remote, old_pid: int | None, timeout: float) -> dict:
    """Until the service is active and a new agent process has written its state (not `starting`)."""
    deadline = time.monotonic() + timeout
    report: dict = {}
    while time.monotonic() < deadline:
        if service_state(session, remote) == "active":
            report = read_status(session, remote)
            if report.get("running") and report.get("pid") != old_pid and report["state"] in UP_STATES:
                return report
        time.sleep(1)
    raise NodeError(f"the agent did not come back within {timeout:g}s (last state {report.get('state', '?')})")


def restart(session: Session, remote: Remote, timeout: float) -> Row:
    before = read_status(session, remote)
    # systemctl restart waits for the graceful stop: the running task may take its grace period.
    session.check(remote.restart(), "restart", timeout=timeout)
    report = wait_up(session, remote, before.get("pid") if before.get("running") else None, timeout)
    return Row(_state_columns(report, "active") | {"pid": f"{before.get('pid')} → {report.get('pid')}"})


def logs(session: Session, remote: Remote, lines: int, follow: bool, on_line: Callable[[str], None] | None) -> Row:
    result = session.run(remote.logs(lines, follow), timeout=0 if follow else None, on_line=on_line)
    if result.exit_code != 0:
        raise NodeError(f"reading the agent's log failed with exit code {result.exit_code}: {last_line(result)}")
    shown = result.stdout.count("\n")
    return Row({"lines": str(shown)}, output="" if on_line else result.stdout)


def upgrade_agent(session: Session, remote: Remote, wheel: Path, drain_timeout: float, timeout: float,
                  progress: Callable[[str], None]) -> Row:
    before = read_status(session, remote)
    was_draining = bool(before.get("drain_requested"))
    progress("uploading")
    folder = remote.upload_dir(uuid.uuid4().hex[:12])
    if not remote.windows:
        with session.client.open_sftp() as sftp:
            sftp.mkdir(folder, mode=0o700)
    uploaded = f"{folder}/{wheel.name}"
    session.upload(wheel, remote.sftp_path(uploaded))
    progress("draining")
    drained = drain(session, remote, drain_timeout)
    if not drained.ok:
        if not was_draining:
            session.run(remote.resume())
        raise NodeError(f"not upgraded: {drained.error} (drain lifted again)" if not was_draining
                        else f"not upgraded: {drained.error}")
    progress("installing")
    try:
        session.check(remote.install_wheel(uploaded, wheel.name), "installing the wheel", timeout=timeout)
        progress("restarting")
        session.check(remote.restart(), "restart", timeout=timeout)
    finally:
        if not was_draining:  # the drain was ours: lift it whatever happened (the new agent sees it at start)
            session.run(remote.resume())
    progress("waiting for the agent")
    report = wait_up(session, remote, before.get("pid"), timeout)
    return Row(_state_columns(report, "active") | {"pid": f"{before.get('pid')} → {report.get('pid')}"})


def exec_(session: Session, remote: Remote, argv: list[str], timeout: float | None) -> Row:
    result = session.run(remote.exec(argv), timeout=timeout)
    row = Row({"exit": str(result.exit_code)}, output=result.stdout + result.stderr)
    if result.exit_code != 0:
        row.ok, row.error = False, f"command failed with exit code {result.exit_code}: {last_line(result)}"
    return row

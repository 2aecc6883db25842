"""Failure attribution, infrastructure retries and fair admission through the real local stack
(emulator, Azurite, SQLite site with watcher + monitor, two agents as subprocesses)."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import select

from tests.fixtures.waiting import wait_until
from worker.local.client import get_task, wait_for
from worker.local.stack import LocalStack
from worker.site.db import transaction
from worker.site.models import Task, TaskEvent
from worker.site.pools import set_limits
from worker.site.producer import Submission

pytestmark = pytest.mark.slow
POOL = "default"
DEFAULTS = {"max_in_flight": None, "max_in_flight_per_label": None, "retry_budget": 3, "retry_backoff_s": 5.0,
            "retry_backoff_max_s": 300.0}


@pytest.fixture
def limits(stack: LocalStack):
    def apply(**values) -> None:
        with transaction(stack.site.sessions) as s:
            set_limits(s, POOL, **values)

    yield apply
    apply(**DEFAULTS)


def history(stack: LocalStack, task_id: str) -> list[tuple[int, str, str, str | None]]:
    with stack.site.sessions() as s:
        rows = s.scalars(select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id))
        return [(e.attempt, e.state, e.source, e.reason) for e in rows]


def missing_bundle(stack: LocalStack, tmp_path):
    """A program bundle uploaded, then deleted from storage: every download of it fails (404)."""
    program = tmp_path / f"prog-{uuid.uuid4().hex[:6]}"
    program.mkdir()
    (program / "main.py").write_text(f"print('ran {program.name}')\n")
    stored = stack.site.storage.upload_bundle(POOL, program)
    blob = stack.site.storage.service.get_blob_client(stored.container, stored.blob_name)
    data = blob.download_blob().readall()
    blob.delete_blob()
    return stored, blob, data



def test_participant_failures_are_attributed_and_never_retried(stack):
    failing = stack.site.producer.submit(Submission(pool=POOL, command=["sh", "-c", "exit 3"])).id
    slow = stack.site.producer.submit(Submission(pool=POOL, command=["sleep", "30"], time_limit_s=1)).id
    for task_id, state, code in ((failing, "failed", "exit_code"), (slow, "timed_out", "time_limit")):
        task = wait_for(stack.site, task_id, timeout=30)
        assert (task.state, task.failure_class, task.failure_code) == (state, "participant", code)
        assert (task.attempt, task.infra_retries) == (1, 0)
    ok = wait_for(stack.site, stack.site.producer.submit(Submission(pool=POOL, command=["true"])).id, timeout=30)
    assert (ok.state, ok.failure_class, ok.failure_code) == ("finished", "none", "ok")


def test_an_infrastructure_failure_is_retried_after_a_back_off_without_counting(stack, limits, tmp_path):
    limits(retry_budget=2, retry_backoff_s=3)
    stored, blob, data = missing_bundle(stack, tmp_path)
    task_id = stack.site.producer.submit(Submission(pool=POOL, command=["python3", "../program/main.py"],
                                                    program=stored)).id
    # The worker reports the download failure; the site schedules attempt 2 three seconds later.
    wait_until(lambda: get_task(stack.site, task_id).attempt == 2, what="the retry to be queued")
    failed_at = time.monotonic()
    blob.upload_blob(data, overwrite=True)  # storage is back before the retry runs
    task = wait_for(stack.site, task_id, timeout=60)
    assert time.monotonic() - failed_at >= 2  # waited for the back-off (3 s, less the upload)
    assert (task.state, task.exit_code, task.attempt, task.infra_retries) == ("finished", 0, 2, 1)
    assert (task.failure_class, task.failure_code) == ("none", "ok")
    trail = history(stack, task_id)
    failure = next(h for h in trail if h[1] == "failed")
    assert failure[:3] == (1, "failed", "worker") and "bundle program" in failure[3]
    with stack.site.sessions() as s:
        coded = [(e.state, e.source, e.failure_class, e.failure_code) for e in
                 s.scalars(select(TaskEvent).where(TaskEvent.task_id == task_id, TaskEvent.failure_code.is_not(None)))]
    assert coded == [("failed", "worker", "infrastructure", "bundle_download"),
                     ("queued", "site", "infrastructure", "bundle_download"), ("finished", "worker", "none", "ok")]
    retry = trail[trail.index(failure) + 1]
    assert retry[:3] == (2, "queued", "site") and retry[3].startswith("infrastructure retry 1 of 2 in 3 s after "
                                                                      "bundle_download")
    assert stack.site.storage.read_log(POOL, task_id, 2, "stdout").startswith(b"ran prog-")


def test_infrastructure_retries_stop_at_the_pools_budget(stack, limits, tmp_path):
    limits(retry_budget=1, retry_backoff_s=0.5)
    stored, _blob, _data = missing_bundle(stack, tmp_path)
    task_id = stack.site.producer.submit(Submission(pool=POOL, command=["python3", "../program/main.py"],
                                                    program=stored)).id
    task = wait_for(stack.site, task_id, timeout=60)
    assert (task.state, task.failure_class, task.failure_code) == ("failed", "infrastructure", "bundle_download")
    assert (task.attempt, task.infra_retries) == (2, 1)
    assert "1 of 1 infrastructure retries used" in task.reason
    assert [h[1] for h in history(stack, task_id)] == ["queued", "received", "preparing", "failed", "queued",
                                                       "received", "preparing", "failed"]


def test_a_flooding_participant_does_not_hold_back_another(stack, limits):
    limits(max_in_flight_per_label=1)
    flood = [stack.site.producer.submit(Submission(pool=POOL, command=["sleep", "0.5"], label="flooder")).id
             for _ in range(12)]
    with stack.site.sessions() as s:
        assert s.query(Task).filter(Task.id.in_(flood), Task.state == "waiting").count() >= 10
    started = time.monotonic()
    other = stack.site.producer.submit(Submission(pool=POOL, command=["true"], label="someone")).id
    assert wait_for(stack.site, other, timeout=30).state == "finished"
    took = time.monotonic() - started
    with stack.site.sessions() as s:
        still_waiting = s.query(Task).filter(Task.id.in_(flood), Task.state == "waiting").count()
    assert still_waiting >= 5, "the other participant's task should not have waited for the flood"
    assert took < 10, f"the other participant's task took {took:.1f} s"
    # The flood drains one at a time, never two of the flooder's tasks in flight at once.
    peak = 0
    deadline = time.monotonic() + 90
    while True:
        with stack.site.sessions() as s:
            states = [t.state for t in s.scalars(select(Task).where(Task.id.in_(flood)))]
        peak = max(peak, sum(st in ("queued", "received", "preparing", "running", "uploading") for st in states))
        if all(st == "finished" for st in states):
            break
        assert time.monotonic() < deadline, f"flood not drained: {states}"
        time.sleep(0.05)
    assert peak == 1


def test_baselines_go_before_waiting_participants(stack, limits):
    limits(max_in_flight=1)
    blocker = stack.site.producer.submit(Submission(pool=POOL, command=["sleep", "1"], label="p1")).id
    participants = [stack.site.producer.submit(Submission(pool=POOL, command=["true"], label=f"p{i}")).id
                    for i in range(2, 5)]
    baseline = stack.site.producer.submit(Submission(pool=POOL, command=["true"], priority=10)).id
    for task_id in (blocker, *participants, baseline):
        assert wait_for(stack.site, task_id, timeout=60).state == "finished"
    with stack.site.sessions() as s:
        admitted = {e.task_id: e.id for e in s.scalars(select(TaskEvent).where(TaskEvent.reason == "admitted"))}
    assert admitted[baseline] < min(admitted[p] for p in participants)


def test_the_cli_sets_limits_and_shows_failure_classes(stack):
    from typer.testing import CliRunner

    from worker.cli import app

    def pool(*args: str):
        return CliRunner().invoke(app, [*args, "--data-dir", str(stack.data_dir)], env={"COLUMNS": "250"})

    try:
        limited = pool("competition", "limits", POOL, "--max-per-label", "2", "--retry-budget", "1")
        assert limited.exit_code == 0, limited.output
        assert "max_in_flight_per_label=2 retry_budget=1" in limited.output
        assert pool("competition", "limits", "no-such-pool").exit_code == 1
        failed = CliRunner().invoke(app, ["submit", "--data-dir", str(stack.data_dir), "--label", "participant=alice", "--priority",
                                          "3", "--wait", "--timeout", "60", "--", "false"])
        assert failed.exit_code == 1 and "failure: participant (exit_code)" in failed.output, failed.output
        task_id = failed.output.split()[1]
        with stack.site.sessions() as s:
            task = s.get(Task, task_id)
            assert (task.label, task.priority, task.failure_code) == ("alice", 3, "exit_code")
        detail = pool("status", task_id)
        assert detail.exit_code == 0 and "participant: exit_code" in detail.output and "alice / 3" in detail.output
        assert "participant/exit_code" in detail.output  # the history's final row
        listing = pool("status")
        assert "waiting" in listing.output and "participant/exit_code: " in listing.output, listing.output
    finally:
        pool("competition", "limits", POOL, "--max-per-label", "0", "--retry-budget", "3")

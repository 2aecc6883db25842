"""Chaos: many trivial tasks through the real local stack while its parts are SIGKILLed.

Faults, all at once with the load: agents SIGKILLed at random (the stack's supervisor restarts them),
the emulator SIGKILLed and restarted twice (same store, same ports), the site process (watcher +
monitor, run here in a process of its own) SIGKILLed and restarted, and — in the PostgreSQL run — the
database server SIGKILLed and restarted once (crash recovery). Then: every task ends final, none
is lost, no status was applied twice, and programs ran again only as the documented at-least-once
delivery allows (a delivery cut short by a kill, or an infrastructure retry).

``POOL_CHAOS_TASKS`` (default 1000) scales the SQLite run, ``POOL_CHAOS_PG_TASKS`` (default 800) the
PostgreSQL one; ``POOL_CHAOS_REPORT=path.json`` writes the
figures (docs/reliability.md quotes them).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from tests.fixtures.azurite import require_azurite
from tests.fixtures.local_stack import supervised
from tests.fixtures.postgres import PgServer
from worker.emulator.launcher import EmulatorProcess
from worker.local.stack import LocalStack
from worker.site.models import TERMINAL, Task, TaskEvent
from worker.site.producer import Submission, SubmitError
from worker.site.service import Site

pytestmark = pytest.mark.slow
TASKS = {"sqlite": int(os.environ.get("POOL_CHAOS_TASKS", "1000")),
         "postgres": int(os.environ.get("POOL_CHAOS_PG_TASKS", "800"))}
WORKERS = 4
POOL = "default"
ROOT = Path(__file__).resolve().parents[2]


class SiteProcess:
    """The watcher + monitor in their own process (tests/chaos/site_process.py)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.killed = False

    def start(self) -> SiteProcess:
        log = open(self.data_dir / "logs" / "chaos-site.log", "ab")  # noqa: SIM115 - the child keeps it
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.chaos.site_process", str(self.data_dir)],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                                     env=env, start_new_session=True)
        log.close()
        self.starts += 1
        self.killed = False
        return self

    def died(self) -> str | None:
        """The end of its log if it exited without being killed (a crash, not a fault of the chaos)."""
        if self.proc is None or self.killed or self.proc.poll() is None:
            return None
        return (self.data_dir / "logs" / "chaos-site.log").read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        self.killed = True
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


class Chaos(threading.Thread):
    """Faults keyed on progress (fraction of tasks final), so they land mid-run at any speed."""

    def __init__(self, stack: LocalStack, site: SiteProcess, progress, database: PgServer | None = None,
                 seed: int = 7) -> None:
        super().__init__(name="chaos", daemon=True)
        self.stack, self.site, self.progress = stack, site, progress
        self.random = random.Random(seed)
        self.stop = threading.Event()
        self.log: list[tuple[float, str]] = []
        self.agent_kills = 0
        self.emulator_kills = 0
        self.site_kills = 0
        self.database = database
        self.database_kills = 0
        self.error: BaseException | None = None
        self.started = time.monotonic()

    def say(self, what: str) -> None:
        self.log.append((round(time.monotonic() - self.started, 1), what))

    def run(self) -> None:
        plan = [(0.15, self.kill_emulator), (0.35, self.kill_site), (0.55, self.kill_emulator)]
        if self.database is not None:
            plan.insert(2, (0.45, self.kill_database))
        next_agent_kill = time.monotonic() + 1.0
        try:
            while not self.stop.wait(0.2):
                done = self.progress()
                while plan and done >= plan[0][0]:
                    plan.pop(0)[1]()
                if time.monotonic() >= next_agent_kill and done < 0.95:
                    self.kill_agent()
                    next_agent_kill = time.monotonic() + self.random.uniform(1.0, 2.5)
                if not plan and done >= 1.0:
                    return
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def kill_agent(self) -> None:
        # Only agents that reached "ready": the stack gives up on one that keeps exiting before it.
        candidates = [a for a in self.stack.agents[POOL] if a.alive and a.reached_ready()]
        if candidates:
            victim = self.random.choice(candidates)
            os.kill(victim.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
            self.agent_kills += 1
            self.say(f"SIGKILL agent {victim.worker_id}")

    def kill_emulator(self) -> None:
        old = self.stack.emulator
        assert old is not None and old.proc is not None
        os.killpg(old.proc.pid, signal.SIGKILL)
        old.proc.wait(10)
        self.emulator_kills += 1
        self.say("SIGKILL emulator")
        time.sleep(1.0)
        self.stack.emulator = EmulatorProcess(old.config_path, old.data_dir, port=old.port,
                                              http_port=old.http_port).start(timeout=60)
        self.say("emulator restarted")

    def kill_database(self) -> None:
        assert self.database is not None
        self.database.kill()
        self.database_kills += 1
        self.say("SIGKILL PostgreSQL")
        time.sleep(1.0)
        self.database.start()
        self.say("PostgreSQL restarted (crash recovery)")

    def kill_site(self) -> None:
        self.site.kill()
        self.site_kills += 1
        self.say("SIGKILL site (watcher + monitor)")
        time.sleep(1.0)
        self.site.start()
        self.say("site restarted")


def submit_surviving(client: Site, submission: Submission) -> bool:
    """Submit; False when recorded but not sent yet (the monitor sends it). A database that is
    restarting refuses it: try again until the task is recorded (the id makes that idempotent)."""
    for _ in range(120):
        try:
            client.producer.submit(submission)
            return True
        except SubmitError:
            return False
        except OperationalError:
            time.sleep(0.5)
            try:
                with client.sessions() as s:
                    if s.get(Task, submission.task_id) is not None:
                        return False  # recorded before the failure; the monitor sends it if need be
            except OperationalError:
                continue
    raise AssertionError(f"could not submit {submission.task_id}")


@pytest.mark.timeout(600)  # ~3 min for 1,000 tasks on 2 busy cores; the default 300 s is too tight
@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_every_task_ends_once_through_agent_emulator_and_site_kills(tmp_path, database):
    require_azurite()
    lines: list[str] = []
    tasks_n = TASKS[database]
    pg = None
    if database == "postgres":
        from tests.fixtures.postgres import PG_BIN

        if not (PG_BIN / "postgres").exists():
            pytest.skip(f"PostgreSQL binaries not found in {PG_BIN}")
        # Not under tmp_path: pytest's directory is root-only, and the server runs as ``postgres``.
        pg = PgServer(Path(tempfile.mkdtemp(prefix="chaos-pg-"))).start()
    try:
        run_chaos(tmp_path, database, tasks_n, pg, lines)
    finally:
        if pg is not None:
            pg.stop()
            shutil.rmtree(pg.root, ignore_errors=True)


def run_chaos(tmp_path: Path, database: str, tasks_n: int, pg: PgServer | None, lines: list[str]) -> None:
    stack = LocalStack(tmp_path / "stack", workers=WORKERS, on_output=lines.append,
                       database_url=pg.url if pg else None).start(timeout=90)
    stack.site.close()  # the site runs in its own process below, where it can be killed
    stack.site = None
    effects = tmp_path / "effects"
    effects.mkdir()
    ids = [f"chaos{i:05d}" for i in range(tasks_n)]
    site_process = SiteProcess(stack.data_dir)
    with supervised(stack):
        site_process.start()
        client = Site(stack.profile.site_settings(), run_migrations=False)  # type: ignore[union-attr]

        def progress() -> float:
            with client.sessions() as s:
                try:
                    return (s.scalar(select(func.count()).where(Task.state.in_(TERMINAL))) or 0) / tasks_n
                except OperationalError:
                    return 0.0  # the database is restarting

        chaos = Chaos(stack, site_process, progress, pg)
        started = time.monotonic()
        chaos.start()
        unsent = 0
        try:
            for task_id in ids:
                unsent += not submit_surviving(client, Submission(
                    pool=POOL, task_id=task_id, time_limit_s=60,
                    command=["sh", "-c", f"echo $POOL_ATTEMPT >> {effects / task_id}"]))
            submitted_s = time.monotonic() - started
            deadline = time.monotonic() + 240
            while progress() < 1.0:
                assert chaos.error is None, chaos.error
                assert site_process.died() is None, f"the site process exited:\n{site_process.died()}"
                assert time.monotonic() < deadline, f"not all final after 240 s: {progress():.1%} ({chaos.log})"
                time.sleep(0.5)
            elapsed = time.monotonic() - started
            chaos.stop.set()
            chaos.join(90)
            assert chaos.error is None, chaos.error
        finally:
            chaos.stop.set()
            site_process.stop()
        with client.sessions() as s:
            tasks = {t.id: t for t in s.scalars(select(Task))}
            events = list(s.scalars(select(TaskEvent).order_by(TaskEvent.id)))
        client.close()

    # Every task recorded, final, and — trivial programs — finished.
    assert set(tasks) == set(ids), "tasks lost"
    states = Counter(t.state for t in tasks.values())
    classes = Counter((t.failure_class, t.failure_code) for t in tasks.values())
    assert states == {"finished": tasks_n}, (states, classes)
    # No status applied twice: one history row per (task, attempt, seq) of the workers, one final state each.
    worker_rows = Counter((e.task_id, e.attempt, e.seq) for e in events if e.source == "worker")
    assert max(worker_rows.values()) == 1
    finals = Counter(e.task_id for e in events if e.state == "finished")
    assert set(finals.values()) == {1}
    # At-least-once: a program ran again only after a delivery was cut short or a retry was queued.
    runs = {task_id: (effects / task_id).read_text().split() for task_id in ids}
    assert all(runs.values()), "a finished task whose program never ran"
    extra = sum(len(r) - 1 for r in runs.values())
    retries = sum(t.infra_retries for t in tasks.values())
    redelivered = sum(1 for t in ids if sum(e.task_id == t and e.state == "received" for e in events) > 1)
    bound = chaos.agent_kills + chaos.emulator_kills * WORKERS + retries
    figures = {"database": database, "tasks": tasks_n, "workers": WORKERS, "elapsed_s": round(elapsed, 1), "submit_s": round(submitted_s, 1),
               "tasks_per_s": round(tasks_n / elapsed, 1), "agent_kills": chaos.agent_kills,
               "database_kills": chaos.database_kills,
               "emulator_kills": chaos.emulator_kills, "site_kills": chaos.site_kills,
               "sends_failed_then_resent": unsent, "redelivered_tasks": redelivered,
               "infrastructure_retries": retries, "extra_program_runs": extra, "extra_runs_bound": bound,
               "states": dict(states), "log": chaos.log}
    print(json.dumps(figures, indent=1))
    if report := os.environ.get("POOL_CHAOS_REPORT"):
        Path(report).with_suffix(f".{database}.json").write_text(json.dumps(figures, indent=1))
    assert chaos.emulator_kills == 2 and chaos.site_kills == 1 and chaos.agent_kills >= 3, chaos.log
    assert chaos.database_kills == (1 if pg else 0), chaos.log
    assert extra <= bound, figures

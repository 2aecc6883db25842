"""``pool demo``: the whole loop with a sample competition, a live table and a summary.

Each submission is evaluated in two tasks, as a competition site does it: the participant's program
predicts (its output archive holds predictions.csv), then the organizer's scoring program scores those
predictions against the hidden reference labels — never in the same sandbox as the participant's code.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from worker.local.views import styled
from worker.samples import DEMO
from worker.site.producer import Submission
from worker.site.service import Site
from worker.storage import StoredBundle

COMPETITION = "demo"


@dataclass
class Entry:
    name: str
    spec: dict[str, Any]
    predict_id: str | None = None
    score_id: str | None = None
    predict_state: str = "-"
    score_state: str = "-"
    exit_code: int | None = None
    reason: str | None = None
    score: dict[str, float] | None = None
    started: float = field(default_factory=time.monotonic)
    took: float | None = None

    @property
    def done(self) -> bool:
        final = ("finished", "failed", "timed_out", "cancelled")
        if self.predict_state in final and self.predict_state != "finished":
            return True
        return self.score_state in final

    @property
    def outcome(self) -> str:
        return self.predict_state

    def verdict(self) -> tuple[bool, str]:
        expected = self.spec["expect"]
        if self.outcome != expected:
            return False, f"expected {expected}, got {self.outcome}"
        if expected != "finished":
            return True, f"{expected} as expected"
        if self.score_state != "finished" or self.score is None:
            return False, f"scoring {self.score_state}"
        r2 = self.score["r2"]
        if "min_score" in self.spec and r2 < self.spec["min_score"]:
            return False, f"r2 {r2} below {self.spec['min_score']}"
        if "max_score" in self.spec and r2 > self.spec["max_score"]:
            return False, f"r2 {r2} above {self.spec['max_score']}"
        return True, "scored as expected"


def _say_driver(console: Console, line: str) -> None:
    """Of the stack's chatter, the demo shows which driver runs the programs (and any warning)."""
    if line.startswith("WARNING"):
        console.print(line, style="bold red", markup=False)
    elif line.startswith("execution driver"):
        console.print(line, markup=False)


def run_demo(data_dir: str | Path, *, workers: int = 3, driver: str = "auto", timeout: float = 180,
             console: Console | None = None) -> int:
    from worker.local.competition import create_local_competition
    from worker.local.profile import StackNotRunning, load_profile
    from worker.local.stack import LocalStack, StackError

    console = console or Console()
    manifest = yaml.safe_load((DEMO / "competition.yaml").read_text())
    stack = None
    began = time.monotonic()
    try:
        profile = load_profile(data_dir)
        console.print(f"using the local stack running in {Path(data_dir).resolve()} (pid {profile.pid})")
        create_local_competition(data_dir, COMPETITION)
    except StackNotRunning:
        console.print(f"starting the local stack in {Path(data_dir).resolve()} ({workers} agents, {driver} driver)...")
        try:
            stack = LocalStack(data_dir, workers=workers, driver=driver, competitions=(COMPETITION,),
                               agent_pools=(COMPETITION,), on_output=lambda line: _say_driver(console, line)).start()
        except (StackError, RuntimeError) as exc:
            console.print(f"[red]error:[/] the local stack did not start: {exc}")
            return 1
        console.print(f"ready in {time.monotonic() - began:.1f} s: emulator :{stack.emulator.port}, "
                      f"Azurite :{stack.azurite.port}, {workers} agents")
        profile = load_profile(data_dir)
    if profile.site_url:
        console.print(f"dashboard: {profile.site_url}  (sign in with site_token from "
                      f"{Path(data_dir).resolve() / 'profile.yaml'}; API docs at {profile.site_url}/docs)")
    site = Site(profile.site_settings())
    try:
        entries = _evaluate(site, manifest, console, timeout)
    finally:
        site.close()
        if stack is not None:
            stack.stop()
    ok = _summary(console, entries, time.monotonic() - began)
    return 0 if ok else 1


def _evaluate(site: Site, manifest: dict[str, Any], console: Console, timeout: float) -> list[Entry]:
    data = site.storage.upload_bundle(COMPETITION, DEMO / "data")
    reference = site.storage.upload_bundle(COMPETITION, DEMO / "reference")
    scoring = site.storage.upload_bundle(COMPETITION, DEMO / "scoring")
    entries = []
    for spec in manifest["submissions"]:
        entry = Entry(spec["name"], spec)
        task = site.producer.submit(Submission(
            pool=COMPETITION, command=["python3", "../program/main.py"], program=DEMO / spec["dir"],
            inputs={"data": data}, time_limit_s=spec.get("time_limit_s", manifest["prediction_time_limit_s"]),
            max_attempts=1))
        entry.predict_id = task.id
        entries.append(entry)
    deadline = time.monotonic() + timeout
    with Live(_table(entries), console=console, refresh_per_second=4, transient=False) as live:
        while not all(e.done for e in entries) and time.monotonic() < deadline:
            for entry in entries:
                _advance(site, entry, reference, scoring, manifest)
            live.update(_table(entries))
            time.sleep(0.2)
    return entries


def _advance(site: Site, entry: Entry, reference: StoredBundle, scoring: StoredBundle,
             manifest: dict[str, Any]) -> None:
    from worker.local.client import get_task

    if entry.done:
        return
    predict = get_task(site, entry.predict_id)  # type: ignore[arg-type]
    entry.predict_state, entry.exit_code, entry.reason = predict.state, predict.exit_code, predict.reason
    if predict.state == "finished" and entry.score_id is None:
        predictions = site.storage.output_bundle(COMPETITION, predict.id, predict.attempt)
        if predictions is None:
            entry.score_state, entry.reason = "failed", "the submission produced no output"
            return
        task = site.producer.submit(Submission(
            pool=COMPETITION, command=["python3", "../program/main.py"], program=scoring,
            inputs={"predictions": predictions, "reference": reference},
            time_limit_s=manifest["scoring_time_limit_s"], max_attempts=1))
        entry.score_id = task.id
    if entry.score_id:
        score = get_task(site, entry.score_id)
        entry.score_state = score.state
        if score.state == "finished" and entry.score is None:
            entry.score = _read_scores(site, score.id, score.attempt)
        elif score.site_state.terminal and score.state != "finished":
            entry.reason = f"scoring: {score.reason}"
    if entry.done and entry.took is None:
        entry.took = time.monotonic() - entry.started


def _read_scores(site: Site, task_id: str, attempt: int) -> dict[str, float] | None:
    archive = site.storage.read_output(COMPETITION, task_id, attempt)
    if archive is None:
        return None
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = tar.extractfile("scores.json")
        return json.loads(member.read()) if member else None


def _table(entries: list[Entry]) -> Table:
    table = Table(title="demo competition: submissions", title_justify="left")
    for column in ("submission", "prediction task", "prediction", "exit", "scoring", "r2", "rmse", "took"):
        table.add_column(column)
    for e in entries:
        table.add_row(e.name, e.predict_id or "-", styled(e.predict_state), "-" if e.exit_code is None else str(e.exit_code),
                      styled(e.score_state) if e.score_state != "-" else "-",
                      str(e.score["r2"]) if e.score else "-", str(e.score["rmse"]) if e.score else "-",
                      f"{e.took:.1f}s" if e.took is not None else "…")
    return table


def _summary(console: Console, entries: list[Entry], elapsed: float) -> bool:
    console.print()
    table = Table(title="summary", title_justify="left")
    for column in ("submission", "expected", "outcome", "verdict", "detail"):
        table.add_column(column, overflow="fold")
    all_ok = True
    for e in entries:
        ok, detail = e.verdict()
        all_ok &= ok
        if e.reason and e.outcome != "finished":
            detail += f" — {e.reason}"
        table.add_row(e.name, e.spec["expect"], styled(e.outcome), "[green]ok[/]" if ok else "[red]UNEXPECTED[/]",
                      detail)
    console.print(table)
    if all_ok:
        console.print(f"[green]demo passed[/] in {elapsed:.1f} s: every submission behaved as expected "
                      "(the failing and timing-out ones included). Logs: `pool logs TASK`, state: `pool status`.")
    else:
        console.print(f"[red]demo FAILED[/] after {elapsed:.1f} s: see the rows marked UNEXPECTED "
                      "(`pool status TASK` and `pool logs TASK` show why).")
    return all_ok

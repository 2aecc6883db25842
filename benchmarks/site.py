"""The site service's numbers on a local stack (emulator, Azurite, SQLite, --workers agents):

* ``pool --help`` wall time (CLI start-up; goal <= 0.3 s) and its CPU time (steadier on a shared machine);
* ``pool submit --wait -- true`` wall time, CLI start-up included, against the running stack's site
  (the thin client: one HTTP POST, then a long-polling GET; goal median <= 0.5 s), and the command's
  own CPU time (not the stack's);
* submit through the HTTP API -> the database says finished (created_at -> finished_at of the row),
  one trivial task at a time: p50 / p99 (goal <= 30 ms / <= 100 ms);
* CPU per task of the site process (API + watcher + monitor, in this process) while the API path runs.

Run: ``.venv/bin/python -m benchmarks site [--tasks=100] [--cli=10] [--workers=4]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from rich.console import Console
from rich.table import Table

from benchmarks.pipeline import percentile
from worker.local.stack import LocalStack
from worker.site.models import Task

REPO = Path(__file__).resolve().parents[1]
POOL_BIN = str(Path(sys.executable).with_name("pool"))


def timed(argv: list[str], env: dict[str, str], n: int) -> tuple[list[float], list[float]]:
    """Wall seconds and CPU seconds (user + system) of each of ``n`` runs of the command."""
    walls, cpus = [], []
    for _ in range(n):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)  # the stack's processes have not exited:
        started = time.perf_counter()  # only the finished command is counted
        done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, check=False)
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stdout}{done.stderr}")
    return walls, cpus


def api_latency(stack: LocalStack, n: int) -> tuple[list[float], float]:
    """Seconds from the row's created_at to finished_at, one task at a time; CPU of this process."""
    api = httpx.Client(base_url=stack.service.url, headers={"Authorization": f"Bearer {stack.profile.site_token}"})
    me = psutil.Process()
    cpu_before = sum(me.cpu_times()[:2])
    latencies = []
    for _ in range(n):
        task_id = api.post("/api/v1/tasks", json={"pool": "default", "command": ["true"], "max_attempts": 1}
                           ).json()["id"]
        while True:
            # a read-only session: the probe must not take SQLite's write lock the watcher needs
            with stack.site.read_sessions() as session:
                row = session.get(Task, task_id)
                if row.finished_at is not None:
                    latencies.append((row.finished_at - row.created_at).total_seconds())
                    break
            time.sleep(0.005)
    cpu = sum(me.cpu_times()[:2]) - cpu_before
    api.close()
    return latencies, cpu / max(1, n)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks site")
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--cli", type=int, default=10, help="runs of each CLI command")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        console.print(f"starting a local stack with {args.workers} agents...")
        with LocalStack(Path(tmp) / "pool", workers=args.workers, on_output=lambda _l: None) as stack:
            # The commands run as an installed `pool` does: with cached bytecode (a development shell's
            # PYTHONDONTWRITEBYTECODE would recompile this checkout's modules on every run), warmed once.
            env = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
                   "POOL_DATA_DIR": str(stack.data_dir)}
            timed([POOL_BIN, "--help"], env, 1)
            help_walls, help_cpus = timed([POOL_BIN, "--help"], env, args.cli)
            timed([POOL_BIN, "submit", "--wait", "--", "true"], env, 1)  # warm (first SQLite page cache)
            submit_walls, submit_cpus = timed([POOL_BIN, "submit", "--wait", "--", "true"], env, args.cli)
            latencies, cpu_per_task = api_latency(stack, args.tasks)
    ms = 1000
    table = Table(title=f"site service: local stack, {args.workers} agents, SQLite (measured on a shared machine)")
    for column in ("measure", "p50 / median", "p99 / max", "goal", "n"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    table.add_row("pool --help (wall)", f"{statistics.median(help_walls) * ms:.0f} ms",
                  f"{max(help_walls) * ms:.0f} ms", "<= 300 ms", str(len(help_walls)))
    table.add_row("pool --help (CPU of the command)", f"{statistics.median(help_cpus) * ms:.0f} ms",
                  f"{max(help_cpus) * ms:.0f} ms", "", str(len(help_cpus)))
    table.add_row("pool submit --wait -- true (wall)", f"{statistics.median(submit_walls) * ms:.0f} ms",
                  f"{max(submit_walls) * ms:.0f} ms", "<= 500 ms", str(len(submit_walls)))
    table.add_row("pool submit --wait -- true (CPU of the command)", f"{statistics.median(submit_cpus) * ms:.0f} ms",
                  f"{max(submit_cpus) * ms:.0f} ms", "", str(len(submit_cpus)))
    table.add_row("API submit -> DB finished", f"{percentile(latencies, 50) * ms:.1f} ms",
                  f"{percentile(latencies, 99) * ms:.1f} ms", "<= 30 / 100 ms", str(len(latencies)))
    table.add_row("CPU per task: site process (API, watcher, monitor, benchmark client)",
                  f"{cpu_per_task * ms:.1f} ms", "", "", str(len(latencies)))
    console.print(table)

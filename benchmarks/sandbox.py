"""Overhead of the bwrap driver vs the process driver for a trivial task (``/bin/true``).

Each run is start() -> drain both pipes -> wait() -> result(), i.e. everything the agent pays per
task except downloads and uploads. Variants show where the cost goes: the full default sandbox
(cgroup + loop-mounted scratch disk + seccomp), without the loop disk (tmpfs scratch), and without
cgroups. Goal: the default sandbox adds at most 15 ms per task.

    .venv/bin/python -m benchmarks sandbox [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from worker.execution.base import ExecutionDriver, ExecutionSpec, Limits, Mount
from worker.execution.scratchfs import remove_work_root

GOAL_MS = 15.0


def _spec(root: Path, i: int) -> ExecutionSpec:
    task = root / f"t{i}"  # root plays the agent's work_dir
    for sub in ("program", "inputs", "scratch", "output"):
        (task / sub).mkdir(parents=True)
    return ExecutionSpec(
        task_id=f"bench{i}", argv=["/bin/true"], scratch_dir=task / "scratch", output_dir=task / "output",
        mounts=[Mount(task / "program", "/task/program"), Mount(task / "inputs", "/task/inputs")],
        limits=Limits(wall_time_s=60, memory_bytes=512 * 1024**2, max_processes=128, open_files=1024,
                      file_size_bytes=1024**3, scratch_bytes=1024**3, tmp_bytes=64 * 1024**2),
    )


def _one(driver: ExecutionDriver, spec: ExecutionSpec) -> float:
    t0 = time.perf_counter()
    ex = driver.start(spec)
    ex.stdout.read()
    ex.stderr.read()
    ex.wait()
    result = ex.result()
    elapsed = time.perf_counter() - t0
    ex.stdout.close()
    ex.stderr.close()
    if result.exit_code != 0:
        raise RuntimeError(f"{driver.name}: trivial task failed: {result}")
    return elapsed * 1000


def measure(variants: list[tuple[str, ExecutionDriver]], runs: int, root: Path) -> list[list[float]]:
    """Round-robin over the variants, starting each round at the next one, so a busy neighbour
    and the position in the round weigh on all of them alike."""
    samples: list[list[float]] = [[] for _ in variants]
    for i in range(runs + 2):
        for k in range(len(variants)):
            v = (i + k) % len(variants)
            driver = variants[v][1]
            ms = _one(driver, _spec(root / f"v{v}", i))
            if i >= 2:  # warm-up: first imports, page cache, the first loop disk
                samples[v].append(ms)
    return samples


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="benchmarks sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args(argv)

    from worker.execution import get_driver
    from worker.execution.bwrap import BwrapDriver

    console = Console()
    root = Path(tempfile.mkdtemp(prefix="pool-bench-sandbox-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    variants: list[tuple[str, ExecutionDriver]] = [("process", get_driver("process"))]
    try:
        default = BwrapDriver()
        default.check_available()
        variants.append((f"bwrap (default: cgroup {default.cgroup_host.version}, disk {default.disk}, seccomp)",
                         default))
        if default.disk == "loop":
            variants.append(("bwrap, tmpfs scratch (no loop disk)", BwrapDriver(disk="tmpfs")))
        variants.append(("bwrap, tmpfs scratch, no cgroup", BwrapDriver(disk="tmpfs", use_cgroups=False)))
    except Exception as exc:  # noqa: BLE001 - report and still measure the process driver
        console.print(f"[yellow]bwrap unavailable here: {exc}[/]")

    try:
        results = list(zip([name for name, _ in variants], measure(variants, args.runs, root), strict=True))
    finally:
        remove_work_root(root, [driver for _, driver in variants])

    base = statistics.median(results[0][1])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    table = Table(title=f"trivial task (/bin/true), start -> result, {args.runs} runs each, "
                        f"{os.cpu_count()} CPUs, load average {load} (min is the least disturbed run)")
    for col in ("driver", "min ms", "median ms", "p90 ms", "added vs process (median)", f"goal <= {GOAL_MS:g} ms"):
        table.add_column(col, justify="right" if col != "driver" else "left")
    for name, samples in results:
        med = statistics.median(samples)
        p90 = statistics.quantiles(samples, n=10)[-1] if len(samples) >= 10 else max(samples)
        added = med - base
        ok = "" if name == "process" else ("[green]met[/]" if added <= GOAL_MS else "[red]missed[/]")
        table.add_row(name, f"{min(samples):.1f}", f"{med:.1f}", f"{p90:.1f}", "-" if name == "process" else f"{added:+.1f}", ok)
    console.print(table)

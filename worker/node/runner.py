"""Runs one operation on many hosts at once (at most ``forks`` connections), with a rich progress
display on stderr and one result table on stdout."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from worker.node.inventory import Target
from worker.node.ops import Row
from worker.node.remote import Remote
from worker.node.ssh import CANCEL, NodeError, Session, SSHOptions

Operation = Callable[[Session, Remote, Callable[[str], None]], Row]


@dataclass
class HostResult:
    target: Target
    row: Row
    seconds: float


def run_one(target: Target, options: SSHOptions, operation: Operation, step: Callable[[str], None]) -> HostResult:
    t0 = time.monotonic()
    try:
        step("connecting")
        with Session(target, options) as session:
            step("running")
            row = operation(session, Remote(target, options.become), step)
    except NodeError as exc:
        row = Row(ok=False, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - one host's surprise must not stop the others
        row = Row(ok=False, error=f"{type(exc).__name__}: {exc}")
    return HostResult(target, row, time.monotonic() - t0)


def run_many(targets: list[Target], options: SSHOptions, operation: Operation, forks: int, title: str,
             err: Console, show_progress: bool = True) -> list[HostResult]:
    CANCEL.clear()
    results: dict[str, HostResult] = {}
    lock = threading.Lock()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[active]}"), console=err, transient=True,
                  disable=not show_progress) as progress:
        bar = progress.add_task(title, total=len(targets), active="")
        steps: dict[str, str] = {}

        def show() -> None:
            with lock:
                active = ", ".join(f"{n}: {s}" for n, s in list(steps.items())[:4])
                more = len(steps) - 4
            progress.update(bar, active=escape(active + (f" (+{more})" if more > 0 else "")))

        def one(target: Target) -> None:
            def step(what: str) -> None:
                with lock:
                    steps[target.name] = what
                show()

            result = run_one(target, options, operation, step)
            with lock:
                steps.pop(target.name, None)
                results[target.name] = result
            show()
            progress.advance(bar)

        with ThreadPoolExecutor(max_workers=max(1, forks), thread_name_prefix="node") as pool:
            futures = [pool.submit(one, t) for t in targets]
            try:
                pending = set(futures)
                while pending:  # timed waits, so Ctrl-C reaches this thread
                    _, pending = wait(pending, timeout=0.2)
            except KeyboardInterrupt:
                CANCEL.set()  # running commands stop; hosts not started yet are skipped
                for future in futures:
                    future.cancel()
                raise
    return [results[t.name] for t in targets]


def print_table(results: list[HostResult], out: Console, title: str) -> None:
    columns: list[str] = []
    for result in results:
        for key in result.row.columns:
            if key not in columns:
                columns.append(key)
    table = Table(title=title, title_justify="left")
    table.add_column("host", no_wrap=True)
    table.add_column("result")
    for column in columns:
        table.add_column(column)
    table.add_column("time", justify="right")
    for result in results:
        row = result.row
        verdict = "[green]ok[/]" if row.ok else "[red]FAILED[/]"
        table.add_row(escape(result.target.name), verdict, *(escape(row.columns.get(c, "")) for c in columns),
                      f"{result.seconds:.1f}s")
    out.print(table)
    failed = [r for r in results if not r.row.ok]
    summary = f"{len(results) - len(failed)} ok, {len(failed)} failed"
    for result in failed:  # one line per failed host, whole (the table would wrap it)
        out.print(f"[red]{escape(result.target.name)}[/]: {escape(result.row.error)}", soft_wrap=True)
    out.print(f"[red]{summary}[/]" if failed else f"[green]{summary}[/]")


def print_outputs(results: list[HostResult], out: Console) -> None:
    for result in results:
        if result.row.output:
            out.print(f"[bold]── {escape(result.target.name)} ──[/]")
            out.print(result.row.output.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)

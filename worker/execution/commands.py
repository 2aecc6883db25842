"""``pool sandbox check``: which limits an execution driver really enforces here, plus a self-test."""

from typing import Annotated

import typer

SELF_TEST = r"""
set -u
echo "uid $(id -u)"
echo "cwd $(pwd)"
ls ../program/hello.txt >/dev/null 2>&1 && echo "program readable" || echo "program MISSING"
(echo x > ../program/x) 2>/dev/null && echo "program WRITABLE" || echo "program read-only"
echo ok > ../output/ok.txt && echo "output writable"
if command -v python3 >/dev/null 2>&1; then python3 -c "$NET_PROBE"; else echo "net noprobe"; fi
"""
# Connects to a listener the check opens on the host's 127.0.0.1 (where the agent, the emulator
# and Azurite listen): a sandbox with its own network namespace cannot reach it.
NET_PROBE = """
import os, socket
s = socket.socket()
s.settimeout(3)
try:
    s.connect(("127.0.0.1", int(os.environ["POOL_PROBE_PORT"])))
    s.sendall(b"probe")
    print("net reached")
except OSError as exc:
    print("net blocked", exc.errno)
"""


class _Listener:
    """A TCP listener on the host's loopback that counts who really got through."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def _network_row(driver_name: str, lines: list[str], accepted: int, port: int) -> tuple[str, bool, str]:
    """What the probe saw, checked against what the driver claims (only `process` does not isolate)."""
    expect_isolated = driver_name != "process"
    said = next((ln for ln in lines if ln.startswith("net ")), "net noprobe")
    if said == "net noprobe":
        return "network isolated (probed)", False, "no python3 inside to probe with"
    reached = accepted > 0 or said == "net reached"
    detail = (f"the program reached the host's 127.0.0.1:{port}" if reached
              else f"the host's 127.0.0.1:{port} unreachable from the program (errno {said.split()[-1]})")
    if not expect_isolated:
        return "network not isolated (probed)", reached, detail
    return "network isolated (probed)", not reached, detail


def _self_test(driver_name: str, driver: object) -> list[tuple[str, bool, str]]:
    """Run a tiny program through the driver; return (check, passed, detail) rows."""
    import os
    import tempfile
    from pathlib import Path

    from worker.execution.base import ExecutionSpec, Limits, Mount
    from worker.execution.scratchfs import remove_work_root
    from worker.execution.supervisor import Supervisor

    root = Path(tempfile.mkdtemp(prefix="pool-sandbox-check-", dir="/var/tmp" if os.name != "nt" else None))
    rows: list[tuple[str, bool, str]] = []
    listener = _Listener()
    try:
        os.chmod(root, 0o711)
        task = root / "work" / "check"  # <work_dir>/<task>: drivers keep their own state in <work_dir>
        for sub in ("program", "inputs", "scratch", "output"):
            (task / sub).mkdir(parents=True)
        (task / "program" / "hello.txt").write_text("hello\n")
        os.chmod(task / "program" / "hello.txt", 0o444)
        os.chmod(task / "program", 0o555)
        spec = ExecutionSpec(
            task_id="sandbox-check", argv=["/bin/sh", "-c", SELF_TEST], scratch_dir=task / "scratch",
            output_dir=task / "output",
            mounts=[Mount(task / "program", "/task/program"), Mount(task / "inputs", "/task/inputs")],
            env={"NET_PROBE": NET_PROBE, "POOL_PROBE_PORT": str(listener.port)},
            limits=Limits(wall_time_s=30, memory_bytes=256 * 1024**2, max_processes=64, scratch_bytes=64 * 1024**2,
                          tmp_bytes=16 * 1024**2, open_files=256, file_size_bytes=64 * 1024**2),
        )
        chunks: list[bytes] = []
        result = Supervisor(driver.start(spec), wall_time_s=30,  # type: ignore[attr-defined]
                            on_output=lambda _n, c: chunks.append(c)).run()
        lines = b"".join(chunks).decode(errors="replace").splitlines()
        rows.append(("program ran", result.exit_code == 0, f"exit {result.exit_code}, {result.duration_s * 1000:.0f} ms"))
        uid = next((ln.split()[1] for ln in lines if ln.startswith("uid ")), "?")
        isolated = driver_name != "process"  # the process driver shares the agent's uid and view
        if isolated:
            rows.append(("unprivileged uid", uid != "0", f"uid {uid} inside"))
        rows.append(("program/ read-only", "program read-only" in lines, ""))
        rows.append(("program/ readable", "program readable" in lines, ""))
        rows.append(("output collected", (task / "output" / "ok.txt").exists(), ""))
        if isolated:
            rows.append(("cwd is /task/scratch", "cwd /task/scratch" in lines, next(
                (ln for ln in lines if ln.startswith("cwd ")), "")))
        rows.append(_network_row(driver_name, lines, listener.accepted, listener.port))
    except Exception as exc:  # noqa: BLE001 - the self-test reports any failure, it does not crash
        rows.append(("program ran", False, f"{type(exc).__name__}: {exc}"))
    finally:
        listener.close()
        remove_work_root(root, [driver])
    return rows


def register(app: typer.Typer) -> None:
    sandbox = typer.Typer(help="Inspect the execution drivers that sandbox task programs.", no_args_is_help=True)
    app.add_typer(sandbox, name="sandbox")

    @sandbox.command("check")
    def check(
        driver: Annotated[str, typer.Option("--driver", "-d", help="process, bwrap, jobobject or docker.")] = "bwrap",
        self_test: Annotated[bool, typer.Option("--self-test/--no-self-test",
                                                help="Also run a tiny program through the driver.")] = True,
    ) -> None:
        """Print which limits DRIVER really enforces on this host (and by which mechanism: cgroup v2,
        cgroup v1, rlimit, Job Object, container), then run a tiny program through it. Exit status 0
        when the driver is usable and the self-test passed, 1 when the self-test failed, 2 when the
        driver cannot run here (the message says what to install)."""
        from rich.console import Console
        from rich.table import Table

        from worker.errors import PoolError
        from worker.execution import driver_names, get_driver

        console = Console()
        if driver not in driver_names():
            console.print(f"[red]unknown driver {driver!r}[/]; choose one of {', '.join(driver_names())}")
            raise typer.Exit(2)
        try:
            instance = get_driver(driver)
            instance.check_available()
        except (PoolError, OSError) as exc:
            console.print(f"[red]driver {driver} is not usable on this host:[/] {exc}")
            raise typer.Exit(2) from None

        table = Table(title=f"driver {driver}: limits enforced on this host")
        table.add_column("limit")
        table.add_column("how")
        for key, how in instance.enforced_limits().items():
            table.add_row(key, how)
        console.print(table)
        if not self_test:
            return
        rows = _self_test(driver, instance)
        tests = Table(title="self-test")
        tests.add_column("check")
        tests.add_column("result")
        tests.add_column("detail")
        for name, passed, detail in rows:
            tests.add_row(name, "[green]pass[/]" if passed else "[red]FAIL[/]", detail)
        console.print(tests)
        if not all(passed for _, passed, _ in rows):
            raise typer.Exit(1)

"""The local Service Bus emulator through the unchanged SDK, side by side with RabbitMQ (pika).

Workload, identical for both brokers (durable: a send is acknowledged only once stored):
* latency: one message at a time, send -> receive -> complete (RabbitMQ: publish with confirms ->
  basic_get -> ack); p50 / p99 of the whole round trip;
* throughput: 4 sender and 4 receiver processes, each with its own connection, moving N messages;
  receivers consume as a stream with a prefetch of 50 (the SDK's ``for msg in receiver``; pika's
  ``basic_consume``) and settle every message (complete / ack) individually. ``--receive=batch``
  makes the SDK's receivers call ``receive_messages(max_message_count=50)`` instead: that call waits
  up to 0.2 s for a full batch (the SDK's "further pull" wait, on the client), which pika's consumer
  has no counterpart for; it idles the receivers between batches and ends every run with such a wait.

Targets: p99 <= 5 ms, >= 2,000 msg/s, >= 0.7x RabbitMQ, broker CPU <= 0.15 ms per message. The CPU
split (user + system seconds of the broker's processes, and of the 8 client processes, during the
throughput run, per message; the kernel's part of the broker's share shown on its own) shows where a
CPU-bound run's time goes.

    .venv/bin/python -m benchmarks emulator [--messages=N] [--latency-runs=N] [--no-rabbitmq]
                                            [--durability=full|normal] [--receive=stream|batch] [--perf]

--perf adds where each broker's CPU went (Linux perf): its runtime, the kernel, native libraries.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from rich.console import Console
from rich.table import Table

from benchmarks._perf import FREQUENCY, KERNEL_PARTS, CpuBreakdown, PerfRecord, PerfUnavailable, available
from worker.local.processes import free_port
from worker.util.process_group import stop_process_group

P99_GOAL_MS = 5.0
THROUGHPUT_GOAL = 2000.0
RATIO_GOAL = 0.7
BROKER_CPU_GOAL_MS = 0.15
QUEUE = "bench"


# -- emulator ---------------------------------------------------------------------------------------
class _ClientCpu:
    """CPU seconds a client process spends between the start signal and its end, added to ``total``."""

    def __init__(self, total: mp.Value) -> None:
        self.total = total

    def __enter__(self) -> Self:
        self.t0 = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        with self.total.get_lock():
            self.total.value += time.process_time() - self.t0


def _count_settled(done: mp.Value) -> int:
    """One more message settled, across all receiver processes; the new count."""
    with done.get_lock():
        done.value += 1
        return done.value


def _sb_sender(conn: str, count: int, start: mp.Event, cpu: mp.Value) -> None:
    from azure.servicebus import ServiceBusClient, ServiceBusMessage

    with ServiceBusClient.from_connection_string(conn) as client, client.get_queue_sender(QUEUE) as sender:
        start.wait()
        with _ClientCpu(cpu):
            for i in range(count):
                sender.send_messages(ServiceBusMessage(f"m{i}"))


def _sb_receiver(conn: str, done: mp.Value, total: int, start: mp.Event, cpu: mp.Value) -> None:
    """A streaming consumer: each message as it arrives, completed on its own (as pika's basic_consume)."""
    from azure.servicebus import ServiceBusClient

    # max_wait_time: the iterator ends after a second without messages (the others finished the run)
    with ServiceBusClient.from_connection_string(conn) as client, client.get_queue_receiver(
            QUEUE, prefetch_count=50, max_wait_time=1) as receiver:
        start.wait()
        with _ClientCpu(cpu):
            while done.value < total:
                for msg in receiver:
                    receiver.complete_message(msg)
                    if _count_settled(done) >= total:
                        break


def _sb_batch_receiver(conn: str, done: mp.Value, total: int, start: mp.Event, cpu: mp.Value) -> None:
    """--receive=batch: batches of up to 50 from receive_messages, each message completed on its own."""
    from azure.servicebus import ServiceBusClient

    with ServiceBusClient.from_connection_string(conn) as client, client.get_queue_receiver(
            QUEUE, prefetch_count=50) as receiver:
        start.wait()
        with _ClientCpu(cpu):
            while done.value < total:
                for msg in receiver.receive_messages(max_message_count=50, max_wait_time=0.5):
                    receiver.complete_message(msg)
                    _count_settled(done)


def emulator_latency(conn: str, runs: int) -> list[float]:
    from azure.servicebus import ServiceBusClient, ServiceBusMessage

    samples = []
    with ServiceBusClient.from_connection_string(conn) as client, client.get_queue_sender(QUEUE) as sender, \
            client.get_queue_receiver(QUEUE, prefetch_count=0) as receiver:
        for i in range(runs + 20):
            t0 = time.perf_counter()
            sender.send_messages(ServiceBusMessage(f"lat{i}"))
            (msg,) = receiver.receive_messages(max_message_count=1, max_wait_time=5)
            receiver.complete_message(msg)
            if i >= 20:  # warm-up
                samples.append((time.perf_counter() - t0) * 1000)
    return samples


def _cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of these processes (all their threads) so far."""
    import psutil

    user = system = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            user, system = user + t.user, system + t.system
        except psutil.NoSuchProcess:
            pass
    return user, system


@dataclass
class Throughput:
    msg_per_s: float
    broker_cpu_ms: float  # per message
    client_cpu_ms: float  # per message, all 8 client processes together
    broker_sys_ms: float = 0.0  # the kernel's part of broker_cpu_ms (socket writes, fsync)
    breakdown: CpuBreakdown | None = None  # --perf: where the broker's CPU went


def throughput(sender: Callable, receiver: Callable, conn: str, total: int, broker_pids: Callable[[], list[int]],
               workers: int = 4, perf: bool = False) -> Throughput:
    ctx = mp.get_context("fork")
    start = ctx.Event()
    done = ctx.Value("i", 0)
    client_cpu = ctx.Value("d", 0.0)
    per_sender = total // workers
    total = per_sender * workers
    procs = [ctx.Process(target=sender, args=(conn, per_sender, start, client_cpu)) for _ in range(workers)]
    procs += [ctx.Process(target=receiver, args=(conn, done, total, start, client_cpu)) for _ in range(workers)]
    for p in procs:
        p.start()
    time.sleep(3)  # every client connected and attached before the clock starts
    pids = broker_pids()
    with contextlib.ExitStack() as stack:
        recording = None
        if perf:
            try:
                recording = stack.enter_context(PerfRecord(pids))
            except PerfUnavailable as exc:
                print(f"--perf: {exc}; this run goes on without it")
        cpu0 = _cpu_seconds(pids)
        t0 = time.perf_counter()
        start.set()
        deadline = time.monotonic() + 300
        while done.value < total and time.monotonic() < deadline:
            time.sleep(0.005)
        elapsed = time.perf_counter() - t0
        user1, sys1 = _cpu_seconds(pids)
    if recording is not None and recording.error:
        print(f"--perf: {recording.error}")
    broker_cpu, broker_sys = user1 + sys1 - sum(cpu0), sys1 - cpu0[1]
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
    if done.value < total:
        raise RuntimeError(f"only {done.value}/{total} messages moved within the deadline")
    return Throughput(total / elapsed, broker_cpu * 1000 / total, client_cpu.value * 1000 / total,
                      broker_sys * 1000 / total, recording.breakdown if recording else None)


# -- RabbitMQ ---------------------------------------------------------------------------------------
def _epmd_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-x", "epmd"], capture_output=True, text=True, check=False).stdout
    return {int(p) for p in out.split()}


class RabbitMQ:
    """rabbitmq-server started by hand (there is no systemd here) as the rabbitmq user, in its own
    process group; stopped by that group, plus the epmd daemon if this run started it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._epmd_before: set[int] = set()

    def __enter__(self) -> Self:
        for sub in ("mnesia", "log", "etc"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "etc" / "enabled_plugins").write_text("[].\n")
        subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(self.root)], check=True)
        for d in (self.root, self.root.parent):
            os.chmod(d, 0o755)  # the rabbitmq user must reach its directories
        env = dict(os.environ, HOME="/var/lib/rabbitmq", RABBITMQ_MNESIA_BASE=str(self.root / "mnesia"),
                   RABBITMQ_LOG_BASE=str(self.root / "log"),
                   RABBITMQ_ENABLED_PLUGINS_FILE=str(self.root / "etc" / "enabled_plugins"),
                   RABBITMQ_NODE_PORT=str(self.port), RABBITMQ_DIST_PORT=str(free_port()),
                   RABBITMQ_NODENAME=f"bench{self.port}@localhost", RABBITMQ_PID_FILE=str(self.root / "pid"))
        self._epmd_before = _epmd_pids()
        # setpriv, not the packaged wrapper's `su`, so the server stays in our process group
        cmd = ["/usr/lib/rabbitmq/bin/rabbitmq-server"]
        if os.geteuid() == 0:
            cmd = ["setpriv", "--reuid=rabbitmq", "--regid=rabbitmq", "--init-groups", *cmd]
        self.proc = subprocess.Popen(cmd, env=env, cwd=self.root, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        import pika

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", self.port)).close()
                return self
            except pika.exceptions.AMQPConnectionError:  # not up yet
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"rabbitmq-server did not start (see {self.root / 'log'})")

    def pids(self) -> list[int]:
        """The server's processes (beam.smp and its helpers): its process group."""
        import psutil

        assert self.proc is not None
        group = []
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == self.proc.pid:
                    group.append(p.pid)
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
        return group

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process_group(self.proc, timeout=30)
            self.proc = None
        for pid in _epmd_pids() - self._epmd_before:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def _rmq_channel(port: int):
    import pika

    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    ch = conn.channel()
    ch.queue_declare(QUEUE, durable=True)
    return conn, ch


def _rmq_sender(port: str, count: int, start: mp.Event, cpu: mp.Value) -> None:
    import pika

    conn, ch = _rmq_channel(int(port))
    ch.confirm_delivery()  # publish returns once the broker has stored the message
    props = pika.BasicProperties(delivery_mode=2)
    start.wait()
    with _ClientCpu(cpu):
        for i in range(count):
            ch.basic_publish("", QUEUE, f"m{i}".encode(), props)
    conn.close()


def _rmq_receiver(port: str, done: mp.Value, total: int, start: mp.Event, cpu: mp.Value) -> None:
    conn, ch = _rmq_channel(int(port))
    ch.basic_qos(prefetch_count=50)
    start.wait()

    def on_message(channel, method, _props, _body) -> None:
        channel.basic_ack(method.delivery_tag)
        _count_settled(done)

    ch.basic_consume(QUEUE, on_message)
    with _ClientCpu(cpu):
        while done.value < total:
            conn.process_data_events(time_limit=0.2)
    conn.close()


def rabbitmq_latency(port: int, runs: int) -> list[float]:
    import pika

    conn, ch = _rmq_channel(port)
    ch.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2)
    samples = []
    for i in range(runs + 20):
        t0 = time.perf_counter()
        ch.basic_publish("", QUEUE, f"lat{i}".encode(), props)
        method = None
        while method is None:
            method, _, _ = ch.basic_get(QUEUE)
        ch.basic_ack(method.delivery_tag)
        if i >= 20:
            samples.append((time.perf_counter() - t0) * 1000)
    conn.close()
    return samples


# -- report -----------------------------------------------------------------------------------------
def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks emulator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=8000, help="messages in the throughput run")
    parser.add_argument("--latency-runs", type=int, default=1000, help="round trips in the latency run")
    parser.add_argument("--no-rabbitmq", action="store_true", help="skip the RabbitMQ comparison")
    parser.add_argument("--durability", choices=["full", "normal"], default="full",
                        help="the emulator's SQLite synchronous mode (default full: fsync per commit)")
    parser.add_argument("--receive", choices=["stream", "batch"], default="stream",
                        help="how the SDK's receivers take messages: stream (default: `for msg in receiver`, as "
                             "pika's basic_consume) or batch (receive_messages(max_message_count=50), which waits "
                             "up to 0.2 s on the client for a full batch)")
    parser.add_argument("--perf", action="store_true",
                        help="sample the brokers with Linux perf during the throughput run and print where their "
                             "CPU went: runtime (interpreter/VM), kernel (fsync, sockets, ...), native libraries")
    args = parser.parse_args(argv)
    if args.perf and not available():
        parser.error("--perf needs Linux perf (Debian: apt install linux-perf)")

    from tests.fixtures.emulator import write_emulator_config
    from worker.emulator.launcher import EmulatorProcess

    console = Console(width=max(Console().width, 150))  # the table stays readable in logs
    rows: list[tuple[str, list[float], Throughput]] = []
    root = Path(tempfile.mkdtemp(prefix="bench-emulator-"))
    try:
        write_emulator_config(root / "emulator.yaml", queues=[{"name": QUEUE}])
        emu = EmulatorProcess(root / "emulator.yaml", root / "data", durability=args.durability)
        emu.start()
        try:
            console.print(f"emulator on 127.0.0.1:{emu.port} (durability {args.durability}) ...")
            lat = emulator_latency(emu.connection_string(), args.latency_runs)
            assert emu.proc is not None
            pid = emu.proc.pid
            receiver = _sb_receiver if args.receive == "stream" else _sb_batch_receiver
            tput = throughput(_sb_sender, receiver, emu.connection_string(), args.messages, lambda: [pid],
                              perf=args.perf)
            rows.append((f"emulator (azure-servicebus SDK, {args.receive})", lat, tput))
        finally:
            emu.stop()
        if not args.no_rabbitmq and shutil.which("rabbitmq-server"):
            console.print("starting rabbitmq-server ...")
            with RabbitMQ(root / "rabbitmq") as rmq:
                lat = rabbitmq_latency(rmq.port, args.latency_runs)
                tput = throughput(_rmq_sender, _rmq_receiver, str(rmq.port), args.messages, rmq.pids,
                                  perf=args.perf)
                rows.append(("RabbitMQ 3 (pika, confirms, persistent)", lat, tput))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    table = Table(title=f"send -> receive -> settle, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    for col in ("broker", "p50 ms", "p99 ms", "mean ms", "msg/s (4+4)", "vs RabbitMQ", "broker CPU ms/msg",
                "of it kernel", "clients CPU ms/msg"):
        table.add_column(col, justify="right" if col != "broker" else "left")
    base = rows[1][2].msg_per_s if len(rows) > 1 else None
    for name, lat, tput in rows:
        table.add_row(name, f"{statistics.median(lat):.2f}", f"{_pct(lat, 0.99):.2f}", f"{statistics.mean(lat):.2f}",
                      f"{tput.msg_per_s:,.0f}", f"{tput.msg_per_s / base:.2f}x" if base else "-",
                      f"{tput.broker_cpu_ms:.3f}", f"{tput.broker_sys_ms:.3f}", f"{tput.client_cpu_ms:.3f}")
    console.print(table)
    emu_lat, emu_tput = rows[0][1], rows[0][2]
    checks = [f"p99 {_pct(emu_lat, 0.99):.2f} ms (goal <= {P99_GOAL_MS})",
              f"{emu_tput.msg_per_s:,.0f} msg/s (goal >= {THROUGHPUT_GOAL:,.0f})",
              f"broker CPU {emu_tput.broker_cpu_ms:.3f} ms/msg (goal <= {BROKER_CPU_GOAL_MS})"]
    if base:
        checks.append(f"{emu_tput.msg_per_s / base:.2f}x RabbitMQ (goal >= {RATIO_GOAL})")
    console.print("emulator: " + "; ".join(checks))
    if args.perf:
        console.print(_perf_table(rows))


def _perf_table(rows: list[tuple[str, list[float], Throughput]]) -> Table:
    """The broker's CPU per message split by perf; "outside the runtime" is what would remain if the
    interpreter (or VM) cost nothing: a floor for any rewrite of the code it runs."""
    table = Table(title=f"where the broker's CPU per message went (perf, {FREQUENCY} Hz, throughput run)")
    for col in ("broker", "CPU ms/msg", "runtime", "kernel", "of it: fsync / send / receive / file writes / poll",
                "native libraries (top)", "outside the runtime ms/msg"):
        table.add_column(col, justify="left" if col in ("broker", "native libraries (top)") else "right")
    for name, _, tput in rows:
        b = tput.breakdown
        if b is None:
            continue
        parts = " / ".join(f"{100 * b.kernel_parts[k]:.0f}%" for k in KERNEL_PARTS)
        natives = ", ".join(f"{dso} {100 * share:.0f}%" for dso, share in b.top_native)
        table.add_row(name, f"{tput.broker_cpu_ms:.3f}", f"{100 * b.runtime:.0f}%", f"{100 * b.kernel:.0f}%", parts,
                      f"{100 * b.native:.0f}%: {natives}", f"{b.outside_runtime * tput.broker_cpu_ms:.3f}")
    return table

"""Run the emulator: load config, open the store, serve AMQP and HTTP until SIGTERM/SIGINT.

On start it prints one connection string per policy and, when asked, writes a small JSON "ready
file" (pid, host, ports) that :class:`worker.emulator.launcher.EmulatorProcess` waits for.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from worker.emulator.auth import Authority
from worker.emulator.broker import Broker
from worker.emulator.config import EmulatorConfig
from worker.emulator.http import HttpApi
from worker.emulator.server import AmqpServer
from worker.emulator.store import Store

log = logging.getLogger(__name__)

DB_NAME = "servicebus.sqlite3"


def connection_string(host: str, port: int, policy: str, key: str, entity: str | None = None) -> str:
    """The string the SDK takes: plain AMQP (no TLS) to host:port, via ``UseDevelopmentEmulator=true``."""
    text = f"Endpoint=sb://{host}:{port};SharedAccessKeyName={policy};SharedAccessKey={key};"
    if entity:
        text += f"EntityPath={entity};"
    return text + "UseDevelopmentEmulator=true"


def describe_connection_strings(config: EmulatorConfig, host: str, port: int) -> list[str]:
    if host in ("0.0.0.0", "::", ""):  # bound to every interface: clients on this machine use loopback
        host = "127.0.0.1"
    lines = [f"namespace policy {p.name} [{', '.join(r.value for r in p.rights)}]: "
             f"{connection_string(host, port, p.name, p.key)}" for p in config.policies]
    for q in config.queues:
        lines += [f"queue {q.name} policy {p.name} [{', '.join(r.value for r in p.rights)}]: "
                  f"{connection_string(host, port, p.name, p.key, q.name)}" for p in q.policies]
    return lines


async def serve(config: EmulatorConfig, data_dir: Path, host: str = "127.0.0.1", port: int = 5672,
                http_port: int | None = None, ready_file: Path | None = None,
                announce: Callable[[str], None] = print, synchronous: str = "FULL",
                stop: asyncio.Event | None = None, parent_pid: int | None = None) -> None:
    store = Store(data_dir / DB_NAME, synchronous=synchronous)
    authority = Authority(config)
    broker = Broker(store)
    server = AmqpServer(broker, authority)
    broker.start(config.queues)
    for q in broker.queues.values():  # queues created at runtime earlier keep their policies
        authority.add_queue_policies(q.name, q.config.policies)
    amqp_port = await server.start(host, port)
    api = HttpApi(broker, authority, {"amqp": amqp_port})
    bound_http = await api.start(host, http_port) if http_port is not None else None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread / platform without signals
            pass
    if parent_pid is not None:
        _watch_parent(loop, parent_pid, stop)
    announce(f"Service Bus emulator listening on amqp://{host}:{amqp_port}"
             + (f", http://{host}:{bound_http} (/healthz, /metrics, /queues)" if bound_http else "")
             + f"; data in {data_dir}")
    for line in describe_connection_strings(config, host, amqp_port):
        announce(line)
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": host, "port": amqp_port, "http_port": bound_http}))
        tmp.replace(ready_file)
    try:
        await stop.wait()
    finally:
        announce("Service Bus emulator shutting down")
        await api.stop()
        await server.stop()
        await asyncio.sleep(0.05)  # let the close frames go out
        broker.stop()
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)


def _watch_parent(loop: asyncio.AbstractEventLoop, parent_pid: int, stop: asyncio.Event) -> None:
    """Shut down once the process that started us is gone (a test run killed without teardown)."""
    def check() -> None:
        if os.getppid() != parent_pid:
            announce_exit = "parent process exited; shutting down"
            print(announce_exit, flush=True)
            stop.set()
            return
        loop.call_later(1.0, check)

    loop.call_later(1.0, check)


def run(config_path: Path, data_dir: Path, host: str, port: int, http_port: int | None,
        ready_file: Path | None = None, synchronous: str = "FULL", parent_pid: int | None = None) -> None:
    logging.basicConfig(level=os.environ.get("POOL_EMULATOR_LOG", "WARNING").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = EmulatorConfig.load(config_path)

    def announce(line: str) -> None:
        print(line, flush=True)

    main = serve(config, data_dir, host, port, http_port, ready_file, announce, synchronous,
                 parent_pid=parent_pid)
    loop_factory = _loop_factory()
    profile_path = os.environ.get("POOL_EMULATOR_PROFILE")
    if not profile_path:
        _run(main, loop_factory)
        return
    import cProfile  # developer aid: where does the broker spend its CPU (not wall time)?
    import time

    # process_time: CPU only, but each reading is a system call that inflates small functions;
    # POOL_EMULATOR_PROFILE_CLOCK=wall reads the cheap monotonic clock (idle time shows as epoll).
    clock = time.perf_counter if os.environ.get("POOL_EMULATOR_PROFILE_CLOCK") == "wall" else time.process_time
    with cProfile.Profile(clock) as prof:
        _run(main, loop_factory)
    prof.dump_stats(profile_path)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop (libuv) when installed: its socket callbacks and timers cost a fraction of asyncio's
    pure-Python selector loop per message. POOL_EMULATOR_LOOP=asyncio keeps the standard loop."""
    if os.environ.get("POOL_EMULATOR_LOOP", "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        log.info("uvloop is not installed: running on asyncio's own event loop")
        return None
    return uvloop.new_event_loop


def _run(main, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None) -> None:
    if loop_factory is None:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main)

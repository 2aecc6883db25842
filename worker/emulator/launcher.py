"""Start and stop ``pool emulator`` as a child process (tests, the local stack, benchmarks).

    with EmulatorProcess(config_path, data_dir).start() as emu:
        ServiceBusClient.from_connection_string(emu.connection_string())
        emu.create_queue("comp-x-tasks", lock_duration="PT30S", policies=[...])

The child runs in its own process group, logs to ``<data_dir>/emulator.log``, and reports its bound
ports through a ready file, so port 0 (a free port) works without races.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

from worker.emulator.app import connection_string
from worker.emulator.auth import generate_key, make_token
from worker.emulator.config import EmulatorConfig, PolicyConfig
from worker.emulator.http import parse_metrics
from worker.errors import PoolError
from worker.util.process_group import kill_process_group, stop_process_group

__all__ = ["EmulatorError", "EmulatorProcess", "generate_key"]


class EmulatorError(PoolError, RuntimeError):
    """The emulator did not start, died, or refused a request."""


class EmulatorProcess:
    def __init__(self, config_path: Path, data_dir: Path, host: str = "127.0.0.1",
                 port: int = 0, http_port: int = 0, durability: str = "full",
                 exit_with_parent: bool = False) -> None:
        self.config_path = Path(config_path)
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.http_port = http_port
        self._requested = (port, http_port)
        self.durability = durability  # "full" (fsync per commit) or "normal" (survives process crashes)
        # True: the emulator stops when this process dies, even by SIGKILL (test fixtures). False
        # (default): it outlives its starter, e.g. a `pool local up` that returns to the shell.
        self.exit_with_parent = exit_with_parent
        self.proc: subprocess.Popen[bytes] | None = None
        self._runtime_policies: dict[str, list[PolicyConfig]] = {}
        self.config = EmulatorConfig.load(self.config_path)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "emulator.log"

    @property
    def _ready_file(self) -> Path:
        return self.data_dir / "emulator.ready.json"

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, timeout: float = 20) -> EmulatorProcess:
        if self.proc is not None and self.proc.poll() is None:
            raise EmulatorError("already running")
        self.config = EmulatorConfig.load(self.config_path)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._ready_file.unlink(missing_ok=True)
        port, http_port = self._requested
        cmd = [sys.executable, "-m", "worker", "emulator", "--config", str(self.config_path),
               "--host", self.host, "--port", str(port), "--data-dir", str(self.data_dir),
               "--http-port", str(http_port), "--ready-file", str(self._ready_file),
               "--durability", self.durability] + (["--exit-with-parent"] if self.exit_with_parent else [])
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EmulatorError(f"emulator exited with {self.proc.returncode}: {self._log_tail()}")
            if self._ready_file.exists():
                try:
                    info = json.loads(self._ready_file.read_text())
                except json.JSONDecodeError:
                    info = None
                if info:
                    self.port, self.http_port = int(info["port"]), int(info["http_port"])
                    if self._healthy():
                        return self
            time.sleep(0.05)
        self.kill()
        raise EmulatorError(f"emulator not ready within {timeout}s: {self._log_tail()}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.http_port}/healthz", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM (clean shutdown), then SIGKILL if it does not exit within ``timeout``."""
        if self.proc is None:
            return
        stop_process_group(self.proc, timeout)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the whole process group (crash simulation for durability tests)."""
        if self.proc is None:
            return
        kill_process_group(self.proc)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers -----------------------------------------------------------------------------------
    def _policy(self, name: str, entity: str | None) -> PolicyConfig:
        if entity:
            for q in self.config.queues:
                if q.name.lower() == entity.lower():
                    for p in q.policies:
                        if p.name == name:
                            return p
            for p in self._runtime_policies.get(entity.lower(), []):
                if p.name == name:
                    return p
        for p in self.config.policies:
            if p.name == name:
                return p
        raise KeyError(f"no policy {name!r}" + (f" on queue {entity!r} or the namespace" if entity else ""))

    def connection_string(self, policy: str = "RootManageSharedAccessKey", entity: str | None = None) -> str:
        """Namespace-level (``entity`` optional) or queue-level (policy defined on ``entity``) string."""
        p = self._policy(policy, entity)
        return connection_string(self.host, self.port, p.name, p.key, entity)

    def _manage_token(self) -> str:
        p = self.config.manage_policy()
        if p is None:
            raise EmulatorError("the config has no namespace policy with Manage rights")
        return make_token(f"sb://{self.host}:{self.port}/", p.name, p.key, ttl_seconds=300)

    def _request(self, method: str, path: str, body: dict | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://{self.host}:{self.http_port}{path}", data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if method != "GET":
            req.add_header("Authorization", self._manage_token())
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                text = resp.read()
        except urllib.error.HTTPError as exc:
            raise EmulatorError(f"{method} {path}: HTTP {exc.code}: {exc.read().decode(errors='replace')}") from exc
        return json.loads(text) if text and path != "/metrics" else text

    def create_queue(self, name: str, **properties: Any) -> None:
        """Create (or update) a queue at runtime; properties as in the YAML config."""
        body = {"name": name, **properties}
        self._request("PUT", f"/queues/{name}", body)
        policies = [PolicyConfig.model_validate(p) for p in properties.get("policies", [])]
        self._runtime_policies[name.lower()] = policies

    def queues(self) -> list[dict]:
        return self._request("GET", "/queues")

    def metrics(self) -> dict[str, dict[str, float]]:
        raw = self._request("GET", "/metrics")
        return parse_metrics(raw.decode() if isinstance(raw, bytes) else str(raw))

"""The emulator's small HTTP port: health, Prometheus metrics and runtime queue management.

* ``GET /healthz``          -> 200 ``ok`` once the broker serves AMQP
* ``GET /metrics``          -> Prometheus text, one series per queue (see :func:`render_metrics`)
* ``GET /queues``           -> JSON list of queue properties (keys of policies are not shown)
* ``PUT /queues/<name>``    -> create (201) or update (200) a queue; JSON body = queue properties as in
  the YAML config. Needs ``Authorization: SharedAccessSignature ...`` signed by a policy with Manage.

Runs on the broker's event loop, so it reads and changes broker state without locks.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from worker.emulator.auth import AuthError, Authority
from worker.emulator.broker import Broker
from worker.emulator.config import ConfigError, Right, parse_queue

log = logging.getLogger(__name__)

METRIC_PREFIX = "servicebus_emulator_queue_"
_HELP = {
    "active_messages": "Messages available for delivery",
    "locked_messages": "Messages locked by a receiver (peek-lock)",
    "scheduled_messages": "Messages scheduled for later enqueue",
    "deferred_messages": "Deferred messages",
    "dead_lettered_messages": "Messages in the dead-letter sub-queue",
    "enqueued_total": "Messages accepted since start",
    "deliveries_total": "Deliveries to receivers since start",
    "completed_total": "Messages completed (or received-and-deleted) since start",
    "abandoned_total": "Messages abandoned since start",
    "dead_lettered_total": "Messages moved to the dead-letter sub-queue since start",
    "deferred_total": "Messages deferred since start",
    "expired_total": "Messages expired (TTL) since start",
    "duplicates_total": "Sends dropped by duplicate detection since start",
    "consumers": "Receiving links attached to the queue",
}


def render_metrics(metrics: dict[str, dict[str, float]]) -> str:
    lines: list[str] = []
    names = sorted({k for per_queue in metrics.values() for k in per_queue})
    for name in names:
        full = METRIC_PREFIX + name
        kind = "counter" if name.endswith("_total") else "gauge"
        lines.append(f"# HELP {full} {_HELP.get(name, name)}")
        lines.append(f"# TYPE {full} {kind}")
        for queue in sorted(metrics):
            if name in metrics[queue]:
                lines.append(f'{full}{{queue="{queue}"}} {metrics[queue][name]:g}')
    return "\n".join(lines) + "\n"


def parse_metrics(text: str) -> dict[str, dict[str, float]]:
    """Inverse of :func:`render_metrics`: ``{queue: {metric: value}}``."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line.startswith(METRIC_PREFIX):
            continue
        series, _, value = line.rpartition(" ")
        name, _, labels = series.partition("{")
        queue = labels.split('queue="', 1)[1].split('"', 1)[0] if 'queue="' in labels else ""
        out.setdefault(queue, {})[name[len(METRIC_PREFIX):]] = float(value)
    return out


class HttpApi:
    def __init__(self, broker: Broker, authority: Authority, amqp_port_ref: dict[str, int]) -> None:
        self.broker = broker
        self.authority = authority
        self.info = amqp_port_ref
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, host, port, reuse_address=True)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = (lines[0].split(" ") + ["", ""])[:3]
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0") or 0)
            if length > 1024 * 1024:
                status, ctype, body = 413, "text/plain", b"request body too large\n"
            else:
                payload = await reader.readexactly(length) if length else b""
                status, ctype, body = await self._route(method, target.split("?", 1)[0], headers, payload)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            status, ctype, body = 400, "text/plain", b"bad request\n"
        except Exception:
            log.exception("http handler failed")
            status, ctype, body = 500, "text/plain", b"internal error\n"
        reason = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
                  404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
                  500: "Internal Server Error"}.get(status, "")
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + body)
        try:
            await writer.drain()
            writer.close()
        except ConnectionError:
            pass

    async def _route(self, method: str, path: str, headers: dict[str, str], payload: bytes) -> tuple[int, str, bytes]:
        if path == "/healthz" and method == "GET":
            return 200, "text/plain", b"ok\n"
        if path == "/metrics" and method == "GET":
            return 200, "text/plain; version=0.0.4", render_metrics(self.broker.metrics()).encode()
        if path == "/queues" and method == "GET":
            queues = [self._describe(q) for q in self.broker.queues.values()]
            return 200, "application/json", json.dumps(queues).encode()
        if path.startswith("/queues/"):
            name = path[len("/queues/"):]
            if method == "GET":
                q = self.broker.queues.get(name.lower())
                if q is None:
                    return _json(404, {"error": f"queue {name!r} not found"})
                return 200, "application/json", json.dumps(self._describe(q)).encode()
            if method == "PUT":
                return await self._put_queue(name, headers, payload)
            return _json(405, {"error": f"{method} not allowed on {path}"})
        return _json(404, {"error": f"no such resource {path}"})

    def _describe(self, q: Any) -> dict:
        data = q.config.model_dump(mode="json")
        data["policies"] = [{"name": p["name"], "rights": p["rights"]} for p in data["policies"]]
        data["runtime"] = q.runtime
        return data

    async def _put_queue(self, name: str, headers: dict[str, str], payload: bytes) -> tuple[int, str, bytes]:
        token = headers.get("authorization", "")
        try:
            grant = self.authority.verify(token)
        except AuthError as exc:
            return _json(401, {"error": f"unauthorized: {exc}"})
        if grant.scope or Right.MANAGE not in grant.rights:
            return _json(403, {"error": "a namespace-level token with Manage rights is required"})
        try:
            body = json.loads(payload or b"{}")
            if not isinstance(body, dict):
                raise ConfigError("the body must be a JSON object of queue properties")
            body.setdefault("name", name)
            if body["name"] != name:
                raise ConfigError(f"body names queue {body['name']!r} but the URL names {name!r}")
            cfg = parse_queue(body)
        except (json.JSONDecodeError, ConfigError) as exc:
            return _json(400, {"error": str(exc)})
        queue, created = self.broker.put_queue(cfg, runtime=True)
        self.authority.add_queue_policies(cfg.name, cfg.policies)
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.broker.after_commit(lambda: committed.done() or committed.set_result(None))
        await committed  # answer only once the queue is on disk
        return _json(201 if created else 200, self._describe(queue))


def _json(status: int, data: Any) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(data).encode()

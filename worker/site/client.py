"""A small client of the site's HTTP API for the CLI (``pool submit/status/logs/cancel/rerun``).

Standard library only (urllib, json): the CLI's start-up must not pay for the SDKs, SQLAlchemy or
httpx. The site is found from ``--site URL`` / ``$POOL_SITE_URL`` (+ ``$POOL_SITE_TOKEN``), else
from the local stack's profile (``DATA_DIR/profile.yaml``: ``site_url``, ``site_token``)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from worker.errors import PoolError
from worker.util.pids import pid_alive


class SiteClientError(PoolError, RuntimeError):
    def __init__(self, message: str, status: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


class SiteClient:
    def __init__(self, url: str, token: str | None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.local_agents: dict[str, list[tuple[str, str]]] = {}  # found through a local profile: its agents

    def _request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                 content_type: str = "application/json", stream: bool = False) -> Any:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=None if stream else self.timeout)
        except urllib.error.HTTPError as exc:
            raise _error(exc) from None
        except OSError as exc:
            raise SiteClientError(f"the site at {self.url} is unreachable ({exc}); is it running? "
                                  "(`pool local up`, or check --site / POOL_SITE_URL)") from None
        if stream:
            return response
        with response:
            payload = response.read()
            kind = response.headers.get("Content-Type", "")
        return json.loads(payload) if "json" in kind else payload

    def get(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode([(k, v) for k, values in params.items() if values is not None
                                        for v in (values if isinstance(values, list) else [values])])
        return self._request("GET", f"{path}?{query}" if query else path)

    def post(self, path: str, body: Any = None) -> Any:
        return self._request("POST", path, body if body is not None else {})

    def delete(self, path: str) -> Any:
        return self._request("DELETE", path)

    def upload_bundle(self, pool: str, data: bytes, kind: str = "archive") -> str:
        return self._request("POST", f"/api/v1/pools/{pool}/bundles?kind={kind}", raw=data,
                             content_type="application/octet-stream")["id"]

    def log_events(self, task_id: str, stream: str, attempt: int | None = None) -> Iterator[tuple[str, str]]:
        """(event, data) pairs of a live tail; 'end' last."""
        query = f"?follow=true&attempt={attempt}" if attempt else "?follow=true"
        response = self._request("GET", f"/api/v1/tasks/{task_id}/logs/{stream}{query}", stream=True)
        with response:
            event, data = "message", []
            for raw in response:
                line = raw.decode(errors="replace").rstrip("\n").rstrip("\r")
                if not line:
                    if data:
                        yield event, "\n".join(data)
                    event, data = "message", []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[6:] if line.startswith("data: ") else line[5:])


def _error(exc: urllib.error.HTTPError) -> SiteClientError:
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        body = {}
    detail = body.get("detail") if isinstance(body, dict) else None
    message = detail if isinstance(detail, str) else f"HTTP {exc.code} {exc.reason}"
    if exc.code == 401:
        message += " (set POOL_SITE_TOKEN, or use the local stack's profile)"
    return SiteClientError(message, exc.code, body.get("field") if isinstance(body, dict) else None)


def find_site(site: str | None, token: str | None, data_dir: str | Path) -> SiteClient:
    """``--site``/``$POOL_SITE_URL`` with ``$POOL_SITE_TOKEN``, else the local stack's profile."""
    url = site or os.environ.get("POOL_SITE_URL")
    token = token or os.environ.get("POOL_SITE_TOKEN")
    if url:
        return SiteClient(url, token)
    import yaml

    path = Path(data_dir) / "profile.yaml"
    if not path.exists():
        raise SiteClientError(f"no site: give --site URL (or POOL_SITE_URL), or start a local stack with "
                              f"`pool local up` (no profile in {Path(data_dir).resolve()})")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's: ~10x faster than the pure-Python one
    profile = yaml.load(path.read_text(), Loader=loader) or {}
    pid = profile.get("pid")
    if profile.get("state") == "stopped" or not profile.get("site_url") or not (isinstance(pid, int) and pid_alive(pid)):
        raise SiteClientError(f"the local stack in {Path(data_dir).resolve()} is not running: start it with "
                              "`pool local up` (or give --site URL)")
    client = SiteClient(profile["site_url"], token or profile.get("site_token"))
    client.local_agents = local_agents(profile)
    return client


def local_agents(profile: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """Per pool, the agents a local stack keeps (worker id, running | restarting | given_up; none of a
    retired pool), from its profile's process records (worker.local.profile.ProcessRecord, read as
    plain YAML: no import of the local stack here)."""
    wanted: dict[str, list[tuple[str, str]]] = {}
    for name, rec in (profile.get("processes") or {}).items():
        if isinstance(rec, dict) and rec.get("role") == "agent" and rec.get("pool") and rec.get("state") != "retired":
            wanted.setdefault(rec["pool"], []).append((name.removeprefix("agent:"), rec.get("state", "running")))
    return wanted


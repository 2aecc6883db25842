"""Talk to a running emulator's HTTP port from any process (the launcher object lives in
``pool local up``): create queues at runtime, read metrics. Signed with the namespace Manage key."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from worker.errors import PoolError


class EmulatorAdminError(PoolError, RuntimeError):
    pass


class EmulatorAdmin:
    def __init__(self, host: str, http_port: int, policy: str, key: str) -> None:
        self.base = f"http://{host}:{http_port}"
        self.host = host
        self.policy = policy
        self.key = key

    def _token(self) -> str:
        from worker.emulator.auth import make_token

        return make_token(f"sb://{self.host}/", self.policy, self.key, ttl_seconds=300)

    def put_queue(self, name: str, **props: Any) -> dict[str, Any]:
        body = json.dumps({"name": name, **props}).encode()
        request = urllib.request.Request(f"{self.base}/queues/{name}", data=body, method="PUT",
                                         headers={"Authorization": self._token(),
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise EmulatorAdminError(f"creating queue {name} failed: HTTP {exc.code}: {detail}") from None
        except OSError as exc:
            raise EmulatorAdminError(f"emulator at {self.base} unreachable: {exc}") from None

    def metrics(self) -> dict[str, dict[str, float]]:
        from worker.emulator.http import parse_metrics

        try:
            with urllib.request.urlopen(f"{self.base}/metrics", timeout=5) as response:
                return parse_metrics(response.read().decode())
        except OSError as exc:
            raise EmulatorAdminError(f"emulator at {self.base} unreachable: {exc}") from None

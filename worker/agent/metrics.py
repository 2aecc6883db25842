"""An agent's Prometheus metrics on an optional local port (``pool agent --metrics-port N``): tasks
run by final state, failures by kill reason, task duration, when the agent last reported."""

from __future__ import annotations

import time
from typing import Any

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


class AgentMetrics:
    def __init__(self, worker_id: str, pool: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.tasks = Counter("pool_agent_tasks", "Tasks this agent ran to a final state, by state", ["state"],
                             registry=r)
        self.failures = Counter("pool_agent_task_failures", "Tasks that did not finish, by kill reason "
                                "(exit_code: the program failed on its own; error: preparation or upload)",
                                ["kill_reason"], registry=r)
        self.handed_back = Counter("pool_agent_tasks_handed_back", "Deliveries handed back to the queue", registry=r)
        self.duration = Histogram("pool_agent_task_duration_seconds", "Receipt to final status", registry=r,
                                  buckets=DURATION_BUCKETS)
        self.last_report = Gauge("pool_agent_last_report_timestamp_seconds", "When a status, heartbeat or "
                                 "presence report was last sent (Unix time)", registry=r)
        self.info = Gauge("pool_agent_info", "This agent", ["worker_id", "pool"], registry=r)
        self.info.labels(worker_id, pool).set(1)
        self._server: Any = None

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        from prometheus_client import start_http_server

        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return self._server.server_port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def reported(self) -> None:
        self.last_report.set(time.time())

    def task_done(self, state: str | None, kill_reason: str | None, exit_code_failed: bool, seconds: float) -> None:
        if state is None:
            self.handed_back.inc()
            return
        self.tasks.labels(state).inc()
        self.duration.observe(seconds)
        if state != "finished":
            self.failures.labels(kill_reason or ("exit_code" if exit_code_failed else "error")).inc()

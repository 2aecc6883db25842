"""``/metrics`` of the site in Prometheus format (prometheus-client): tasks per state and pool, queue
depths, live workers, dead letters, and how long a worker's status took to reach the database
(status-apply latency: recorded_at − the status' own timestamp, read from the history rows the
watcher wrote since the last scrape — so every replica reports every status it or a peer applied)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from fastapi import APIRouter, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram, generate_latest
from sqlalchemy import func, select

from worker.site.auth import COOKIE, bearer
from worker.site.models import DeadLetter, TaskEvent

if TYPE_CHECKING:
    from worker.site.server import SiteService

router = APIRouter()
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class SiteMetrics:
    def __init__(self, service: SiteService) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        r = self.registry
        self.tasks = Gauge("pool_tasks", "Tasks by pool and state", ["pool", "state"], registry=r)
        self.queue = Gauge("pool_queue_messages", "Messages in the pool's task queue by kind "
                           "(active, scheduled, dead_lettered)", ["pool", "kind"], registry=r)
        self.workers = Gauge("pool_workers", "Workers by pool and liveness (live, idle, busy)", ["pool", "kind"],
                             registry=r)
        self.dead = Gauge("pool_dead_letters_recorded", "Dead letters recorded by the site, not purged",
                          ["pool"], registry=r)
        self.throughput = Gauge("pool_tasks_finished_5m", "Tasks that reached a final state in the last 5 minutes",
                                ["pool"], registry=r)
        self.apply_latency = Histogram("pool_status_apply_seconds", "Worker status timestamp to the database row",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self._lock = threading.Lock()
        with service.site.sessions() as session:  # from now on: history before this process is not re-counted
            self._last_event = session.scalar(select(func.max(TaskEvent.id))) or 0

    def refresh(self) -> None:
        from worker.site import operations as ops

        site = self.service.site
        with self._lock:
            for view in ops.pool_views(site, self.service.queue_depth):
                name = view["name"]
                for state, n in view["tasks"].items():
                    self.tasks.labels(name, state).set(n)
                for kind, n in view["queue"].items():
                    if n is not None:
                        self.queue.labels(name, kind).set(n)
                for kind, n in view["workers"].items():
                    self.workers.labels(name, kind).set(n)
                self.throughput.labels(name).set(view["throughput"]["finished"])
            with site.sessions() as session:
                for pool, n in session.execute(select(DeadLetter.pool, func.count()).group_by(DeadLetter.pool)):
                    self.dead.labels(pool).set(n)
                rows = session.execute(select(TaskEvent.id, TaskEvent.reported_at, TaskEvent.recorded_at)
                                       .where(TaskEvent.id > self._last_event, TaskEvent.source == "worker")
                                       .order_by(TaskEvent.id).limit(100_000)).all()
            for event_id, reported, recorded in rows:
                self._last_event = max(self._last_event, event_id)
                if reported and recorded:
                    self.apply_latency.observe(max(0.0, (recorded - reported).total_seconds()))


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    service: SiteService = request.app.state.service
    if not service.config.public_metrics:
        token = bearer(request.headers.get("authorization")) or request.cookies.get(COOKIE)
        if service.tokens.check(token) is None:
            raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
    site_metrics: SiteMetrics = request.app.state.metrics
    site_metrics.refresh()
    return Response(generate_latest(site_metrics.registry), media_type=CONTENT_TYPE_LATEST)

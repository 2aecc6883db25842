"""``pool site serve``: ONE process holding the producer, the watcher, the monitor and an HTTP server
(FastAPI on uvicorn) with the API (/api/v1, OpenAPI at /docs), the dashboard (/) and /metrics.

``pool local up`` runs this same service (on the local emulator and Azurite): one site code path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

from worker.site.auth import TokenTable
from worker.site.config import SiteConfig
from worker.site.models import Pool
from worker.site.service import Site, SiteSettings
from worker.storage import StoredBundle

log = logging.getLogger(__name__)


class SiteService:
    def __init__(self, config: SiteConfig) -> None:
        self.config = config
        self.tokens = TokenTable(config.tokens)
        self.stopping = threading.Event()
        self.replica_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.pool_creator: Callable[[str], object] | None = None  # the local stack creates pools at runtime
        self.monitor_leader = False
        self.site: Site | None = None  # type: ignore[assignment]
        self.app = None
        self._server = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._metrics_cache: tuple[float, dict[str, dict[str, float]]] | None = None
        self._metrics_lock = threading.Lock()

    # --- the site ---------------------------------------------------------------------------------
    def open_site(self) -> Site:
        from worker.site.db import transaction
        from worker.site.pools import register_pool
        from worker.storage import Storage

        c = self.config
        settings = SiteSettings(database_url=c.database_url,
                                storage_connection_string=c.storage.connection_string or "UseIdentity=true",
                                servicebus_connection_string=c.servicebus.access, sas_margin_s=c.sas_margin_s,
                                lost_after_s=c.lost_after_s, resend_after_s=c.resend_after_s,
                                monitor_interval_s=c.monitor_interval_s, database_wait_s=c.database_wait_s)
        if c.storage.account_url:  # identity: user-delegation SAS (written for Azure, untested here)
            site = Site(settings, storage=Storage.from_identity(c.storage.account_url, sas_margin_s=c.sas_margin_s))
        else:
            site = Site(settings)
        with transaction(site.sessions) as session:
            for name, access in c.pools.items():
                register_pool(session, name,
                              task_queue_connection_string=access.task_queue_connection_string or access.namespace,
                              response_queue_connection_string=access.response_queue_connection_string
                              or access.namespace)
        return site

    def queue_depth(self, pool: Pool) -> dict[str, int] | None:
        """Active / scheduled / dead-lettered messages of the pool's task queue, or None if unknown."""
        if self.config.queue_metrics_url:
            metrics = self._emulator_metrics().get(pool.task_queue.lower())
            if metrics is None:
                return None
            return {"active": int(metrics.get("active_messages", 0) + metrics.get("locked_messages", 0)),
                    "scheduled": int(metrics.get("scheduled_messages", 0)),
                    "dead_lettered": int(metrics.get("dead_lettered_messages", 0))}
        if self.config.queue_depth_from_management:  # needs Manage on the namespace: off by default
            return _management_depth(self.site, pool)
        return None

    def monitor_probe(self, pool: Pool) -> tuple[int, int] | None:
        depth = self.queue_depth(pool)
        return None if depth is None else (depth["active"], depth["dead_lettered"])

    def _emulator_metrics(self) -> dict[str, dict[str, float]]:
        with self._metrics_lock:  # one read per half second, however many pages and ticks ask
            if self._metrics_cache and time.monotonic() - self._metrics_cache[0] < 0.5:
                return self._metrics_cache[1]
            with urllib.request.urlopen(self.config.queue_metrics_url, timeout=5) as response:
                metrics = queue_metrics(response.read().decode())
            self._metrics_cache = (time.monotonic(), metrics)
            return metrics

    def stored_bundle(self, pool: str, bundle_id: str) -> StoredBundle | None:
        from azure.core.exceptions import ResourceNotFoundError

        from worker.config import competition_containers

        digest = bundle_id.removeprefix("sha256:")
        container = competition_containers(pool)["bundles"]
        for suffix in (".tar.gz", ".zip", ".file"):  # the kinds POST /pools/{pool}/bundles stores
            blob_name = f"sha256/{digest}{suffix}"
            try:
                props = self.site.storage.service.get_blob_client(container, blob_name).get_blob_properties()
            except ResourceNotFoundError:
                continue
            return StoredBundle(container, blob_name, digest, props.size)
        return None

    def _monitor_gate(self) -> bool:
        from worker.site.leases import hold

        held = hold(self.site.sessions, "monitor", self.replica_id, self.config.monitor_lease_s)
        if held != self.monitor_leader:
            log.info("replica %s %s the monitor lease", self.replica_id, "took" if held else "lost")
            self.monitor_leader = held
        return held

    # --- run --------------------------------------------------------------------------------------
    def start(self, *, serve_in_thread: bool = True) -> SiteService:
        """Open the site (migrations, pools), start the watcher and monitor, bind the HTTP port; with
        ``serve_in_thread`` serve in a thread (``pool local up``), else call :meth:`serve_forever`."""
        from worker.site.app import create_app

        self.site = self.open_site()
        try:
            probe = self.monitor_probe if self.config.queue_metrics_url or self.config.queue_depth_from_management \
                else None
            self.site.start_background(depth_probe=probe, monitor_gate=self._monitor_gate)
            self.app = create_app(self)
            self._socket = socket.socket(socket.AF_INET6 if ":" in self.config.bind.host else socket.AF_INET)
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((self.config.bind.host, self.config.bind.port))
            self._socket.listen(128)
            self._server = self._make_server()
            if serve_in_thread:
                self._thread = threading.Thread(target=self._serve, name="site-http", daemon=True)
                self._thread.start()
                self._wait_started()
        except BaseException:
            self.stop()
            raise
        return self

    def _make_server(self) -> Any:
        import uvicorn

        stopping = self.stopping

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                stopping.set()  # live log tails end now instead of holding the shutdown
                super().handle_exit(sig, frame)

            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                # uvicorn re-raises a captured SIGTERM after its shutdown, which would kill the process
                # before the watcher and monitor are stopped; a drained stop exits 0 instead.
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
                try:
                    yield
                finally:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)

        config = uvicorn.Config(self.app, log_config=None, access_log=False, timeout_graceful_shutdown=5,
                                lifespan="off", proxy_headers=False, server_header=False)
        return Server(config)

    def _serve(self) -> None:
        self._server.run(sockets=[self._socket])  # type: ignore[union-attr]

    def _wait_started(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self._server.started:  # type: ignore[union-attr]
            if self._thread is not None and not self._thread.is_alive():
                raise RuntimeError("the site's HTTP server exited during start")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the site's HTTP server did not start within {timeout:.0f} s")
            time.sleep(0.02)

    def serve_forever(self) -> None:
        """In the main thread: uvicorn handles SIGTERM/SIGINT (stops accepting, finishes requests,
        closes live tails within 5 s); then the watcher and monitor stop (a batch in hand is
        committed and completed first)."""
        try:
            self._serve()
        finally:
            self.stop()

    @property
    def port(self) -> int:
        return self._socket.getsockname()[1] if self._socket else self.config.bind.port

    @property
    def url(self) -> str:
        host = self.config.bind.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(15)
            self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self.site is not None:
            if self.site.monitor is not None:
                self.site.monitor.stop()
            if self.monitor_leader:  # a peer takes over at once, not after the lease expires
                from worker.site.leases import release

                try:
                    release(self.site.sessions, "monitor", self.replica_id)
                except Exception as exc:  # noqa: BLE001 - it expires on its own
                    log.warning("could not release the monitor lease: %s", exc)
            from worker.site.azure_pools import fail_running

            try:  # its deployment threads die with it: their records end now, not after a timeout
                fail_running(self.site, self.replica_id, "the site service stopped during the deployment; its "
                             "pulumi up was not waited for: look at the stack (pulumi stack) before creating "
                             "the pool again")
            except Exception as exc:  # noqa: BLE001 - readers expire them once their heartbeat is stale
                log.warning("could not record the end of running pool operations: %s", exc)
            self.site.close()
            self.site = None  # type: ignore[assignment]

    def __enter__(self) -> SiteService:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


QUEUE_METRIC_PREFIX = "servicebus_emulator_queue_"


def queue_metrics(text: str) -> dict[str, dict[str, float]]:
    """``{queue: {metric: value}}`` from Prometheus text with a ``queue`` label (the local endpoint's
    /metrics), read with prometheus-client's parser (the site does not import the emulator)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(QUEUE_METRIC_PREFIX) and "queue" in sample.labels:
                name = sample.name[len(QUEUE_METRIC_PREFIX):]
                out.setdefault(sample.labels["queue"], {})[name] = sample.value
    return out


def _management_depth(site: Site, pool: Pool) -> dict[str, int] | None:
    """Azure: runtime properties through ServiceBusAdministrationClient (Manage right). Written for
    Azure; not testable here (the emulator has no management API)."""
    from azure.servicebus.management import ServiceBusAdministrationClient

    access = pool.task_queue_connection_string or site.queues.namespace_connection_string
    if not access:
        return None
    if "Endpoint=" in access:
        client = ServiceBusAdministrationClient.from_connection_string(access)
    else:
        from azure.identity import DefaultAzureCredential

        client = ServiceBusAdministrationClient(access, credential=DefaultAzureCredential())
    with client:
        props = client.get_queue_runtime_properties(pool.task_queue)
    return {"active": props.active_message_count, "scheduled": props.scheduled_message_count,
            "dead_lettered": props.dead_letter_message_count}

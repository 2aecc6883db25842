"""The local stack in one object: the emulator, Azurite, the site (watcher + monitor, in this process)
and N agents per pool as subprocesses (``python -m worker agent --config FILE``).

Layout of the data dir (default ``./.pool``)::

    profile.yaml       how other commands find the stack (ports, connection strings, database)
    emulator.yaml      the emulator's namespace policy (its key is generated once)
    emulator/          the emulator's durable store (runtime-created queues survive restarts)
    azurite/           blobs
    site.db            the site database (SQLite)
    keys/<pool>.yaml   each pool's generated queue keys
    agents/<id>/       each agent's config.yaml, work dir and input cache
    logs/              one log file per component
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker.config import (
    AgentConfig,
    CacheSettings,
    ExecutionSettings,
    ServiceBusSettings,
    dump_agent_config,
)
from worker.errors import PoolError
from worker.local.azurite import AzuriteProcess
from worker.local.competition import ROOT_POLICY, create_local_competition, emulator_connection_string
from worker.local.emulator_admin import EmulatorAdmin
from worker.local.processes import port_open
from worker.local.profile import (
    PROFILE_NAME,
    EmulatorInfo,
    LocalProfile,
    PoolInfo,
    load_profile,
    profile_lock,
    update_profile,
)
from worker.local.survivors import find_survivors, record, stop_survivors, wait_ports_free
from worker.util.process_group import stop_process_group

DEFAULT_COMPETITION = "default"
# An agent that exits before it ever reached "ready" (receiver attached) is restarted after a growing
# pause; after this many such exits in a row it is given up (a broken config, a driver that cannot
# run). An agent that had reached ready is always restarted: a crash mid-task must not shrink the pool.
MAX_FAILED_STARTS = 5
RESTART_BACKOFF_S = (1.0, 30.0)  # first pause, longest pause (doubling in between)
READY_LINE = b"ready, waiting for tasks"  # the agent's log line once its receiver is attached


class StackError(PoolError, RuntimeError):
    pass


@dataclass
class AgentProcess:
    worker_id: str
    pool: str
    config_path: Path
    log_path: Path
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    log_offset: int = 0  # where this start's lines begin in the log
    failed_starts: int = 0  # consecutive exits that never reached ready
    restart_at: float | None = None  # when a dead agent is due to be started again
    given_up: bool = False

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def reached_ready(self) -> bool:
        """Whether this start got as far as a receiver on its queue (its log says so)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self.log_offset)
                return READY_LINE in log.read()
        except OSError:
            return False


class LocalStack:
    def __init__(
        self,
        data_dir: str | Path = ".pool",
        *,
        workers: int = 2,
        driver: str = "process",
        competitions: tuple[str, ...] = (DEFAULT_COMPETITION,),
        heartbeat_interval_s: float = 2.0,
        lost_after_s: float = 30.0,
        agent_pools: tuple[str, ...] | None = None,
        database_url: str | None = None,
        on_output: Callable[[str], None] = print,
    ) -> None:
        if workers < 0:
            raise StackError("--workers must be 0 or more")
        self.data_dir = Path(data_dir).resolve()
        self.workers = workers
        self.driver = driver
        self.competitions = competitions
        self.heartbeat_interval_s = heartbeat_interval_s
        self.lost_after_s = lost_after_s
        self.agent_pools = agent_pools  # None: every pool gets agents
        self.database_url = database_url  # None: SQLite in the data dir
        self.say = on_output
        self.emulator = None  # worker.emulator.launcher.EmulatorProcess
        self.azurite: AzuriteProcess | None = None
        self.site = None  # worker.site.service.Site, run by self.service
        self.service = None  # worker.site.server.SiteService: the same service as `pool site serve`
        self.admin: EmulatorAdmin | None = None
        self.agents: dict[str, list[AgentProcess]] = {}
        self._retiring: list[AgentProcess] = []  # agents of retired pools, stopping
        self.profile: LocalProfile | None = None
        self._stopping = threading.Event()

    # --- start ------------------------------------------------------------------------------------
    def start(self, timeout: float = 90.0) -> LocalStack:
        from worker.emulator.launcher import EmulatorProcess
        from worker.site.server import SiteService

        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "logs").mkdir(exist_ok=True)
        self._refuse_if_running()
        self._check_driver()
        previous = self._previous_profile()
        self._stop_survivors(previous)
        try:
            key = self._emulator_config()
            self.emulator = EmulatorProcess(self.data_dir / "emulator.yaml", self.data_dir / "emulator",
                                            port=_reuse(previous and previous.emulator.port),
                                            http_port=_reuse(previous and previous.emulator.http_port))
            self.emulator.start()
            self.azurite = AzuriteProcess(self.data_dir / "azurite", log_file=self.data_dir / "logs" / "azurite.log",
                                          port=_reuse(previous and _azurite_port(previous)))
            self.azurite.start()
            host = "127.0.0.1"
            self.admin = EmulatorAdmin(host, self.emulator.http_port, ROOT_POLICY, key)
            self.profile = LocalProfile(
                pid=os.getpid(), state="starting", data_dir=str(self.data_dir),
                emulator=EmulatorInfo(host=host, port=self.emulator.port, http_port=self.emulator.http_port,
                                      config_path=str(self.data_dir / "emulator.yaml"),
                                      root_connection_string=emulator_connection_string(
                                          host, self.emulator.port, ROOT_POLICY, key)),
                storage_connection_string=self.azurite.connection_string,
                database_url=self.database_url or f"sqlite:///{self.data_dir / 'site.db'}",
                lost_after_s=self.lost_after_s, workers_per_pool=self.workers, driver=self.driver,
                processes={"emulator": record(self.emulator.proc.pid, "emulator",
                                              (self.emulator.port, self.emulator.http_port)),
                           "azurite": record(self.azurite.process.pid, "azurite", (self.azurite.port,))},
            )
            token = (previous and previous.site_token) or secrets.token_urlsafe(32)
            self.service = SiteService(local_site_config(self.profile, token, _reuse(
                previous and previous.site_url and int(previous.site_url.rsplit(":", 1)[1])))).start()
            self.site = self.service.site
            self.service.pool_creator = lambda name: create_local_competition(self.data_dir, name)
            self.profile.site_url, self.profile.site_token = self.service.url, token
            with profile_lock(self.data_dir):
                self.profile.save()
            # Every pool known from an earlier run (unless retired since), plus the ones asked for (idempotent).
            for name in sorted(set(self.competitions) | (self._known_pools() - self._retired_pools())):
                self.create_competition(name)
            self.sync_agents()
            self.wait_ready(timeout)
            self._set_state("ready")
        except BaseException:
            self.stop()
            raise
        return self

    def _refuse_if_running(self) -> None:
        path = self.data_dir / PROFILE_NAME
        if path.exists():
            try:
                profile = load_profile(self.data_dir, require_running=False)
            except Exception:  # noqa: BLE001 - an unreadable old profile is replaced
                return
            if profile.alive and profile.state != "stopped" and profile.pid != os.getpid():
                raise StackError(f"a local stack is already running from {self.data_dir} (pid {profile.pid}); "
                                 "stop it first (Ctrl-C there, or `pool local down`)")

    def _stop_survivors(self, previous: LocalProfile | None) -> None:
        """A crashed earlier stack on this data dir may have left its children running: stop them
        before anything new starts (a second broker on the store, agents with the same ids)."""
        survivors = find_survivors(self.data_dir, previous)
        if not survivors:
            return
        self.say(f"found {len(survivors)} process(es) left by an earlier stack in {self.data_dir} "
                 f"(was it killed?): " + ", ".join(s.describe() for s in survivors))
        stop_survivors(survivors, self.say)
        if previous is not None:
            wait_ports_free(port for rec in previous.processes.values() for port in rec.ports)

    def _check_driver(self) -> None:
        from worker.execution import get_driver
        from worker.local.sandboxing import choose_driver

        self.driver = choose_driver(self.driver, self.data_dir, self.say)  # "auto": bwrap where it works

        try:
            get_driver(self.driver).check_available()
        except Exception as exc:  # noqa: BLE001 - report the registry's own words
            raise StackError(f"execution driver {self.driver!r} cannot run here: {exc}") from None

    def _previous_profile(self) -> LocalProfile | None:
        try:
            return load_profile(self.data_dir, require_running=False)
        except Exception:  # noqa: BLE001
            return None

    def _emulator_config(self) -> str:
        """Write emulator.yaml once (namespace Manage policy); returns its key."""
        from worker.emulator.auth import generate_key
        from worker.emulator.config import EmulatorConfig, PolicyConfig, Right

        path = self.data_dir / "emulator.yaml"
        if path.exists():
            config = EmulatorConfig.load(path)
            for policy in config.policies:
                if policy.name == ROOT_POLICY:
                    return policy.key
        key = generate_key()
        config = EmulatorConfig(policies=[PolicyConfig(name=ROOT_POLICY, key=key,
                                                       rights=[Right.MANAGE, Right.SEND, Right.LISTEN])])
        config.save(path)
        os.chmod(path, 0o600)
        return key

    def _retired_pools(self) -> set[str]:
        """Pools retired on the site (``pool competition retire``): they keep no agents."""
        from sqlalchemy import select

        from worker.site.models import Pool

        if self.site is None:
            return set()
        with self.site.read_sessions() as session:
            return set(session.scalars(select(Pool.name).where(Pool.active.is_(False))))

    def _known_pools(self) -> set[str]:
        keys = self.data_dir / "keys"
        return {p.stem for p in keys.glob("*.yaml")} if keys.exists() else set()

    def create_competition(self, name: str) -> PoolInfo:
        info = create_local_competition(self.data_dir, name)
        self.profile = load_profile(self.data_dir, require_running=False)
        return info

    def _set_state(self, state: str) -> None:
        with profile_lock(self.data_dir):
            profile = load_profile(self.data_dir, require_running=False)
            profile.state = state
            profile.save()
            self.profile = profile

    # --- agents -----------------------------------------------------------------------------------
    def agent_config(self, pool: str, index: int, info: PoolInfo) -> AgentProcess:
        worker_id = f"{pool}-w{index + 1}"
        home = self.data_dir / "agents" / worker_id
        home.mkdir(parents=True, exist_ok=True)
        config = AgentConfig(
            worker_id=worker_id, pool=pool,
            servicebus=ServiceBusSettings(task_queue=info.task_queue, response_queue=info.response_queue,
                                          task_queue_connection_string=info.worker_listen_connection_string,
                                          response_queue_connection_string=info.worker_send_connection_string),
            work_dir=home / "work", cache=CacheSettings(dir=home / "cache", max_bytes=1024**3),
            execution=ExecutionSettings(driver=self.driver),  # type: ignore[arg-type]
            heartbeat_interval_s=self.heartbeat_interval_s, cancel_poll_interval_s=0.5, receive_wait_s=1.0,
        )
        path = home / "config.yaml"
        path.write_text(dump_agent_config(config))
        os.chmod(path, 0o600)
        return AgentProcess(worker_id, pool, path, self.data_dir / "logs" / f"agent-{worker_id}.log")

    def start_agent(self, agent: AgentProcess) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": _python_path()}
        agent.started_at = time.monotonic()
        agent.restart_at = None
        with open(agent.log_path, "ab") as log:
            agent.log_offset = log.tell()
            agent.process = subprocess.Popen(
                [sys.executable, "-m", "worker", "agent", "--config", str(agent.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                cwd=agent.config_path.parent,  # not the caller's cwd: a ./worker there would shadow the package
            )
        self._record_agent(agent, "running")

    def _record_agent(self, agent: AgentProcess, state: str) -> None:
        def change(profile: LocalProfile) -> None:
            rec = record(agent.process.pid, "agent") if agent.process else None  # type: ignore[union-attr]
            if rec is not None:
                rec.state, rec.pool = state, agent.pool
                profile.processes[f"agent:{agent.worker_id}"] = rec

        if (self.data_dir / PROFILE_NAME).exists():
            self.profile = update_profile(self.data_dir, change)

    def sync_agents(self) -> None:
        """N agents for every pool (new pools created by `pool competition create` included), none for
        a retired one: its agents are stopped (SIGTERM: each hands back or finishes its task and leaves)."""
        profile = load_profile(self.data_dir, require_running=False)
        self.profile = profile
        retired = self._retired_pools()
        for name in sorted(retired & set(self.agents)):
            self._stop_agents_of(name)
        for name, info in profile.pools.items():
            if (self.agent_pools is not None and name not in self.agent_pools) or name in retired:
                continue
            agents = self.agents.setdefault(name, [])
            while len(agents) < self.workers:
                agent = self.agent_config(name, len(agents), info)
                self.start_agent(agent)
                agents.append(agent)
                self.say(f"agent {agent.worker_id} started (pid {agent.process.pid})")  # type: ignore[union-attr]

    def _stop_agents_of(self, pool: str) -> None:
        agents = self.agents.pop(pool)
        for agent in agents:
            _terminate(agent)
            self._record_agent(agent, "retired")
        self._retiring += agents  # reaped as they exit; stop() waits for the rest
        self.say(f"pool {pool} retired: its {len(agents)} agent(s) are stopping")

    def restart_dead_agents(self) -> list[str]:
        """Restart agents that died: at once if they had been ready, else after a doubling pause;
        give one up only after MAX_FAILED_STARTS exits in a row that never reached ready."""
        restarted = []
        now = time.monotonic()
        for agents in self.agents.values():
            for agent in agents:
                if agent.alive or agent.given_up or self._stopping.is_set():
                    continue
                if agent.restart_at is None:  # just noticed that it died
                    code = agent.process.returncode if agent.process else None
                    if agent.reached_ready():
                        agent.failed_starts = 0
                        agent.restart_at = now
                        self.say(f"agent {agent.worker_id} exited (code {code}); restarting it")
                    else:
                        agent.failed_starts += 1
                        if agent.failed_starts >= MAX_FAILED_STARTS:
                            agent.given_up = True
                            self._record_agent(agent, "given_up")
                            self.say(f"agent {agent.worker_id} exited {agent.failed_starts} times in a row before "
                                     f"it was ready (code {code}); not restarting it: see {agent.log_path}")
                            continue
                        first, longest = RESTART_BACKOFF_S
                        pause = min(longest, first * 2 ** (agent.failed_starts - 1))
                        agent.restart_at = now + pause
                        self._record_agent(agent, "restarting")
                        self.say(f"agent {agent.worker_id} exited before it was ready (code {code}); "
                                 f"restarting it in {pause:.0f} s")
                if now >= agent.restart_at:
                    self.start_agent(agent)
                    restarted.append(agent.worker_id)
        return restarted

    def wait_ready(self, timeout: float) -> None:
        """Every component accepts work: the emulator and Azurite listen, the site's watcher runs, and
        every agent has a receiver attached to its task queue."""
        deadline = time.monotonic() + timeout
        while True:
            missing = self._not_ready()
            if not missing:
                return
            dead = [a.worker_id for agents in self.agents.values() for a in agents
                    if not a.alive and not a.given_up and a.restart_at is None]
            if dead:
                raise StackError(f"agent(s) {', '.join(dead)} exited during start; see {self.data_dir / 'logs'}")
            if time.monotonic() > deadline:
                raise StackError(f"not ready after {timeout:.0f} s: waiting for {', '.join(missing)}")
            time.sleep(0.2)

    def _not_ready(self) -> list[str]:
        missing = []
        if self.azurite is None or not port_open("127.0.0.1", self.azurite.port):
            missing.append("azurite")
        try:
            metrics = self.admin.metrics() if self.admin else {}
        except Exception:  # noqa: BLE001
            return [*missing, "emulator"]
        for pool, agents in self.agents.items():
            queue = (self.profile.pools[pool].task_queue if self.profile else pool).lower()
            consumers = int(metrics.get(queue, {}).get("consumers", 0))
            running = sum(1 for a in agents if a.alive)  # not the ones waiting for a restart or given up
            if consumers < running:
                missing.append(f"{pool} agents ({consumers}/{running} listening)")
        return missing

    # --- run and stop -----------------------------------------------------------------------------
    def supervise(self, stop: threading.Event, interval_s: float = 1.0) -> None:
        """Until ``stop`` is set: start agents for new pools, restart agents that died."""
        while not stop.wait(interval_s):
            try:
                before = {n: len(a) for n, a in self.agents.items()}
                self.sync_agents()
                self.restart_dead_agents()
                self._retiring = [a for a in self._retiring if a.alive]  # reaped
                if {n: len(a) for n, a in self.agents.items()} != before:
                    self.wait_ready(60)
                    self.say("ready (new pool)")
            except Exception as exc:  # noqa: BLE001 - keep the stack up; say what went wrong
                self.say(f"warning: {exc}")

    def stop(self) -> None:
        self._stopping.set()
        agents = [*(a for group in self.agents.values() for a in group), *self._retiring]
        for agent in agents:  # SIGTERM all first: they finish or hand back their task in parallel
            _terminate(agent)
        for agent in agents:
            if agent.process is not None:
                stop_process_group(agent.process, timeout=20)
        if self.service is not None:
            self.service.stop()
            self.service = None
            self.site = None
        if self.azurite is not None:
            self.azurite.stop()
            self.azurite = None
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None
        if (self.data_dir / PROFILE_NAME).exists():
            try:
                self._set_state("stopped")
            except Exception:  # noqa: BLE001, S110 - nothing more to stop
                pass

    def __enter__(self) -> LocalStack:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _terminate(agent: AgentProcess) -> None:
    """SIGTERM a live agent's process group: it finishes or hands back its task, then leaves."""
    if agent.alive:
        try:
            os.killpg(agent.process.pid, 15)  # type: ignore[union-attr]
        except ProcessLookupError:
            pass


def local_site_config(profile: LocalProfile, token: str, port: int = 0):  # type: ignore[no-untyped-def]
    """The site service of a local stack: the same `pool site serve` service, on the emulator (queue
    depths from its /metrics) and Azurite, its pools registered by `pool competition create`."""
    from worker.site.config import SiteConfig

    emu = profile.emulator
    return SiteConfig.model_validate({
        "database_url": profile.database_url, "storage": {"connection_string": profile.storage_connection_string},
        "tokens": [{"name": "local-admin", "token": token, "scope": "admin"}],
        "bind": {"host": "127.0.0.1", "port": port}, "queue_metrics_url": f"http://{emu.host}:{emu.http_port}/metrics",
        "lost_after_s": profile.lost_after_s})


def _python_path() -> str:
    """Children import the same ``worker`` package as this process, whatever their cwd."""
    root = str(Path(__file__).resolve().parents[2])
    rest = os.environ.get("PYTHONPATH")
    return f"{root}{os.pathsep}{rest}" if rest else root


def _reuse(port: int | None) -> int:
    """The port of the previous run when it is still free (URLs in queued tasks keep working)."""
    if port and not port_open("127.0.0.1", port):
        return port
    return 0


def _azurite_port(profile: LocalProfile) -> int | None:
    marker = "BlobEndpoint=http://127.0.0.1:"
    cs = profile.storage_connection_string
    if marker in cs:
        return int(cs.split(marker, 1)[1].split("/", 1)[0])
    return None

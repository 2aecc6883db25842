"""Create a competition on the local stack, at runtime: its queue pair (through the emulator's HTTP
port, each queue with its own worker and site policies), its blob containers in Azurite, its pool row
in the site database, and the worker credentials in the profile (``pool local up`` then starts agents
for it)."""

from __future__ import annotations

from pathlib import Path

from worker.config import check_competition_name, competition_queues
from worker.local.emulator_admin import EmulatorAdmin
from worker.local.profile import LocalProfile, PoolInfo, load_profile, update_profile

ROOT_POLICY = "RootManageSharedAccessKey"
# Local queues: a short lock so a killed worker's task is redelivered quickly (agents renew it).
TASK_QUEUE_PROPS = {"lock_duration": "PT10S", "max_delivery_count": 5, "requires_duplicate_detection": True,
                    "duplicate_detection_history_time_window": "PT1H"}
RESPONSE_QUEUE_PROPS = {"lock_duration": "PT30S", "max_delivery_count": 10, "requires_duplicate_detection": True,
                        "duplicate_detection_history_time_window": "PT10M"}


def emulator_connection_string(host: str, port: int, policy: str, key: str, entity: str | None = None) -> str:
    from worker.emulator.app import connection_string

    return connection_string(host, port, policy, key, entity)


def root_key(profile: LocalProfile) -> str:
    for part in profile.emulator.root_connection_string.split(";"):
        if part.startswith("SharedAccessKey="):
            return part.split("=", 1)[1]
    raise ValueError("the profile's root connection string has no SharedAccessKey")


def create_local_competition(data_dir: str | Path, name: str) -> PoolInfo:
    """Idempotent: re-running keeps the keys it created the first time."""
    from worker.emulator.auth import generate_key
    from worker.site.db import transaction
    from worker.site.pools import register_pool
    from worker.site.service import Site

    check_competition_name(name)
    profile = load_profile(data_dir)
    emu = profile.emulator
    admin = EmulatorAdmin(emu.host, emu.http_port, ROOT_POLICY, root_key(profile))
    task_queue, response_queue = competition_queues(name)
    existing = _existing_keys(data_dir, name)
    keys = existing or {k: generate_key() for k in ("worker_listen", "site_tasks", "worker_send", "site_responses")}
    admin.put_queue(task_queue, **TASK_QUEUE_PROPS, policies=[
        {"name": "worker-listen", "key": keys["worker_listen"], "rights": ["Listen"]},
        {"name": "site", "key": keys["site_tasks"], "rights": ["Send", "Listen"]},  # Listen: dead letters
    ])
    admin.put_queue(response_queue, **RESPONSE_QUEUE_PROPS, policies=[
        {"name": "worker-send", "key": keys["worker_send"], "rights": ["Send"]},
        {"name": "site", "key": keys["site_responses"], "rights": ["Listen"]},
    ])

    def cs(policy: str, key: str, entity: str) -> str:
        return emulator_connection_string(emu.host, emu.port, policy, key, entity)

    with Site(profile.site_settings()) as site:
        site.storage.ensure_competition(name)
        with transaction(site.sessions) as session:
            register_pool(session, name,
                          task_queue_connection_string=cs("site", keys["site_tasks"], task_queue),
                          response_queue_connection_string=cs("site", keys["site_responses"], response_queue))
    info = PoolInfo(task_queue=task_queue, response_queue=response_queue,
                    worker_listen_connection_string=cs("worker-listen", keys["worker_listen"], task_queue),
                    worker_send_connection_string=cs("worker-send", keys["worker_send"], response_queue))
    _save_keys(data_dir, name, keys)
    update_profile(data_dir, lambda p: p.pools.__setitem__(name, info))
    return info


def _keys_path(data_dir: str | Path, name: str) -> Path:
    return Path(data_dir) / "keys" / f"{name}.yaml"


def _existing_keys(data_dir: str | Path, name: str) -> dict[str, str] | None:
    import yaml

    path = _keys_path(data_dir, name)
    return yaml.safe_load(path.read_text()) if path.exists() else None


def _save_keys(data_dir: str | Path, name: str, keys: dict[str, str]) -> None:
    import os

    import yaml

    path = _keys_path(data_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(yaml.safe_dump(keys))
    os.chmod(path, 0o600)

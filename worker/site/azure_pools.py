"""Azure pools created through the API (``POST /api/v1/pools`` with ``azure``), in the background.

``pulumi up`` takes minutes, so the request only validates the stack config and records a
:class:`~worker.site.models.PoolOperation` (``provisioning``); a thread of the replica that took the
request runs the Automation API path of ``pool competition create --azure``
(:func:`worker.site.provisioning.create_competition_stack`), then registers the pool from the stack
outputs exactly as ``pool competition import`` does (:func:`worker.site.registration.pool_from_outputs`
-> :func:`worker.site.operations.register_access`). The record ends ``ready`` (pool registered) or
``failed`` with the reason (a missing Pulumi CLI, a failed deployment, unusable outputs).

While it runs, the thread renews ``heartbeat_at`` and stores the last lines of the engine's output. A
record whose heartbeat stopped (the replica crashed or was stopped mid-deployment) is shown, and
stored, as ``failed`` by whoever reads it next — never a record stuck in ``provisioning``.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import deque
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from worker.errors import PoolError
from worker.site.db import transaction
from worker.site.models import PoolOperation, utcnow
from worker.site.service import Site

log = logging.getLogger(__name__)

PROVISIONING, READY, FAILED = "provisioning", "ready", "failed"
HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0  # no heartbeat for this long: the replica running it is gone
OUTPUT_LINES = 40


class Busy(RuntimeError):
    """Another create of this pool is still provisioning (HTTP 409)."""


def validate(name: str, config: Mapping[str, Any]) -> None:
    """The stack config as ``pool competition create --azure`` checks it, before anything is recorded
    (worker.config.ConfigError; its ``fields`` names the keys at fault)."""
    from worker.site.provisioning import stack_config_values

    stack_config_values(name, config=config)


def start_create(site: Site, replica: str, name: str, config: Mapping[str, Any], *, stack: str | None = None,
                 requested_by: str | None = None) -> dict[str, Any]:
    """Validate, record the operation (``provisioning``) and start its thread; returns its view."""
    validate(name, config)
    operation_id = secrets.token_hex(8)
    try:
        with transaction(site.sessions) as session:
            running = session.scalars(select(PoolOperation).where(
                PoolOperation.pool == name, PoolOperation.state == PROVISIONING)).all()
            for other in running:
                if not _expire_if_stale(other, utcnow()):
                    raise Busy(f"pool {name!r} is already being provisioned (operation {other.id}, since "
                               f"{other.started_at.isoformat()})")
            session.flush()  # a stale record leaves ``provisioning`` before the new one enters it
            session.add(PoolOperation(id=operation_id, pool=name, kind="azure_create", state=PROVISIONING,
                                      stack=stack or name, replica=replica, requested_by=requested_by))
    except IntegrityError:  # another replica's create of this pool committed first (the unique index)
        raise Busy(f"pool {name!r} is already being provisioned (a create started at the same time on "
                   f"another site replica)") from None
    thread = threading.Thread(target=run_create, args=(site, operation_id, name, dict(config), stack),
                              name=f"azure-create-{name}", daemon=True)
    thread.start()
    return get(site, operation_id)


def run_create(site: Site, operation_id: str, name: str, config: dict[str, Any], stack: str | None) -> None:
    """The background job: deploy, register, and record ``ready`` or ``failed`` (never raises)."""
    lines: deque[str] = deque(maxlen=OUTPUT_LINES)
    done = threading.Event()

    def on_output(line: str) -> None:
        lines.append(line.rstrip()[:500])

    def heartbeat() -> None:
        while not done.wait(HEARTBEAT_S):
            try:
                _update(site, operation_id, heartbeat_at=utcnow(), output_tail="\n".join(lines))
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                log.warning("operation %s: heartbeat: %s", operation_id, exc)

    beat = threading.Thread(target=heartbeat, name=f"azure-create-{name}-heartbeat", daemon=True)
    beat.start()
    state, detail, public = FAILED, None, None
    try:
        outputs = _deploy(name, config, stack, on_output)
        from worker.site import operations
        from worker.site.provisioning import SECRET_OUTPUTS
        from worker.site.registration import pool_from_outputs

        public = {k: v for k, v in outputs.items() if k not in SECRET_OUTPUTS}
        body = pool_from_outputs(outputs)
        if body["name"] != name:
            raise PoolError(f"the stack's outputs are for competition {body['name']!r}, not {name!r}")
        on_output(f"registering pool {name} from the stack outputs")
        operations.register_access(site, name, **{k: v for k, v in body.items() if k != "name"})
        state = READY
    except (PoolError, ValueError) as exc:  # ProvisioningError (CLI missing, up failed), ConfigError, Invalid
        detail = str(exc)
    except Exception as exc:  # recorded: the record must not stay in provisioning
        log.exception("operation %s (create Azure pool %s) failed", operation_id, name)
        detail = f"{type(exc).__name__}: {exc}"
    finally:
        done.set()
    if detail:
        log.warning("operation %s: creating Azure pool %s failed: %s", operation_id, name, detail.splitlines()[0])
    try:
        _update(site, operation_id, state=state, detail=detail, outputs=public, finished_at=utcnow(),
                heartbeat_at=utcnow(), output_tail="\n".join(lines))
    except Exception:  # the heartbeat stopped: readers will show it failed
        log.exception("operation %s: could not record its end (%s)", operation_id, state)


def _deploy(name: str, config: dict[str, Any], stack: str | None, on_output: Any) -> dict[str, Any]:
    from worker.site import provisioning

    try:
        return provisioning.create_competition_stack(name, config=config, stack=stack, on_output=on_output)
    except ImportError as exc:  # the Automation API is Pulumi's Python SDK (the infra extra)
        raise PoolError(f"creating Azure pools needs the infra extra (pip install 'compute-pools[infra]'): "
                        f"{exc}") from None


def _update(site: Site, operation_id: str, **values: Any) -> None:
    with transaction(site.sessions) as session:
        row = session.get(PoolOperation, operation_id, with_for_update=True)
        if row is not None and row.state == PROVISIONING:  # a final state is never overwritten
            for key, value in values.items():
                setattr(row, key, value)


def _expire_if_stale(row: PoolOperation, now: datetime) -> bool:
    if row.state == PROVISIONING and now - row.heartbeat_at > timedelta(seconds=STALE_AFTER_S):
        row.state = FAILED
        row.finished_at = now
        row.detail = (f"the site replica {row.replica} running it stopped renewing it at "
                      f"{row.heartbeat_at.isoformat()} (stopped or crashed during the deployment); the stack "
                      f"may be partly deployed: create the pool again (pulumi up continues from the stack's "
                      f"state) or look at it with `pulumi stack --stack {row.stack}`")
        return True
    return False


def fail_running(site: Site, replica: str, reason: str) -> int:
    """On a replica's stop: its deployments in flight end ``failed`` now (their threads die with it)."""
    with transaction(site.sessions) as session:
        rows = session.scalars(select(PoolOperation).where(
            PoolOperation.replica == replica, PoolOperation.state == PROVISIONING).with_for_update()).all()
        for row in rows:
            row.state, row.detail, row.finished_at = FAILED, reason, utcnow()
        return len(rows)


def view(row: PoolOperation) -> dict[str, Any]:
    return {"id": row.id, "pool": row.pool, "kind": row.kind, "state": row.state, "stack": row.stack,
            "detail": row.detail, "output_tail": row.output_tail.splitlines() if row.output_tail else [],
            "outputs": row.outputs, "replica": row.replica, "requested_by": row.requested_by,
            "started_at": row.started_at.isoformat(), "heartbeat_at": row.heartbeat_at.isoformat(),
            "finished_at": row.finished_at.isoformat() if row.finished_at else None}


def get(site: Site, operation_id: str) -> dict[str, Any]:
    """LookupError if unknown. A stale ``provisioning`` record is stored as failed first."""
    with transaction(site.sessions) as session:
        row = session.get(PoolOperation, operation_id)
        if row is None:
            raise LookupError(f"no operation {operation_id!r}")
        _expire_if_stale(row, utcnow())
        return view(row)


def list_operations(site: Site, pool: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    query = select(PoolOperation).order_by(PoolOperation.started_at.desc()).limit(limit)
    if pool:
        query = query.where(PoolOperation.pool == pool)
    with transaction(site.sessions) as session:
        rows = session.scalars(query).all()
        now = utcnow()
        for row in rows:
            _expire_if_stale(row, now)
        return [view(row) for row in rows]

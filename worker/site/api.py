"""The site's HTTP API, ``/api/v1`` (OpenAPI at /docs): pools, workers, tasks, logs, dead letters.

JSON in and out. Every request needs a bearer token (401 without a valid one); write endpoints need
an ``admin`` one (403 for ``read``). Bad input is answered 4xx with a body naming the field; nothing
is recorded for a refused submission.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from worker import protocol
from worker.site import operations as ops
from worker.site.auth import COOKIE, Principal, bearer

if TYPE_CHECKING:
    from worker.site.server import SiteService

POOL_RE = r"^[a-z0-9][a-z0-9-]{1,48}[a-z0-9]$"  # competition names (the double-hyphen rule: on submit)
FILE_SUFFIX = ".file"  # blob name suffix of single-file bundles (worker.storage reads the kind from it)
BUNDLE_ID_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
LABEL_KEY_RE = r"^[A-Za-z0-9_.\-/]{1,64}$"
TASK_ID = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
POOL_NAME = Annotated[str, Path(min_length=3, max_length=50, pattern=POOL_RE)]


# --- auth ----------------------------------------------------------------------------------------------
def service_of(request: Request) -> SiteService:
    return request.app.state.service


def principal(request: Request) -> Principal:
    """Header ``Authorization: Bearer TOKEN``. The dashboard's cookie (same token) is accepted for reads
    only (its live log tail); the dashboard writes through its own same-origin form routes."""
    token = bearer(request.headers.get("authorization"))
    if token is None and request.method in ("GET", "HEAD"):
        token = request.cookies.get(COOKIE)
    found = service_of(request).tokens.check(token)
    if found is None:
        raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
    return found


def admin(who: Annotated[Principal, Depends(principal)]) -> Principal:
    if not who.admin:
        raise HTTPException(403, f"token {who.name!r} has scope read; this endpoint needs admin")
    return who


Reader = Annotated[Principal, Depends(principal)]
Admin = Annotated[Principal, Depends(admin)]
router = APIRouter(prefix="/api/v1")


def field_error(status: int, field: str, message: str) -> HTTPException:
    return HTTPException(status, {"field": field, "message": message})


# --- models --------------------------------------------------------------------------------------------
class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=8192)


class SubmitRequest(_In):
    pool: str = Field(pattern=POOL_RE, description="The pool (competition) to run it on.")
    command: list[Annotated[str, Field(max_length=8192)]] = Field(min_length=1, max_length=256)
    program: str | None = Field(default=None, description="Stored bundle id (sha256:HEX) run as the program; "
                                "it is at ../program from the working directory.")
    inputs: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")], str] = Field(
        default_factory=dict, max_length=32, description="NAME -> stored bundle id, at ../inputs/NAME.")
    time_limit_s: float = Field(default=3600.0, gt=0, le=7 * 24 * 3600)
    env: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")], str] = Field(
        default_factory=dict, max_length=128)
    resources: protocol.Resources = Field(default_factory=protocol.Resources)
    max_attempts: int = Field(default=10, ge=1, le=20, description="A ceiling; the pool's retry_budget decides "
                              "how often an infrastructure failure is retried (docs/site.md).")
    priority: int = Field(default=0, ge=-1000, le=1000, description="Admission order under the pool's limits: "
                          "higher first (e.g. 10 for organizer baselines), then first come first served.")
    task_type: protocol.TaskType = protocol.TaskType.EVALUATE_SUBMISSION
    labels: dict[Annotated[str, Field(pattern=LABEL_KEY_RE)], Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict, max_length=32, description="Free-form, e.g. participant and submission ids; "
        "`participant` is the label the pool's max_in_flight_per_label limit counts.")

    @field_validator("program")
    @classmethod
    def _bundle_id(cls, value: str | None) -> str | None:
        if value is not None and not BUNDLE_ID_RE.match(value):
            raise ValueError("a stored bundle id is sha256:<64 hex digits> (POST /api/v1/pools/POOL/bundles)")
        return value

    @field_validator("inputs")
    @classmethod
    def _input_ids(cls, value: dict[str, str]) -> dict[str, str]:
        for name, bundle_id in value.items():
            if not BUNDLE_ID_RE.match(bundle_id):
                raise ValueError(f"input {name!r}: a stored bundle id is sha256:<64 hex digits>")
        return value


class CancelRequest(_In):
    reason: str = Field(default="cancelled through the API", max_length=500)


# --- pools and workers ---------------------------------------------------------------------------------
@router.get("/pools", tags=["pools"])
def list_pools(request: Request, _: Reader) -> dict[str, Any]:
    """Every active pool: queue depth (active / scheduled / dead-lettered), workers (live / idle /
    busy), tasks per state, throughput over the last 5 minutes."""
    service = service_of(request)
    return {"pools": ops.pool_views(service.site, service.queue_depth)}


@router.get("/pools/{name}", tags=["pools"])
def show_pool(request: Request, name: POOL_NAME, _: Reader) -> dict[str, Any]:
    service = service_of(request)
    views = ops.pool_views(service.site, service.queue_depth, name=name)
    if not views:
        raise HTTPException(404, f"no pool named {name!r}")
    return {**views[0], "workers_list": ops.worker_views(service.site, name)}


class AzurePool(_In):
    """What `pool competition create NAME --azure` takes, as JSON: the stack config (the content of a
    stack file such as Pulumi.linux-pool.yaml.example: its `config:` mapping, or bare `pool` keys)."""

    model_config = ConfigDict(extra="forbid", str_max_length=16384)

    config: dict[Annotated[str, Field(max_length=128)], Any] = Field(
        max_length=64, description="pool:* keys (prefix optional: competition, workers, servicebus, storage, "
        "auth, site, …) and azure-native:location, validated as the CLI validates a stack file; "
        "`admin_password` for a Windows pool (stored as a Pulumi secret, never returned).")
    stack: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.\-/]{1,100}$",
                              description="The Pulumi stack (default: the pool's name).")


class PoolRequest(_In):
    """A pool deployed elsewhere (the Pulumi program): the site's own access to its two queues; or one
    the site creates (`create`, the local stack's site) or deploys to Azure (`azure`)."""

    name: str = Field(pattern=POOL_RE)
    task_queue_connection_string: str | None = Field(default=None, max_length=2048)
    response_queue_connection_string: str | None = Field(default=None, max_length=2048)
    namespace: str | None = Field(default=None, max_length=256, pattern=r"^[A-Za-z0-9.\-]+$",
                                  description="FQDN reached with DefaultAzureCredential (identity auth).")
    create: bool = Field(default=False, description="Create the queue pair and containers too (a site that "
                         "can: the local stack's, at runtime); then give no access fields.")
    azure: AzurePool | None = Field(default=None, description="Deploy the pool to Azure with the Pulumi "
                                    "program (Automation API) in the background, then register it from the "
                                    "stack outputs: answered 202 with the operation (GET /api/v1/operations/ID).")


@router.post("/pools", tags=["pools"], status_code=201,
             responses={202: {"description": "`azure`: the deployment started; the body is its operation"}})
def register_pool(request: Request, body: PoolRequest, who: Admin) -> Any:
    """Register (or update) a pool: its queue pair `NAME-tasks` / `NAME-responses`, reached with
    queue-level connection strings or the namespace and the site's identity; or, with `create: true`
    on a site that can (the local stack's), create it at runtime; or, with `azure`, deploy it with the
    Pulumi program and register it from the stack outputs when `pulumi up` is done (202: follow the
    operation). `pool competition create --azure` and `pool competition import` register with it."""
    from worker.config import ConfigError, check_competition_name

    try:
        check_competition_name(body.name)
    except ConfigError as exc:
        raise field_error(422, "name", str(exc)) from None
    service = service_of(request)
    access = body.task_queue_connection_string or body.response_queue_connection_string or body.namespace
    if body.azure is not None:
        from fastapi.responses import JSONResponse

        from worker.site import azure_pools

        if access or body.create:
            raise field_error(422, "azure", "a pool deployed to Azure gets its access from the stack outputs: "
                                            "give no access fields and no create")
        try:
            operation = azure_pools.start_create(service.site, service.replica_id, body.name, body.azure.config,
                                                 stack=body.azure.stack, requested_by=who.name)
        except ConfigError as exc:
            fields = getattr(exc, "fields", None) or []
            raise field_error(422, ".".join(["azure.config", *[f for f in fields if f][:1]]), str(exc)) from None
        except azure_pools.Busy as exc:
            raise field_error(409, "name", str(exc)) from None
        return JSONResponse(operation, 202, headers={"Location": f"/api/v1/operations/{operation['id']}"})
    if body.create:
        if service.pool_creator is None:
            raise field_error(422, "create", "this site cannot create pools: deploy one with `azure` (or `pool "
                                             "competition create NAME --azure`) and register it here")
        if access:
            raise field_error(422, "create", "a pool the site creates gets its own access: give no access fields")
        service.pool_creator(body.name)
        return ops.pool_views(service.site, name=body.name)[0]
    try:
        ops.register_access(service.site, body.name, task_queue_connection_string=body.task_queue_connection_string,
                            response_queue_connection_string=body.response_queue_connection_string,
                            namespace=body.namespace)
    except ops.Invalid as exc:
        raise field_error(422, exc.field, exc.message) from None
    return ops.pool_views(service.site, name=body.name)[0]


@router.delete("/pools/{name}", tags=["pools"])
def retire_pool(request: Request, name: POOL_NAME, _: Admin) -> dict[str, Any]:
    """Stop using a pool: no new submissions, and the site stops working on it — this replica closes
    its receiver on the pool's response queue before answering, other replicas within their pool
    sync (a second); the monitor leaves its tasks alone. Statuses of its tasks still in flight
    (`in_flight`) wait in the response queue and are applied if the pool is registered again. Its
    tasks and history stay."""
    service = service_of(request)
    try:
        in_flight = ops.retire_pool(service.site, name)
    except ops.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    watcher = service.site.watcher
    if watcher is not None:
        watcher.sync_pools()  # closes it now (or waits while the pool-sync thread closes it)
    return {"retired": name, "in_flight": in_flight,
            "receiver_closed": watcher is not None and name not in watcher.pools}


@router.get("/operations", tags=["pools"])
def list_operations(request: Request, _: Reader,
                    pool: Annotated[str | None, Query(pattern=POOL_RE)] = None,
                    limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
    """Background pool operations (Azure deployments), newest first."""
    from worker.site import azure_pools

    return {"operations": azure_pools.list_operations(service_of(request).site, pool, limit)}


@router.get("/operations/{operation_id}", tags=["pools"])
def show_operation(request: Request, _: Reader,
                   operation_id: Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")]) -> dict[str, Any]:
    """`provisioning` (with the last lines of the engine's output) -> `ready` (the pool is registered)
    or `failed` (`detail` says why)."""
    from worker.site import azure_pools

    try:
        return azure_pools.get(service_of(request).site, operation_id)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from None


@router.post("/pools/{name}/bundles", tags=["pools"], status_code=201)
async def upload_bundle(request: Request, name: POOL_NAME, _: Admin,
                        kind: Literal["archive", "file"] = "archive") -> dict[str, Any]:
    """Upload a program or input bundle. `kind=archive` (default): a gzip'd tar (as `pool submit
    --bundle DIR` packs it) or a zip, extracted for the task; `kind=file`: any single file, placed as
    is at ../inputs/NAME. Content-addressed: the answer's `id` (sha256:HEX) is what tasks name."""
    service = service_of(request)
    _require_pool(service, name)
    limit = service.config.max_bundle_bytes
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise field_error(413, "body", f"a bundle may hold at most {limit} bytes")
        chunks.append(chunk)
    data = b"".join(chunks)
    if kind == "file":
        suffix = FILE_SUFFIX
    elif data[:2] == b"\x1f\x8b":
        suffix = ".tar.gz"
    elif data[:4] == b"PK\x03\x04":
        suffix = ".zip"
    else:
        raise field_error(422, "body", "an archive bundle is a gzip'd tar or a zip (or upload with kind=file)")
    stored = service.site.storage.upload_bundle(name, data, suffix=suffix)
    return {"id": f"sha256:{stored.sha256}", "size": stored.size, "pool": name, "kind": kind}


@router.get("/workers", tags=["pools"])
def list_workers(request: Request, _: Reader,
                 pool: Annotated[str | None, Query(pattern=POOL_RE)] = None) -> dict[str, Any]:
    """Workers as heard of: live, activity, current task, last heard, version and host facts."""
    return {"workers": ops.worker_views(service_of(request).site, pool)}


def _require_pool(service: SiteService, name: str) -> None:
    from worker.site.pools import UnknownPool, get_pool

    with service.site.sessions() as session:
        try:
            get_pool(session, name)
        except UnknownPool as exc:
            raise field_error(404, "pool", str(exc)) from None


# --- tasks ---------------------------------------------------------------------------------------------
@router.post("/tasks", tags=["tasks"], status_code=201)
def submit_task(request: Request, body: SubmitRequest, _: Admin) -> dict[str, Any]:
    """Record a task and send it to its pool. Bundles are named by stored-bundle id (upload them
    first). Nothing is recorded when the request is refused."""
    from worker.site.producer import Submission, SubmitError, new_task_id
    from worker.storage import StoredBundle

    service = service_of(request)
    site = service.site
    _require_pool(service, body.pool)

    def resolve(field: str, bundle_id: str) -> StoredBundle:
        stored = service.stored_bundle(body.pool, bundle_id)
        if stored is None:
            raise field_error(422, field, f"no stored bundle {bundle_id} in pool {body.pool} "
                                          f"(upload it: POST /api/v1/pools/{body.pool}/bundles)")
        return stored

    program = resolve("program", body.program) if body.program else None
    inputs = {n: resolve(f"inputs.{n}", b) for n, b in body.inputs.items()}
    task_id = new_task_id()
    submission = Submission(pool=body.pool, command=body.command, program=program, inputs=inputs,
                            time_limit_s=body.time_limit_s, env=body.env, task_type=body.task_type,
                            resources=body.resources, max_attempts=body.max_attempts, task_id=task_id,
                            labels=body.labels, priority=body.priority)
    try:
        site.producer.submit(submission)
    except SubmitError as exc:
        try:
            view = ops.get_task(site, task_id, history=False)
        except ops.NotFound:  # refused before anything was recorded
            raise field_error(422, "body", str(exc)) from None
        return {**view, "sent": False, "warning": str(exc)}  # recorded: the monitor sends it
    return {**ops.get_task(site, task_id, history=False), "sent": True}


@router.get("/tasks", tags=["tasks"])
def list_tasks(
    request: Request, _: Reader,
    pool: Annotated[str | None, Query(pattern=POOL_RE)] = None,
    state: Annotated[list[Literal["queued", "received", "preparing", "running", "uploading", "finished",
                                  "failed", "timed_out", "cancelled"]] | None, Query()] = None,
    label: Annotated[list[Annotated[str, Query(pattern=r"^[A-Za-z0-9_.\-/]{1,64}=.{0,256}$")]] | None,
                     Query(description="KEY=VALUE (repeatable: all must match)")] = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> dict[str, Any]:
    """Newest first. Page with `offset` (the answer's `next_offset`, null on the last page)."""
    if since is not None and since.tzinfo is None:
        raise field_error(422, "since", "give a timezone, e.g. 2026-12-03T08:00:00Z")
    labels = dict(item.split("=", 1) for item in label or [])
    tasks, total = ops.list_tasks(service_of(request).site, pool=pool, states=list(state or []), labels=labels,
                                  since=since, limit=limit, offset=offset)
    next_offset = offset + len(tasks) if offset + len(tasks) < total else None
    return {"tasks": tasks, "total": total, "offset": offset, "next_offset": next_offset}


@router.get("/tasks/{task_id}", tags=["tasks"])
def show_task(request: Request, task_id: TASK_ID, _: Reader,
              wait_s: Annotated[float, Query(ge=0, le=60, description="Long poll: answer as soon as the task "
                                             "is in a final state, or after this many seconds.")] = 0) -> dict[str, Any]:
    """One task with its full history (one entry per state transition)."""
    service = service_of(request)
    try:
        if wait_s:
            deadline = time.monotonic() + wait_s
            while not ops.task_row(service.site, task_id).site_state.terminal and time.monotonic() < deadline \
                    and not service.stopping.is_set():
                time.sleep(0.01)
        return ops.get_task(service.site, task_id)
    except ops.NotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.post("/tasks/{task_id}/cancel", tags=["tasks"])
def cancel_task(request: Request, task_id: TASK_ID, _: Admin, body: CancelRequest | None = None) -> dict[str, Any]:
    """A queued task is cancelled at once; a running one stops within seconds (its worker polls)."""
    site = service_of(request).site
    try:
        site.producer.cancel(task_id, (body or CancelRequest()).reason)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from None
    return ops.get_task(site, task_id, history=False)


@router.post("/tasks/{task_id}/rerun", tags=["tasks"])
def rerun_task(request: Request, task_id: TASK_ID, _: Admin) -> dict[str, Any]:
    """A new attempt of a task in a final state (any: finished, failed, timed out, cancelled)."""
    site = service_of(request).site
    try:
        ops.rerun(site, task_id)
    except ops.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ops.Conflict as exc:
        raise HTTPException(409, str(exc)) from None
    return ops.get_task(site, task_id, history=False)


# --- logs ----------------------------------------------------------------------------------------------
@router.get("/tasks/{task_id}/logs/{stream}", tags=["logs"], response_model=None)
def task_log(request: Request, task_id: TASK_ID, stream: Literal["stdout", "stderr"], _: Reader,
             follow: bool = False, attempt: Annotated[int | None, Query(ge=1, le=1000)] = None,
             offset: Annotated[int, Query(ge=0)] = 0) -> PlainTextResponse | StreamingResponse:
    """The whole log as text/plain; with `follow=true` a live tail as Server-Sent Events (`data:`
    one per line, then `event: end` with the final state when the task is over)."""
    site = service_of(request).site
    try:
        task = ops.task_row(site, task_id)
    except ops.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    attempt = attempt or task.attempt
    if not follow:
        data = site.storage.read_log(task.pool, task_id, attempt, stream, offset)
        return PlainTextResponse(data.decode(errors="replace"))
    return StreamingResponse(log_events(service_of(request), task_id, stream, attempt, offset),
                             media_type="text/event-stream", headers={"Cache-Control": "no-store"})


def log_events(service: SiteService, task_id: str, stream: Literal["stdout", "stderr"], attempt: int,
               offset: int = 0, poll_s: float = 0.3) -> Iterator[str]:
    """Server-Sent Events of a log: complete lines as they are written; ends with the task."""
    site = service.site
    pending = b""
    idle_since = time.monotonic()
    yield ": tail\n\n"
    while not service.stopping.is_set():
        task = ops.task_row(site, task_id)
        final = task.site_state.terminal or task.attempt != attempt
        chunk = site.storage.read_log(task.pool, task_id, attempt, stream, offset)
        if chunk:
            offset += len(chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield f"data: {line.decode(errors='replace')}\n\n"
            idle_since = time.monotonic()
        if final:
            if pending:
                yield f"data: {pending.decode(errors='replace')}\n\n"
            yield f"event: end\ndata: {task.state}\n\n"
            return
        if time.monotonic() - idle_since > 15:  # keep proxies from closing a quiet stream
            yield ": keep-alive\n\n"
            idle_since = time.monotonic()
        time.sleep(poll_s)


# --- dead letters --------------------------------------------------------------------------------------
@router.get("/dead-letters", tags=["dead letters"])
def list_dead_letters(request: Request, _: Reader,
                      pool: Annotated[str | None, Query(pattern=POOL_RE)] = None,
                      limit: Annotated[int, Query(ge=1, le=500)] = 100,
                      offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> dict[str, Any]:
    """Task messages Service Bus or a worker dead-lettered (malformed, max deliveries...), with the
    reason and description; their task was failed with that reason."""
    items, total = ops.list_dead_letters(service_of(request).site, pool, limit, offset)
    return {"dead_letters": items, "total": total}


@router.post("/dead-letters/{dead_letter_id}/resubmit", tags=["dead letters"])
def resubmit_dead_letter(request: Request, dead_letter_id: Annotated[int, Path(ge=1, le=2**62)],
                         _: Admin) -> dict[str, Any]:
    """Run the dead-lettered task again (a new attempt with a fresh message)."""
    try:
        return ops.resubmit_dead_letter(service_of(request).site, dead_letter_id)
    except ops.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ops.Conflict as exc:
        raise HTTPException(409, str(exc)) from None


@router.delete("/dead-letters", tags=["dead letters"])
def purge_dead_letters(request: Request, _: Admin,
                       pool: Annotated[str | None, Query(pattern=POOL_RE)] = None
                       ) -> dict[str, Any]:
    """Forget dead letters (of one pool, or all)."""
    return {"purged": ops.purge_dead_letters(service_of(request).site, pool)}


@router.delete("/dead-letters/{dead_letter_id}", tags=["dead letters"])
def delete_dead_letter(request: Request, dead_letter_id: Annotated[int, Path(ge=1, le=2**62)],
                       _: Admin) -> dict[str, Any]:
    purged = ops.purge_dead_letters(service_of(request).site, dead_letter_id=dead_letter_id)
    if not purged:
        raise HTTPException(404, f"no dead letter {dead_letter_id}")
    return {"purged": purged}

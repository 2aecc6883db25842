"""The dashboard: server-rendered pages (Jinja2) and a little plain JavaScript (live log tail through
Server-Sent Events, a periodic refresh of list pages). No build step.

Authentication: the login form takes a token and sets it as an HTTP-only, SameSite=Strict cookie;
the form actions (submit, cancel, rerun, resubmit) are same-origin POSTs that need an admin token."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from worker.site import operations as ops
from worker.site.auth import COOKIE, Principal

if TYPE_CHECKING:
    from worker.site.server import SiteService

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(include_in_schema=False)
STATES = ("queued", "received", "preparing", "running", "uploading", "finished", "failed", "timed_out", "cancelled")


def static_files() -> StaticFiles:
    return StaticFiles(directory=str(HERE / "static"))


def _service(request: Request) -> SiteService:
    return request.app.state.service


def _who(request: Request) -> Principal:
    found = _service(request).tokens.check(request.cookies.get(COOKIE))
    if found is None:
        raise HTTPException(303, headers={"Location": f"/login?next={request.url.path}"})
    return found


def _admin(request: Request) -> Principal:
    who = _who(request)
    origin = request.headers.get("origin")
    if origin and origin.rstrip("/") != str(request.base_url).rstrip("/"):
        raise HTTPException(403, "cross-origin form post refused")
    if not who.admin:
        raise HTTPException(403, f"token {who.name!r} has scope read: sign in with an admin token to change tasks")
    return who


def _ago(iso: str | None) -> str:
    if not iso:
        return "-"
    seconds = (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


templates.env.filters["ago"] = _ago


def _page(request: Request, name: str, who: Principal, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"who": who, "path": request.url.path, **context})


# --- login ---------------------------------------------------------------------------------------------
@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/", error: str | None = None) -> HTMLResponse:
    return templates.TemplateResponse(request, "login.html", {"next": _local(next), "error": error, "who": None})


@router.post("/login")
def login(request: Request, token: Annotated[str, Form(max_length=4096)],
          next: Annotated[str, Form(max_length=2048)] = "/") -> Response:
    if _service(request).tokens.check(token) is None:
        return templates.TemplateResponse(request, "login.html", {"next": _local(next), "who": None,
                                                                  "error": "unknown token"}, status_code=401)
    response = RedirectResponse(_local(next), 303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                        max_age=12 * 3600)
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/login", 303)
    response.delete_cookie(COOKIE)
    return response


def _local(target: str) -> str:
    """Only same-site paths (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


# --- pages ---------------------------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse)
def pools_page(request: Request) -> HTMLResponse:
    who = _who(request)
    service = _service(request)
    return _page(request, "pools.html", who, pools=ops.pool_views(service.site, service.queue_depth))


@router.get("/workers", response_class=HTMLResponse)
def workers_page(request: Request, pool: str | None = None) -> HTMLResponse:
    who = _who(request)
    return _page(request, "workers.html", who, workers=ops.worker_views(_service(request).site, pool or None),
                 pool=pool)


@router.get("/tasks", response_class=HTMLResponse)
def tasks_page(request: Request, pool: str | None = None, state: str | None = None, label: str | None = None,
               offset: int = 0) -> HTMLResponse:
    who = _who(request)
    site = _service(request).site
    labels = dict([label.split("=", 1)]) if label and "=" in label else None
    states = [state] if state in STATES else None
    tasks, total = ops.list_tasks(site, pool=pool or None, states=states, labels=labels, limit=50,
                                  offset=max(0, offset))
    pools = [p["name"] for p in ops.pool_views(site)]
    return _page(request, "tasks.html", who, tasks=tasks, total=total, offset=max(0, offset), pools=pools,
                 states=STATES, filters={"pool": pool or "", "state": state or "", "label": label or ""},
                 error=request.query_params.get("error"))


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
def task_page(request: Request, task_id: str) -> HTMLResponse:
    who = _who(request)
    try:
        task = ops.get_task(_service(request).site, task_id)
    except ops.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return _page(request, "task.html", who, task=task, error=request.query_params.get("error"))


@router.get("/dead-letters", response_class=HTMLResponse)
def dead_letters_page(request: Request) -> HTMLResponse:
    who = _who(request)
    items, total = ops.list_dead_letters(_service(request).site)
    return _page(request, "dead_letters.html", who, dead_letters=items, total=total)


# --- actions -------------------------------------------------------------------------------------------
@router.post("/tasks")
def submit_from_page(request: Request, pool: Annotated[str, Form(max_length=64)],
                     command: Annotated[str, Form(max_length=8192)],
                     time_limit_s: Annotated[float, Form(gt=0, le=7 * 24 * 3600)] = 600.0) -> Response:
    """The command is split like a shell would (no shell runs it)."""
    import shlex

    from pydantic import ValidationError

    from worker.site.api import SubmitRequest, submit_task

    who = _admin(request)
    try:
        argv = shlex.split(command)
        body = SubmitRequest(pool=pool, command=argv, time_limit_s=time_limit_s, labels={"submitted-by": who.name})
        task = submit_task(request, body, who)
    except (ValueError, ValidationError) as exc:
        return RedirectResponse(f"/tasks?error={_quote(str(exc).splitlines()[0])}", 303)
    except HTTPException as exc:
        detail = exc.detail["message"] if isinstance(exc.detail, dict) else exc.detail
        return RedirectResponse(f"/tasks?error={_quote(str(detail))}", 303)
    return RedirectResponse(f"/tasks/{task['id']}", 303)


@router.post("/tasks/{task_id}/cancel")
def cancel_from_page(request: Request, task_id: str) -> Response:
    who = _admin(request)
    try:
        _service(request).site.producer.cancel(task_id, f"cancelled from the dashboard by {who.name}")
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from None
    return RedirectResponse(f"/tasks/{task_id}", 303)


@router.post("/tasks/{task_id}/rerun")
def rerun_from_page(request: Request, task_id: str) -> Response:
    who = _admin(request)
    try:
        ops.rerun(_service(request).site, task_id, reason=f"rerun from the dashboard by {who.name}")
    except ops.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ops.Conflict as exc:
        return RedirectResponse(f"/tasks/{task_id}?error={_quote(str(exc))}", 303)
    return RedirectResponse(f"/tasks/{task_id}", 303)


@router.post("/dead-letters/{dead_letter_id}/resubmit")
def resubmit_from_page(request: Request, dead_letter_id: int) -> Response:
    _admin(request)
    try:
        result = ops.resubmit_dead_letter(_service(request).site, dead_letter_id)
    except (ops.NotFound, ops.Conflict) as exc:
        raise HTTPException(409, str(exc)) from None
    return RedirectResponse(f"/tasks/{result['task_id']}", 303)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text[:300])

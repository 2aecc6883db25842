"""The FastAPI application of the site service: API, dashboard, /metrics, and the error contract
(every refusal is a 4xx JSON body naming the field; an unexpected failure is logged and answered
500 without internals)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from worker import __version__

if TYPE_CHECKING:
    from worker.site.server import SiteService

log = logging.getLogger(__name__)


class BodyLimit:
    """Refuse bodies over the limit before reading them (413), and bodies without a length (411),
    except bundle uploads, which are counted while streamed (worker.site.api.upload_bundle)."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_bundle_bytes: int) -> None:
        self.app, self.max_bytes, self.max_bundle_bytes = app, max_bytes, max_bundle_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
            headers = dict(scope["headers"])
            bundle = scope["path"].endswith("/bundles")
            limit = self.max_bundle_bytes if bundle else self.max_bytes
            length = headers.get(b"content-length")
            problem = None
            if length is None:
                if b"chunked" in headers.get(b"transfer-encoding", b"") and not bundle:
                    problem = (411, "a Content-Length is required")
            elif not length.isdigit():
                problem = (400, "Content-Length is not a number")
            elif int(length) > limit:
                problem = (413, f"the body may hold at most {limit} bytes")
            if problem:
                response = JSONResponse({"detail": f"body: {problem[1]}", "field": "body"}, problem[0])
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:] or parts
    return ".".join(parts) or "body"


def create_app(service: SiteService) -> FastAPI:
    from worker.site import api, metrics, web

    app = FastAPI(title="compute-pools site", version=__version__,
                  description="Submit tasks to pools of workers, follow them, read their logs. "
                              "Authenticate with `Authorization: Bearer TOKEN` (scopes: read, admin).")
    app.state.service = service
    app.state.metrics = metrics.SiteMetrics(service)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": "body" if e.get("type") == "json_invalid" else _field(e.get("loc", ())),
                   "message": e.get("msg", "invalid")} for e in exc.errors()]
        first = errors[0] if errors else {"field": "body", "message": "invalid request"}
        return JSONResponse({"detail": f"{first['field']}: {first['message']}", "field": first["field"],
                             "errors": errors[:20]}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if isinstance(detail, dict) and "field" in detail:
            body = {"detail": f"{detail['field']}: {detail['message']}", "field": detail["field"]}
        else:
            body = {"detail": detail}
        return JSONResponse(body, exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": "internal error (logged on the site)"}, 500)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(api.router)
    app.include_router(metrics.router)
    app.include_router(web.router)
    app.mount("/static", web.static_files(), name="static")
    app.add_middleware(BodyLimit, max_bytes=service.config.max_body_bytes,
                       max_bundle_bytes=service.config.max_bundle_bytes)
    return app

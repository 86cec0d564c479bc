"""FastAPI application factory: REST routes (sessions, collection jobs), the WebSocket route, health, metrics and
the browser client.

Handlers only authenticate and delegate: the session manager, the worker and the connection code do the work.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core.engine import Engine
from ..core.weights import LoadedWeights
from .auth import api_key_valid, presented_token, redact_tokens_in_logs, session_role, token_matches, websocket_token
from .connection import serve_connection
from .exports import MEDIA_TYPES, ExportKind, ExportUnavailable, export_bytes
from .jobs import Job, JobDownloadName, JobNotReady
from .protocol import (
    CLOSE_NOT_FOUND,
    CLOSE_UNAUTHORIZED,
    PROTOCOL_VERSION,
    SUBPROTOCOL,
    ErrorBody,
    JobCreated,
    JobStatus,
    SessionCreated,
    SessionSettings,
    SessionStats,
    errors_summary,
    validation_summary,
)
from .service import NotReady, Service
from .sessions import CapacityError, Session
from .settings import ServeSettings
from .uploads import UploadRefused

log = logging.getLogger(__name__)

PAGE_DIR = Path(__file__).resolve().parent / "page"  # package data: client_js's `npm run build` writes it
NO_CLIENT_PAGE = """<!doctype html><meta charset="utf-8"><title>Spann3R service</title>
<h1>Spann3R streaming service</h1>
<p>The browser client is not built. Build it with <code>cd client_js &amp;&amp; npm ci &amp;&amp; npm run build</code>
and restart the server. The API is documented at <a href="/docs">/docs</a>.</p>"""


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str, headers: dict | None = None):
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    service.require_ready()
    return service


def require_api_key(request: Request, service: Service = Depends(get_service)) -> None:
    key = service.settings.api_key
    if not api_key_valid(request.headers, None if key is None else key.get_secret_value()):
        raise ApiError(
            401, "unauthorized", "a valid API key is required to create sessions and jobs (X-API-Key header)"
        )


def _session(service: Service, session_id: str, token: str | None, need: str) -> Session:
    s = service.manager.get(session_id)
    if s is None and session_id in service.manager.arriving:
        raise ApiError(503, "not_ready", "the session is arriving from another worker; retry", {"Retry-After": "1"})
    if s is None:
        raise ApiError(404, "not_found", "no such session (never created, deleted, or evicted)")
    role = session_role(s, token)
    if role is None:
        raise ApiError(
            401, "unauthorized", "a valid session token is required (Authorization: Bearer TOKEN or ?token=TOKEN)"
        )
    if need == "stream" and role != "stream":
        raise ApiError(403, "forbidden", "the watch token is read-only")
    return s


def stream_session(
    session_id: str, request: Request, token: str | None = Query(None), service: Service = Depends(get_service)
) -> Session:
    return _session(service, session_id, presented_token(token, request.headers), "stream")


def any_session(
    session_id: str, request: Request, token: str | None = Query(None), service: Service = Depends(get_service)
) -> Session:
    return _session(service, session_id, presented_token(token, request.headers), "watch")


def job_with_token(
    job_id: str, request: Request, token: str | None = Query(None), service: Service = Depends(get_service)
) -> Job:
    job = service.jobs.get(job_id)
    if job is None:
        raise ApiError(404, "not_found", "no such job (never created, deleted, or expired)")
    if not token_matches(presented_token(token, request.headers), job.token_hash):
        raise ApiError(
            401, "unauthorized", "a valid job token is required (Authorization: Bearer TOKEN or ?token=TOKEN)"
        )
    return job


def _base(request: Request, settings: ServeSettings) -> str:
    return settings.public_url.rstrip("/") if settings.public_url else str(request.base_url).rstrip("/")


def _ws_base(request: Request, settings: ServeSettings) -> str:
    base = settings.public_url.rstrip("/") if settings.public_url else str(request.base_url).rstrip("/")
    return base.replace("https://", "wss://", 1).replace("http://", "ws://", 1)


# --------------------------------------------------------------------------------------------- routes

api = APIRouter(prefix="/v1", tags=["sessions"])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
    404: {"model": ErrorBody},
    409: {"model": ErrorBody},
    413: {"model": ErrorBody},
    422: {"model": ErrorBody},
    503: {"model": ErrorBody},
}
SETTINGS_BODY = {
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SessionSettings"}}},
    }
}


async def settings_body(request: Request) -> SessionSettings | None:
    """The optional JSON body of ``POST /v1/sessions``, strictly validated. Read in the handler, not declared as a
    body parameter: FastAPI reads and parses declared bodies before the dependencies run, so an unauthenticated
    client could make the server parse its body before the API key is checked."""
    raw = await request.body()
    if not raw.strip() or raw.strip() == b"null":
        return None
    try:
        return SessionSettings.model_validate_json(raw)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", validation_summary(exc)) from None


@api.post(
    "/sessions",
    status_code=201,
    response_model=SessionCreated,
    responses=ERRORS,
    dependencies=[Depends(require_api_key)],
    openapi_extra=SETTINGS_BODY,
)
async def create_session(request: Request, service: Service = Depends(get_service)) -> SessionCreated:
    """Create a session (body: optional SessionSettings). Keep the returned tokens: they are never shown
    again."""
    settings = await settings_body(request)
    s = await service.manager.create(service.settings.session_settings(settings))
    return SessionCreated(
        id=s.id,
        token=s.token,
        watch_token=s.watch_token,
        worker_id=service.settings.worker_id,
        stream_url=f"{_ws_base(request, service.settings)}/v1/sessions/{s.id}/ws",
        protocol=PROTOCOL_VERSION,
        settings=s.settings,
    )


@api.get("/sessions/{session_id}", response_model=SessionStats, responses=ERRORS)
async def session_stats(s: Session = Depends(any_session), service: Service = Depends(get_service)):
    return s.stats(service.settings.worker_id)


@api.delete("/sessions/{session_id}", status_code=204, responses=ERRORS)
async def delete_session(s: Session = Depends(stream_session), service: Service = Depends(get_service)):
    await service.manager.remove(s)
    return Response(status_code=204)


@api.post("/sessions/{session_id}/snapshot", responses=ERRORS)
async def snapshot_session(s: Session = Depends(stream_session), service: Service = Depends(get_service)):
    """Save the session to the server's state dir (it is also saved at graceful shutdown)."""
    if s.persistence is None:  # no state store (--state-dir / --state-url)
        raise ApiError(409, "snapshot_unavailable", "the server has no state store (--state-dir or --state-url)")
    s.touch()
    return {"id": s.id, "frames": s.frames_processed, "snapshot_bytes": await service.manager.snapshot(s)}


@api.get(
    "/sessions/{session_id}/export/{kind}",
    responses={
        **ERRORS,
        200: {"content": {"application/octet-stream": {}, "model/gltf-binary": {}, "application/json": {}}},
    },
)
async def export_session(kind: ExportKind, s: Session = Depends(stream_session)):
    """The fused, confidence-filtered cloud of every final so far (PLY, GLB), the camera trajectory, a nerfstudio
    transforms.json, or ROS 2 messages in MCAP (scene.mcap; 501 without the robotics extra)."""
    if not s.export.poses or s.focal is None:
        raise ApiError(409, "nothing_to_export", "no final pointmap yet (a stream needs at least two frames)")
    s.touch()
    data = await asyncio.to_thread(export_bytes, s.export.frozen(), s.focal, kind)
    return Response(
        data,
        media_type=MEDIA_TYPES[kind],
        headers={"Content-Disposition": f'attachment; filename="{s.id[:8]}-{kind.value}"'},
    )


@api.websocket("/sessions/{session_id}/ws")
async def stream(ws: WebSocket, session_id: str, token: str | None = Query(None)):
    """The streaming WebSocket (see docs/protocol.md). Token: the subprotocol spann3r.token.TOKEN (offered next
    to spann3r.v1), or Authorization: Bearer; ?token= is still accepted from old clients (and never logged)."""
    service: Service = ws.app.state.service
    offered: list[str] = ws.scope.get("subprotocols", [])
    # never echo the token subprotocol: the answer names only the protocol
    await ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)  # then the close code is seen
    if not service.ready:
        return await ws.close(1013, "the model is still loading")
    s = service.manager.get(session_id)
    if s is None and session_id in service.manager.arriving:
        return await ws.close(1013, "the session is arriving from another worker; reconnect")
    if s is None:
        return await ws.close(CLOSE_NOT_FOUND, "no such session")
    role = session_role(s, websocket_token(offered, ws.headers, token))
    if role is None:
        return await ws.close(CLOSE_UNAUTHORIZED, "a valid session token is required")
    if role == "watch" and len(s.watchers) >= service.settings.max_watchers:
        return await ws.close(1013, "too many watchers on this session")
    await serve_connection(ws, s, role, service)


jobs_api = APIRouter(prefix="/v1", tags=["jobs"])
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    400: {"model": ErrorBody},
    413: {"model": ErrorBody},
    415: {"model": ErrorBody},
    422: {"model": ErrorBody},
}
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "images (JPEG, PNG, WebP, BMP, TIFF) and/or zip archives of images",
                        }
                    },
                }
            },
            "application/zip": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@jobs_api.post(
    "/jobs",
    status_code=201,
    response_model=JobCreated,
    responses=UPLOAD_ERRORS,
    dependencies=[Depends(require_api_key)],
    openapi_extra=UPLOAD_BODY,
)
async def create_job(
    request: Request,
    session_id: str | None = Query(
        None, description="attach the job to this session: its WebSocket receives the job's progress messages"
    ),
    session_token: str | None = Query(None, description="the session's stream token (or the X-Session-Token header)"),
    conf_thresh: float = Query(1e-3, ge=0.0, lt=1.0, description="confidence filter of the PLY / GLB downloads"),
    service: Service = Depends(get_service),
) -> JobCreated:
    """Reconstruct an unordered collection of images (the model chooses the order). Keep the returned token:
    it is never shown again. The upload is checked and decoded before the job exists; a bad one is refused."""
    session = None
    if session_id is not None:
        session = _session(service, session_id, session_token or request.headers.get("x-session-token"), "stream")
    length = request.headers.get("content-length")
    job = await service.jobs.create(
        request.stream(),
        request.headers.get("content-type"),
        int(length) if length and length.isdigit() else None,
        session,
        conf_thresh,
    )
    return JobCreated(
        id=job.id,
        token=job.token,
        status_url=f"{_base(request, service.settings)}/v1/jobs/{job.id}",
        worker_id=service.settings.worker_id,
        images=job.images,
        input_names=job.input_names,
        units_total=job.units_total,
        session_id=session.id if session else None,
    )


@jobs_api.get("/jobs/{job_id}", response_model=JobStatus, responses=ERRORS)
async def job_status(job: Job = Depends(job_with_token)) -> JobStatus:
    return job.status()


@jobs_api.delete("/jobs/{job_id}", status_code=204, responses=ERRORS)
async def delete_job(job: Job = Depends(job_with_token), service: Service = Depends(get_service)):
    """Cancel the job if it still runs; remove it, its result and its temporary folder."""
    await service.jobs.remove(job, "deleted")
    return Response(status_code=204)


@jobs_api.get(
    "/jobs/{job_id}/result/{name}",
    responses={
        **ERRORS,
        200: {"content": {"application/octet-stream": {}, "model/gltf-binary": {}, "application/json": {}}},
    },
)
async def job_result(
    name: JobDownloadName, job: Job = Depends(job_with_token), service: Service = Depends(get_service)
):
    """result.npz (the layout of ``spann3r reconstruct --unordered``), the fused cloud (PLY, GLB), the camera
    trajectory, or a nerfstudio transforms.json; 409 until the job is done."""
    filename = f"{job.id[:8]}-{name.value}"
    if name is JobDownloadName.npz:
        return FileResponse(service.jobs.result_file(job), media_type="application/octet-stream", filename=filename)
    data = await service.jobs.result_bytes(job, name.value)
    return Response(
        data,
        media_type=MEDIA_TYPES[ExportKind(name.value)],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


health = APIRouter(tags=["health"])


@health.get("/healthz")
async def healthz():
    """The process answers."""
    return {"status": "ok"}


@health.get("/readyz", responses={503: {"model": ErrorBody}})
async def readyz(request: Request):
    """Ready when the model is loaded and the worker alive."""
    service: Service = request.app.state.service
    if not service.ready:
        return JSONResponse(
            {"code": "not_ready", "detail": service.load_error or "the model is still loading"}, status_code=503
        )
    return {
        "status": "ready",
        "model": service.worker.model_info().model_dump(),
        "sessions": len(service.manager.sessions),
        "jobs": len(service.jobs.jobs),
        "worker_id": service.settings.worker_id,
    }


@health.get("/metrics")
async def metrics(request: Request):
    """Prometheus metrics."""
    return Response(request.app.state.service.metrics.render(), media_type="text/plain; version=0.0.4")


# --------------------------------------------------------------------------------------------- body size limit


class BodyTooLarge(Exception):
    pass


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class BodySizeLimit:
    """Pure ASGI middleware: a request body above ``max_bytes`` gets a 413 ErrorBody, from its Content-Length
    before anything is read, or as soon as a streamed (chunked) body passes the limit, so no large body is ever
    buffered or parsed on the event loop. ``exempt`` requests (job uploads) enforce their own streaming limits."""

    def __init__(self, app: ASGIApp, max_bytes: int, exempt: tuple[tuple[str, str], ...] = ()):
        self.app, self.max_bytes, self.exempt = app, max_bytes, exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"].rstrip("/")) in self.exempt:
            return await self.app(scope, receive, send)
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            return await self._refuse(scope, receive, send)
        received, started = 0, False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge()
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        # the rest of the body is not read: close the connection rather than drain it
        body = ErrorBody(
            code="body_too_large", detail=f"request bodies are limited to {self.max_bytes} bytes (max_json_body_bytes)"
        )
        await JSONResponse(body.model_dump(), status_code=413, headers={"Connection": "close"})(scope, receive, send)


# --------------------------------------------------------------------------------------------- factory


def create_app(
    settings: ServeSettings | None = None, engine: Engine | None = None, weights: LoadedWeights | None = None
) -> FastAPI:
    """The service app. Pass ``engine`` (and ``weights``) to reuse a model already built (tests, benchmarks)."""
    settings = settings or ServeSettings()
    service = Service(settings, engine, weights)
    redact_tokens_in_logs()  # old clients still put ?token= in URLs, which uvicorn logs

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        yield
        await service.stop()

    app = FastAPI(
        title="Spann3R streaming service",
        version=str(PROTOCOL_VERSION),
        lifespan=lifespan,
        description="Real-time incremental 3D reconstruction. WebSocket protocol: docs/protocol.md.",
    )
    app.state.service = service

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse({"code": exc.code, "detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        # the documented ErrorBody, quoting at most short prefixes of the request (FastAPI's default echoes it all)
        return JSONResponse({"code": "invalid_request", "detail": errors_summary(exc.errors())}, status_code=422)

    @app.exception_handler(NotReady)
    async def _not_ready(request: Request, exc: NotReady):
        return JSONResponse({"code": "not_ready", "detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(UploadRefused)
    async def _refused(request: Request, exc: UploadRefused):
        # the rest of a refused body is not read: close the connection rather than drain it
        return JSONResponse(
            {"code": exc.code, "detail": exc.message}, status_code=exc.status, headers={"Connection": "close"}
        )

    @app.exception_handler(JobNotReady)
    async def _job_not_ready(request: Request, exc: JobNotReady):
        return JSONResponse({"code": "not_ready", "detail": str(exc)}, status_code=409)

    @app.exception_handler(ExportUnavailable)
    async def _export_unavailable(request: Request, exc: ExportUnavailable):
        return JSONResponse({"code": "export_unavailable", "detail": str(exc)}, status_code=501)

    @app.exception_handler(CapacityError)
    async def _capacity(request: Request, exc: CapacityError):
        # when the first abandoned session is released (or a default when none is due)
        return JSONResponse(
            {"code": "capacity", "detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after_s)}
        )

    add_body_limit_and_cors(app, settings)
    app.include_router(api)
    app.include_router(jobs_api)
    app.include_router(health)
    mount_page(app, settings)
    return app


def add_body_limit_and_cors(app: FastAPI, settings: ServeSettings) -> None:
    """The request-body limit (job uploads enforce their own) and CORS, for every spann3r HTTP app."""
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_json_body_bytes, exempt=(("POST", "/v1/jobs"),))
    if settings.cors_origins:  # added last, so outermost: refusals (413) carry the CORS headers too
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"], allow_headers=["*"]
        )


def mount_page(app: FastAPI, settings: ServeSettings) -> None:
    """The browser client at / (after every other route: the mount catches what they do not), or a page saying
    how to build it."""
    static = settings.static_dir or PAGE_DIR
    if (static / "index.html").is_file():
        app.mount("/", StaticFiles(directory=static, html=True), name="client")
    else:

        @app.get("/", response_class=HTMLResponse, include_in_schema=False)
        async def no_client():
            return NO_CLIENT_PAGE


def uvicorn_config(app, settings: ServeSettings, **overrides) -> uvicorn.Config:
    """How every spann3r HTTP server runs under uvicorn (single process, cluster worker, gateway)."""
    options: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        # the app refuses messages above max_message_bytes with an error; far larger ones are cut off here
        ws_max_size=2 * settings.max_message_bytes,
        ws="websockets-sansio",
        timeout_graceful_shutdown=30,
        proxy_headers=True,
    )
    return uvicorn.Config(app, **(options | overrides))

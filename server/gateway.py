"""The cluster's ingress: the same API and page as a single ``spann3r serve``, in front of the worker actors of
cluster.py. Run as many gateways as you like behind any load balancer: they share nothing but Ray and the store.

Routing (the session directory is the store's owner records, store.py):
- ``POST /v1/sessions`` and ``POST /v1/jobs`` go to the live worker with the most free slots (503 ``capacity``
  with Retry-After when every worker is full);
- everything under ``/v1/sessions/{id}`` goes to the session's owner: HTTP is proxied, the WebSocket relayed byte
  for byte (the worker decodes, runs and encodes; the gateway never parses a frame or a result). A session whose
  owner is dead and not yet moved gets 503 (try again shortly); its WebSocket is held up to ``MOVE_WAIT_S`` for
  the move, then closed 1013; an unknown session gets 404 / close 4404;
- ``/v1/jobs/{id}`` goes to the worker that holds the job (jobs are not moved on failover: a dead worker's jobs
  are gone, as after a restart of a single process);
- ``/healthz``, ``/readyz``, ``/metrics``, ``/v1/cluster`` and the page are the gateway's own.

When a relayed WebSocket drops without a close frame (its worker died), the client's connection is closed with
1012 (service restart): clients reconnect, and once the session has moved they reach its new owner, whose hello
says where the stream resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.background import BackgroundTask
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from .app import add_body_limit_and_cors, mount_page, redact_tokens_in_logs
from .cluster import FailoverReport, WorkerPool, WorkerView
from .protocol import CLOSE_NOT_FOUND, CLOSE_SHUTDOWN, CLOSE_TRY_LATER, PROTOCOL_VERSION
from .settings import ServeSettings
from .store import SESSION_ID, SessionStore

log = logging.getLogger(__name__)

# hop-by-hop headers (RFC 9110 7.6.1) and those the proxy sets itself
HOP_HEADERS = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
               "transfer-encoding", "upgrade", "content-length"}  # fmt: skip
RETRY_AFTER_FAILOVER_S = 1
MOVE_WAIT_S = 5.0  # a stream connection to a moving session is held this long for its new owner (then 1013)
JOB_ID_CHARS = set("0123456789abcdef")


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.workers_live = Gauge("spann3r_gateway_workers_live", "worker actors answering", registry=r)
        self.requests = Counter("spann3r_gateway_requests", "HTTP requests proxied", ["status"], registry=r)
        self.relayed = Counter("spann3r_gateway_messages", "WebSocket messages relayed", ["direction"], registry=r)
        self.relayed_bytes = Counter(
            "spann3r_gateway_message_bytes", "WebSocket bytes relayed", ["direction"], registry=r
        )
        self.broken_relays = Counter(
            "spann3r_gateway_broken_relays", "relays whose worker went away without a close", registry=r
        )
        self.failovers = Counter("spann3r_gateway_failovers", "sweeps that moved orphaned sessions", registry=r)
        self.sessions_moved = Counter("spann3r_gateway_sessions_moved", "sessions moved by failovers", registry=r)
        self.failover_seconds = Histogram(
            "spann3r_gateway_failover_seconds", "moving a dead worker's sessions", registry=r
        )

    def failover(self, report: FailoverReport) -> None:
        self.failovers.inc()
        self.sessions_moved.inc(len(report.adopted))
        self.failover_seconds.observe(report.seconds)


def _error(status: int, code: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "detail": detail}, status_code=status, headers=headers)


def _forward_headers(headers, client_host: str | None, scheme: str) -> dict[str, str]:
    out = {k: v for k, v in headers.items() if k.lower() not in HOP_HEADERS}
    forwarded_for = ", ".join(x for x in (headers.get("x-forwarded-for"), client_host) if x)
    if forwarded_for:
        out["x-forwarded-for"] = forwarded_for
    out["x-forwarded-proto"] = headers.get("x-forwarded-proto", scheme)
    return out


class Gateway:
    """The mechanism behind the routes: finding the worker of a request and moving bytes to it."""

    def __init__(self, settings: ServeSettings, store: SessionStore, pool: WorkerPool):
        self.settings, self.store, self.pool = settings, store, pool
        self.metrics = GatewayMetrics()
        pool.on_failover = self.metrics.failover
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0))
        self._tasks: set[asyncio.Task] = set()

    def _suspect(self, worker_id: str | None) -> None:
        """Have the pool ask the worker now (a relay or request to it failed)."""
        if worker_id is None:
            return
        task = asyncio.ensure_future(self.pool.suspect(worker_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ routing
    async def owner_of(self, session_id: str) -> tuple[WorkerView | None, str | None]:
        """The live worker of a session, or why there is none: "not_found" or "moving"."""
        if not SESSION_ID.fullmatch(session_id):
            return None, "not_found"
        owner = await asyncio.to_thread(self.store.owner, session_id)
        if owner is None:
            return None, "not_found"
        w = self.pool.route(owner)
        return (w, None) if w is not None else (None, "moving")

    async def owner_after_move(self, session_id: str, wait_s: float) -> tuple[WorkerView | None, str | None]:
        """``owner_of``, but a session that is moving is waited for (each refresh of the pool may have moved it)
        for up to ``wait_s``: a client reconnecting after its worker died gets its new owner on that one
        connection, instead of retrying with a growing backoff."""
        deadline = time.monotonic() + wait_s
        while True:
            w, why = await self.owner_of(session_id)
            left = deadline - time.monotonic()
            if why != "moving" or left <= 0:
                return w, why
            await self.pool.next_refresh(left)

    # ------------------------------------------------------------------ HTTP
    async def proxy(self, request: Request, w: WorkerView) -> Response:
        assert w.url is not None
        url = httpx.URL(w.url + request.url.path, query=request.url.query.encode())
        headers = _forward_headers(request.headers, request.client.host if request.client else None, request.url.scheme)
        upstream = self.http.build_request(request.method, url, headers=headers, content=request.stream())
        try:
            r = await self.http.send(upstream, stream=True)
        except httpx.TransportError as exc:
            self._suspect(w.worker_id)
            log.warning("worker %s unreachable: %s", w.worker_id, exc)
            return _error(503, "not_ready", "the worker is unreachable; retry", {"Retry-After": "1"})
        self.metrics.requests.labels(str(r.status_code)).inc()
        out_headers = {k: v for k, v in r.headers.items() if k.lower() not in HOP_HEADERS}
        return StreamingResponse(
            r.aiter_raw(), status_code=r.status_code, headers=out_headers, background=BackgroundTask(r.aclose)
        )

    async def create(self, request: Request) -> Response:
        """A new session or job: on the worker with the most room (the body is read once, it is small or a job
        upload that only the chosen worker reads)."""
        await self.pool.refresh()
        w = self.pool.reserve()
        if w is None:
            if not any(v.live for v in self.pool.workers.values()):
                return _error(503, "not_ready", "no worker is up yet", {"Retry-After": "5"})
            return _error(
                503, "capacity", "every worker holds its maximum of sessions; retry later", {"Retry-After": "30"}
            )
        created = False
        try:
            response = await self.proxy(request, w)
            created = request.url.path == "/v1/sessions" and response.status_code < 300
            return response
        finally:
            self.pool.placed(w, created)

    async def find_job(self, job_id: str) -> WorkerView | None:
        """Jobs are not in the directory: the worker that knows the job. Asked without the job's token, that
        worker answers 401 and every other one 404."""
        if not (len(job_id) == 32 and set(job_id) <= JOB_ID_CHARS):
            return None
        for w in [v for v in self.pool.workers.values() if v.live and v.ready and v.url]:
            assert w.url is not None
            try:
                r = await self.http.get(f"{w.url}/v1/jobs/{job_id}")
            except httpx.TransportError:
                continue
            if r.status_code != 404:
                return w
        return None

    # ------------------------------------------------------------------ WebSocket
    async def relay(self, ws: WebSocket, w: WorkerView, session_id: str) -> None:
        """The session's WebSocket, byte for byte, to its worker; the worker's close code back to the client."""
        assert w.url is not None
        target = w.url.replace("http://", "ws://", 1) + f"/v1/sessions/{session_id}/ws"
        if ws.url.query:
            target += "?" + ws.url.query  # legacy ?token= (never logged, see auth.redact_tokens_in_logs)
        offered = [Subprotocol(p) for p in ws.scope.get("subprotocols", [])]
        headers = {
            k: v
            for k, v in _forward_headers(ws.headers, ws.client.host if ws.client else None, ws.url.scheme).items()
            if k.lower() in ("authorization", "x-forwarded-for", "x-forwarded-proto", "user-agent")
        }
        try:
            upstream = await connect(
                target,
                subprotocols=offered,
                additional_headers=headers,
                max_size=None,  # the worker enforces max_message_bytes on what it receives
                max_queue=None,
                compression=None,
                open_timeout=5,
                ping_interval=None,  # liveness is Ray's to tell (the pool polls)
            )
        except (OSError, InvalidStatus, TimeoutError) as exc:
            self._suspect(w.worker_id)
            log.warning("relay to %s failed: %s", w.worker_id, exc)
            await ws.accept()
            return await ws.close(CLOSE_TRY_LATER, "the session's worker is unreachable; retry")
        await ws.accept(subprotocol=upstream.subprotocol)
        async with upstream:
            to_worker = asyncio.create_task(self._client_to_worker(ws, upstream))
            code, reason = await self._worker_to_client(ws, upstream)
            to_worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await to_worker
        if code is None:  # no close frame: the worker died under the connection
            self.metrics.broken_relays.inc()
            self._suspect(w.worker_id)
            code, reason = CLOSE_SHUTDOWN, "the session's worker went away; reconnect to resume"
        with contextlib.suppress(Exception):
            await ws.close(code, reason)

    async def _client_to_worker(self, ws: WebSocket, upstream: ClientConnection) -> None:
        try:
            while True:
                m = await ws.receive()
                if m["type"] == "websocket.disconnect":
                    await upstream.close(m.get("code", 1000))
                    return
                data = m.get("bytes")
                payload = data if data is not None else m.get("text", "")
                self.metrics.relayed.labels("in").inc()
                self.metrics.relayed_bytes.labels("in").inc(len(payload))
                await upstream.send(payload)
        except (WebSocketDisconnect, ConnectionClosed):
            await upstream.close()

    async def _worker_to_client(self, ws: WebSocket, upstream: ClientConnection) -> tuple[int | None, str]:
        try:
            async for data in upstream:
                self.metrics.relayed.labels("out").inc()
                self.metrics.relayed_bytes.labels("out").inc(len(data))
                if isinstance(data, bytes):
                    await ws.send_bytes(data)
                else:
                    await ws.send_text(data)
        except ConnectionClosed:
            pass
        except (WebSocketDisconnect, RuntimeError):  # the client left first
            return 1000, ""
        rcvd = upstream.protocol.close_rcvd
        return (rcvd.code, rcvd.reason) if rcvd is not None else (None, "")


def create_gateway(settings: ServeSettings, store: SessionStore, pool: WorkerPool) -> FastAPI:
    """The ingress app. ``pool`` discovers the workers (cluster.start_workers starts them)."""
    gateway = Gateway(settings, store, pool)
    redact_tokens_in_logs()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await pool.start()
        yield
        await pool.stop()
        await gateway.http.aclose()

    app = FastAPI(
        title="Spann3R streaming service (cluster ingress)",
        version=str(PROTOCOL_VERSION),
        lifespan=lifespan,
        description="The API of docs/protocol.md, routed to the cluster's workers (docs/cluster.md).",
    )
    app.state.gateway = gateway

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        live = [w for w in pool.workers.values() if w.live and w.ready]
        if not live:
            return _error(503, "not_ready", "no worker is up yet")
        return {"status": "ready", "workers": len(live), "sessions": sum(w.sessions for w in live)}

    @app.get("/metrics")
    async def metrics():
        gateway.metrics.workers_live.set(sum(w.live for w in pool.workers.values()))
        return Response(generate_latest(gateway.metrics.registry), media_type="text/plain; version=0.0.4")

    @app.get("/v1/cluster")
    async def cluster():
        """The workers this gateway sees (no secrets: ids, liveness, load)."""
        return {
            "workers": [
                {
                    "name": w.name,
                    "worker_id": w.worker_id,
                    "live": w.live,
                    "ready": w.ready,
                    "sessions": w.sessions,
                    "max_sessions": w.max_sessions,
                }
                for w in sorted(pool.workers.values(), key=lambda v: v.name)
            ],
            "failovers": len(pool.failovers),
        }

    @app.post("/v1/sessions")
    @app.post("/v1/jobs")
    async def create(request: Request):
        return await gateway.create(request)

    @app.api_route("/v1/sessions/{session_id}", methods=["GET", "DELETE"])
    @app.api_route("/v1/sessions/{session_id}/{rest:path}", methods=["GET", "POST", "DELETE"])
    async def session_route(request: Request, session_id: str):
        w, why = await gateway.owner_of(session_id)
        if w is None:
            if why == "moving":
                return _error(
                    503,
                    "not_ready",
                    "the session is moving to another worker; retry",
                    {"Retry-After": str(RETRY_AFTER_FAILOVER_S)},
                )
            return _error(404, "not_found", "no such session (never created, deleted, or evicted)")
        return await gateway.proxy(request, w)

    @app.api_route("/v1/jobs/{job_id}", methods=["GET", "DELETE"])
    @app.api_route("/v1/jobs/{job_id}/{rest:path}", methods=["GET"])
    async def job_route(request: Request, job_id: str):
        w = await gateway.find_job(job_id)
        if w is None:
            return _error(404, "not_found", "no such job (never created, deleted, or expired)")
        return await gateway.proxy(request, w)

    @app.websocket("/v1/sessions/{session_id}/ws")
    async def stream(ws: WebSocket, session_id: str):
        w, why = await gateway.owner_after_move(session_id, MOVE_WAIT_S)
        if w is None:
            await ws.accept()  # then the close code is seen (as the single-process server does)
            if why == "moving":
                return await ws.close(CLOSE_TRY_LATER, "the session is moving to another worker; reconnect")
            return await ws.close(CLOSE_NOT_FOUND, "no such session")
        await gateway.relay(ws, w, session_id)

    add_body_limit_and_cors(app, settings)
    mount_page(app, settings)
    return app

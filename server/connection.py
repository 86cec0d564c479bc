"""One WebSocket connection: an outbound queue with its writer task, and the dispatch of incoming messages.

Incoming bytes are validated against ``protocol``; frames and controls go to the worker, everything else is
answered here. A bad message costs its sender an error message (and, for protocol violations, one strike
towards ``max_protocol_errors``); it never touches the session's stream or any other session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket

from .backfill import send_backfill
from .protocol import (
    CLOSE_PROTOCOL_VIOLATION,
    CLOSE_REPLACED,
    AckMsg,
    ControlMsg,
    ErrorMsg,
    FrameMsg,
    HelloMsg,
    Limits,
    PingMsg,
    PongMsg,
    ProtocolError,
    decode_client_message,
    pack,
)

if TYPE_CHECKING:
    from prometheus_client import Histogram

    from .service import Service
    from .sessions import Session

log = logging.getLogger(__name__)

SEND_QUEUE = 64  # messages buffered per connection; a watcher that falls further behind misses results


class Connection:
    def __init__(self, ws: WebSocket, role: str, send_seconds: Histogram | None = None):
        self.ws, self.role = ws, role
        self.send_seconds = send_seconds  # the "send" stage of the metrics
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(SEND_QUEUE)
        self.closed = False
        self.violations = 0
        self.skipped = 0
        self.bytes_sent = 0
        self._empty = asyncio.Event()  # set whenever the writer has sent everything queued
        self._empty.set()
        self._writer = asyncio.create_task(self._write())

    async def _write(self) -> None:
        while (data := await self.queue.get()) is not None:
            try:
                t0 = time.perf_counter()
                await self.ws.send_bytes(data)
                if self.send_seconds is not None:
                    self.send_seconds.observe(time.perf_counter() - t0)
                self.bytes_sent += len(data)
            except Exception:  # the peer went away; the receive loop notices too
                self.closed = True
                self._empty.set()
                return
            if self.queue.empty():
                self._empty.set()
        self._empty.set()  # closing: nobody waits for a queue that will never be sent

    async def send(self, data: bytes) -> None:
        """Queue a message; waits while the queue is full (back-pressure on this session only)."""
        if not self.closed:
            self._empty.clear()
            await self.queue.put(data)

    def send_nowait(self, data: bytes) -> None:
        """Queue a message unless the queue is full (watchers: a slow viewer must not slow the stream)."""
        if self.closed:
            return
        try:
            self.queue.put_nowait(data)
            self._empty.clear()
        except asyncio.QueueFull:
            self.skipped += 1

    async def drained(self) -> None:
        """Wait until everything queued so far has been sent (or the connection closed)."""
        while not self.closed and not self.queue.empty():
            self._empty.clear()
            await self._empty.wait()

    async def close(self, code: int, reason: str) -> None:
        """Flush what is queued (briefly), then close with ``code``."""
        if self.closed:
            return
        self.closed = True
        try:
            self.queue.put_nowait(None)
            await asyncio.wait_for(asyncio.shield(self._writer), 2.0)
        except (asyncio.QueueFull, TimeoutError):
            self._writer.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason)

    async def stop(self) -> None:
        self.closed = True
        self._empty.set()
        self._writer.cancel()


async def serve_connection(ws: WebSocket, session: Session, role: str, service: Service) -> None:
    """Attach an accepted WebSocket to a session and serve it until it closes."""
    settings, worker = service.settings, service.worker
    assert worker is not None  # the route serves connections only once the service is ready
    conn = Connection(ws, role, service.metrics.send_seconds)
    replay: list[bytes] = []
    if role == "stream":
        replay = list(session.recent)  # what a replaced connection may not have delivered (sessions.REPLAY_RESULTS)
        old = session.attach_stream_conn(conn)
        if old is not None:
            await old.close(CLOSE_REPLACED, "replaced by a newer connection to this session")
    else:
        session.watchers.add(conn)
    await conn.send(
        pack(
            HelloMsg(
                session_id=session.id,
                role=role,
                worker_id=settings.worker_id,
                model=worker.model_info(),
                limits=Limits(
                    max_message_bytes=settings.max_message_bytes,
                    max_pixels=settings.max_pixels,
                    max_fps=settings.max_fps,
                    max_protocol_errors=settings.max_protocol_errors,
                    idle_timeout_s=settings.idle_timeout_s,
                    max_batch=settings.max_batch,
                ),
                settings=session.settings,
                frames_processed=session.frames_processed,
                last_seq=session.last_seq,
                finished=session.finished,
                resume=session.resume_info(),
            )
        )
    )
    for result in replay:
        await conn.send(result)
    # a watcher joining a running session first gets the scene so far, alongside the live results
    backfill = asyncio.create_task(send_backfill(conn, session)) if role == "watch" else None
    if backfill is not None:
        backfill.add_done_callback(_log_failure)
    try:
        while not conn.closed:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes")
            if data is None:
                await _violation(
                    conn,
                    service,
                    ProtocolError("malformed", "text messages are not accepted; send msgpack in binary messages"),
                )
            else:
                await _dispatch(conn, session, data, service)
            if conn.violations >= settings.max_protocol_errors:
                await conn.close(CLOSE_PROTOCOL_VIOLATION, f"{conn.violations} protocol errors")
    except Exception as exc:  # disconnects surface as various exceptions, depending on timing
        if not conn.closed:
            log.debug("connection to session %s ended: %r", session.id, exc)
    finally:
        session.detach_stream_conn(conn)  # an orphan from now on: released after orphan_grace_s
        session.watchers.discard(conn)
        if backfill is not None:
            backfill.cancel()
        await conn.stop()


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("sending a backfill failed", exc_info=task.exception())


async def _violation(conn: Connection, service: Service, err: ProtocolError) -> None:
    conn.violations += 1
    service.metrics.protocol_errors.labels(err.code).inc()
    await conn.send(pack(ErrorMsg(code=err.code, message=err.message, seq=err.seq)))


async def _dispatch(conn: Connection, session: Session, data: bytes, service: Service) -> None:
    worker, manager = service.worker, service.manager
    assert worker is not None and manager is not None  # connections exist only once the service is ready
    try:
        t0 = time.perf_counter()
        msg = decode_client_message(data, service.settings.max_message_bytes)
        service.metrics.protocol_seconds.observe(time.perf_counter() - t0)
    except ProtocolError as err:
        return await _violation(conn, service, err)
    except Exception:  # a decoder bug costs the sender an error reply, never a silent drop of the connection
        log.exception("decoding a message of session %s failed", session.id)
        return await _violation(conn, service, ProtocolError("internal", "the message could not be decoded"))
    if isinstance(msg, PingMsg):
        if conn.role == "stream":
            session.touch()
        return await conn.send(pack(PongMsg(id=msg.id, ts=msg.ts, server_ts=time.time())))
    if conn.role != "stream":
        return await _violation(
            conn,
            service,
            ProtocolError(
                "read_only",
                "this is a watch-only connection: it cannot send frames or controls",
                getattr(msg, "seq", None),
            ),
        )
    session.touch()
    if isinstance(msg, FrameMsg):
        await worker.accept_frame(session, msg)
        return
    assert isinstance(msg, ControlMsg)
    if msg.action == "finish":
        await worker.request_finish(session)
    elif msg.action == "reset":
        await worker.reset(session)
    elif msg.action == "settings":
        if msg.settings is None:
            return await _violation(
                conn, service, ProtocolError("bad_schema", "control settings: 'settings' is required")
            )
        worker.change_settings(session, msg.settings.apply(session.settings))
    elif msg.action == "snapshot":
        if session.persistence is None:  # no state store (--state-dir / --state-url)
            return await conn.send(
                pack(
                    ErrorMsg(
                        code="snapshot_unavailable",
                        message="the server has no state store (--state-dir or --state-url)",
                    )
                )
            )
        n = await manager.snapshot(session)
        session.send_ordered(pack(AckMsg(action="snapshot", settings=session.settings, snapshot_bytes=n)))

"""Async client of the streaming service: REST session management + the WebSocket stream.

Low level: ``StreamClient`` (create a session, connect, send frames and controls, iterate messages).
High level: ``stream(url, frames, ...)``, an async iterator of the server's messages for a whole sequence, with
flow control (at most ``window`` unanswered frames) and pacing, which a robot program can consume directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import cv2
import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from ..server.protocol import (
    CLOSE_DELETED,
    CLOSE_IDLE,
    CLOSE_NOT_FOUND,
    CLOSE_REPLACED,
    CLOSE_UNAUTHORIZED,
    MAX_SERVER_MESSAGE_BYTES,
    SUBPROTOCOL,
    TOKEN_SUBPROTOCOL_PREFIX,
    ControlAction,
    ControlMsg,
    DroppedMsg,
    ErrorMsg,
    FinishedMsg,
    FrameMsg,
    HelloMsg,
    PingMsg,
    ResultMsg,
    SessionCreated,
    SessionSettings,
    SessionSettingsPatch,
    SessionStats,
    decode_server_message,
    pack,
)

IMAGE_ENCODINGS = ("jpeg", "png", "webp", "rgb8")


class ServiceError(RuntimeError):
    """The service refused a request (REST error body or a WebSocket close)."""

    def __init__(self, message: str, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.code, self.status = code, status


def encode_image(rgb: np.ndarray, encoding: str = "jpeg", quality: int = 90) -> dict:
    """RGB uint8 [H, W, 3] → the image fields of a frame message."""
    if encoding == "rgb8":
        h, w = rgb.shape[:2]
        return {"format": "rgb8", "data": np.ascontiguousarray(rgb, np.uint8).tobytes(), "width": w, "height": h}
    ext, params = {
        "jpeg": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality]),
        "png": (".png", []),
        "webp": (".webp", [cv2.IMWRITE_WEBP_QUALITY, quality]),
    }[encoding]
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"cannot encode a {rgb.shape} image as {encoding}")
    return {"format": encoding, "data": buf.tobytes()}


class StreamClient:
    # the largest message the server can send (full float32 final + preview); a larger one is an error
    max_message_bytes = MAX_SERVER_MESSAGE_BYTES

    def __init__(self, url: str, api_key: str | None = None, verify_tls: bool = True, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.verify_tls = verify_tls
        self.http = httpx.AsyncClient(base_url=self.url, verify=verify_tls, timeout=timeout)
        self.session: SessionCreated | None = None
        self.token: str | None = None
        self.hello: HelloMsg | None = None
        self.ws: ClientConnection | None = None
        self.names: dict[int, str] = {}  # seq → frame name, filled by ``stream``
        self._seq = -1

    def _created(self) -> SessionCreated:
        if self.session is None:
            raise ServiceError("no session yet: call create_session() or attach() first")
        return self.session

    def _socket(self) -> ClientConnection:
        if self.ws is None:
            raise ServiceError("not connected: call connect() first")
        return self.ws

    async def __aenter__(self) -> StreamClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # ------------------------------------------------------------------ REST
    async def _check(self, r: httpx.Response) -> httpx.Response:
        if r.status_code >= 400:
            try:
                body = r.json()
                code, detail = body.get("code"), body.get("detail")
            except Exception:
                code, detail = None, r.text[:200]
            raise ServiceError(
                f"{r.request.method} {r.request.url.path}: {r.status_code} {code}: {detail}", code, r.status_code
            )
        return r

    def _auth(self, token: str | None = None) -> dict:
        return {"Authorization": f"Bearer {token or self.token}"}

    async def create_session(self, settings: SessionSettings | dict | None = None) -> SessionCreated:
        body = settings.model_dump() if isinstance(settings, SessionSettings) else settings
        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        r = await self._check(await self.http.post("/v1/sessions", json=body, headers=headers))
        self.session = SessionCreated.model_validate(r.json())
        self.token = self.session.token
        return self.session

    def attach(self, session_id: str, token: str, stream_url: str | None = None) -> None:
        """Use an existing session (reconnect, or watch with its watch token)."""
        ws_base = self.url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        self.session = SessionCreated.model_construct(
            id=session_id,
            token=token,
            watch_token="",
            stream_url=stream_url or f"{ws_base}/v1/sessions/{session_id}/ws",
            worker_id="",
            settings=None,  # type: ignore[arg-type]  # not known when attaching to an existing session
        )
        self.token = token

    async def use_server(self, url: str) -> None:
        """Reach the service at another address from now on (another ingress of a cluster): the same session and
        tokens, its WebSocket at the same path there."""
        await self.http.aclose()
        self.url = url.rstrip("/")
        self.http = httpx.AsyncClient(base_url=self.url, verify=self.verify_tls, timeout=self.http.timeout)
        if self.session is not None:
            ws_base = self.url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
            path = urlsplit(self.session.stream_url).path
            self.session = self.session.model_copy(update={"stream_url": ws_base + path})

    async def stats(self) -> SessionStats:
        r = await self._check(await self.http.get(f"/v1/sessions/{self._created().id}", headers=self._auth()))
        return SessionStats.model_validate(r.json())

    async def export(self, kind: str) -> bytes:
        """kind: cloud.ply | cloud.glb | trajectory.json | transforms.json"""
        r = await self._check(
            await self.http.get(f"/v1/sessions/{self._created().id}/export/{kind}", headers=self._auth())
        )
        return r.content

    async def snapshot(self) -> dict:
        r = await self._check(await self.http.post(f"/v1/sessions/{self._created().id}/snapshot", headers=self._auth()))
        return r.json()

    async def delete(self) -> None:
        await self._check(await self.http.delete(f"/v1/sessions/{self._created().id}", headers=self._auth()))

    # ------------------------------------------------------------------ WebSocket
    async def connect(self, token: str | None = None) -> HelloMsg:
        """Open the session's WebSocket (stream token by default, or a watch token) and read its hello. The token
        travels as the subprotocol ``spann3r.token.TOKEN``, never in the URL (URLs end up in logs)."""
        uri = self._created().stream_url
        presented = token or self.token
        # no token: offer none, and the server answers 4401 like for a wrong one
        credentials = [Subprotocol(TOKEN_SUBPROTOCOL_PREFIX + presented)] if presented else []
        ctx = None
        if uri.startswith("wss://") and not self.verify_tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        # no permessage-deflate: pointmaps hardly compress and deflate costs CPU on both ends
        # max_queue=None: keep reading while the caller is busy sending, so neither side can stall the other
        try:
            self.ws = await connect(
                uri,
                max_size=self.max_message_bytes,
                max_queue=None,
                compression=None,
                ssl=ctx,
                subprotocols=[Subprotocol(SUBPROTOCOL), *credentials],
            )
        except InvalidStatus as exc:  # refused before the WebSocket opened (no such route)
            status = exc.response.status_code
            raise ServiceError(f"WebSocket refused: HTTP {status}", code=f"http {status}", status=status) from None
        msg = await self.receive()
        if not isinstance(msg, HelloMsg):
            raise ServiceError(f"expected hello, got {msg.type}")
        self.hello = msg
        if msg.last_seq is not None:
            self._seq = max(self._seq, msg.last_seq)
        return msg

    async def receive(self):
        """Next server message (pydantic); raises ``ServiceError`` when the server closed the connection."""
        try:
            data = await self._socket().recv()
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            raise ServiceError(
                f"connection closed: {rcvd.code if rcvd else '-'} {rcvd.reason if rcvd else ''}",
                code=str(rcvd.code) if rcvd else None,
            ) from None
        if isinstance(data, str):
            raise ServiceError("unexpected text message from the server")
        return decode_server_message(data)

    async def messages(self) -> AsyncIterator[Any]:
        """Every server message until the connection closes."""
        while True:
            try:
                yield await self.receive()
            except ServiceError:
                return

    async def send_raw(self, data: bytes | str) -> None:
        await self._socket().send(data)

    async def send_frame(
        self,
        image: np.ndarray | bytes,
        encoding: str = "jpeg",
        seq: int | None = None,
        ts: float | None = None,
        quality: int = 90,
        width: int | None = None,
        height: int | None = None,
    ) -> int:
        """Send an RGB image (encoded here as ``encoding``) or already-encoded bytes; returns its seq."""
        if isinstance(image, np.ndarray):
            fields = await asyncio.to_thread(encode_image, image, encoding, quality)
        else:
            fields = {"format": encoding, "data": image, "width": width, "height": height}
        self._seq = seq if seq is not None else self._seq + 1
        await self._socket().send(pack(FrameMsg(seq=self._seq, ts=time.time() if ts is None else ts, **fields)))
        return self._seq

    async def control(self, action: ControlAction, **settings) -> None:
        patch = SessionSettingsPatch(**settings) if action == "settings" else None
        await self._socket().send(pack(ControlMsg(action=action, settings=patch)))

    async def finish(self) -> None:
        await self.control("finish")

    async def reset(self) -> None:
        await self.control("reset")

    async def ping(self, id: int = 0) -> None:
        await self._socket().send(pack(PingMsg(id=id, ts=time.time())))

    async def disconnect(self) -> None:
        if self.ws is not None:
            ws, self.ws = self.ws, None
            with contextlib.suppress(ConnectionClosed):  # the server may have closed it already (e.g. 1009)
                await ws.close()

    async def close(self) -> None:
        await self.disconnect()
        await self.http.aclose()


def _answers_frame(msg, names: dict) -> bool:
    """Every frame gets exactly one of these: its result, a drop notice, or an error naming its seq."""
    # a reconnect first gets the latest results again (of frames sent before it): those answer nothing here
    return isinstance(msg, (ResultMsg, DroppedMsg, ErrorMsg)) and msg.seq in names


async def _aiter(frames: Iterable | AsyncIterable) -> AsyncIterator:
    if hasattr(frames, "__aiter__"):
        async for f in frames:
            yield f
        return
    it = iter(frames)
    sentinel = object()
    while (f := await asyncio.to_thread(next, it, sentinel)) is not sentinel:  # sources block (cameras, files)
        yield f


async def stream(
    url: str,
    frames: Iterable | AsyncIterable,
    *,
    settings: SessionSettings | dict | None = None,
    encoding: str = "jpeg",
    quality: int = 90,
    window: int = 4,
    rate: float | None = None,
    api_key: str | None = None,
    verify_tls: bool = True,
    finish: bool = True,
    client: StreamClient | None = None,
) -> AsyncIterator[Any]:
    """Stream ``(name, RGB uint8)`` frames; yield every server message (``ResultMsg``, ``DroppedMsg``,
    ``ErrorMsg``, ``FinishedMsg``, ...) as it arrives, ``hello`` first. At most ``window`` frames are
    unanswered at once; frames go out at most at ``rate`` fps and never faster than the server's limit.
    After the last frame is answered the stream is finished (unless ``finish=False``); the iteration ends
    with the ``finished`` message. Frame names by seq: ``client.names`` (pass your own ``client``)."""
    own = client is None
    client = client or StreamClient(url, api_key, verify_tls)
    client.names.clear()
    try:
        if client.session is None:
            await client.create_session(settings)
        hello = await client.connect()
        yield hello
        limit = hello.limits.max_fps
        period = 1.0 / min(rate or limit, limit)
        credit = asyncio.Semaphore(window)
        inbox: asyncio.Queue = asyncio.Queue()
        sent_all = asyncio.Event()

        async def send():
            next_at = time.monotonic()
            async for name, rgb in _aiter(frames):
                await credit.acquire()
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at = max(next_at + period, time.monotonic())
                seq = client._seq + 1
                client.names[seq] = name
                await client.send_frame(rgb, encoding, seq=seq, quality=quality)
            sent_all.set()

        async def receive():
            try:
                async for msg in client.messages():
                    if _answers_frame(msg, client.names):
                        credit.release()
                    await inbox.put(msg)
            finally:
                await inbox.put(None)

        sender, receiver = asyncio.create_task(send()), asyncio.create_task(receive())
        try:
            answered, finishing = 0, False
            while True:
                if sent_all.is_set() and answered == len(client.names) and not finishing:
                    if not finish:
                        return
                    finishing = True
                    await client.finish()
                get = asyncio.create_task(inbox.get())
                done, _ = await asyncio.wait(
                    {get} if sender.done() else {get, sender}, return_when=asyncio.FIRST_COMPLETED
                )
                if sender in done and (failure := sender.exception()) is not None:
                    get.cancel()
                    raise failure
                if get not in done:  # the sender is through: re-check whether to finish
                    get.cancel()
                    continue
                msg = get.result()
                if msg is None:
                    return
                yield msg
                if _answers_frame(msg, client.names):
                    answered += 1
                if isinstance(msg, FinishedMsg) or (isinstance(msg, ErrorMsg) and msg.code == "not_finishable"):
                    return
        finally:
            sender.cancel()
            receiver.cancel()
    finally:
        if own:
            await client.close()


# ---------------------------------------------------------------------------------------------- reconnecting
# no such session (any more), not ours, or taken over by another connection: waiting does not help
FATAL_CLOSES = {str(c) for c in (CLOSE_UNAUTHORIZED, CLOSE_NOT_FOUND, CLOSE_IDLE, CLOSE_REPLACED, CLOSE_DELETED)}


@dataclass(frozen=True)
class ResumeGap:
    """Frames a restarted server lost that the source cannot send again (a live source): seqs ``first``..``last``.
    Yielded by ``reconnecting_stream`` in place of their results."""

    first: int
    last: int

    @property
    def seqs(self) -> range:
        return range(self.first, self.last + 1)


class _ResumableSource:
    """The frames of one connection: from the resume point the hello names. A re-sendable source (``resend_from``)
    starts again there; a live one goes on, and the frames it cannot send again are a gap."""

    def __init__(self, frames: Iterable, resend_from: Callable[[int], Iterable] | None):
        self.live = iter(frames)
        self.resend_from = resend_from
        self.sent = 0  # frames of the source sent so far (a frame's seq is its position in the source)
        self.current: Iterator = self.live
        self.exhausted = False

    def resume_at(self, position: int) -> ResumeGap | None:
        gap = None
        if position < self.sent:
            if self.resend_from is not None:
                self.current = iter(self.resend_from(position))
            else:
                gap = ResumeGap(position, self.sent - 1)
                position = self.sent
        self.sent = position
        return gap

    def __iter__(self) -> Iterator:
        for frame in self.current:
            self.sent += 1
            yield frame
        self.exhausted = True


async def reconnecting_stream(
    url: str,
    frames: Iterable,
    *,
    resend_from: Callable[[int], Iterable] | None = None,
    reconnect_timeout: float = 60.0,
    backoff: tuple[float, float] = (0.2, 2.0),
    settings: SessionSettings | dict | None = None,
    encoding: str = "jpeg",
    quality: int = 90,
    window: int = 4,
    rate: float | None = None,
    api_key: str | None = None,
    verify_tls: bool = True,
    client: StreamClient | None = None,
    fallback_urls: Sequence[str] = (),
) -> AsyncIterator[Any]:
    """``stream`` that survives the server going away: it reconnects with exponential backoff (``backoff``: first
    and longest wait, in seconds) for up to ``reconnect_timeout`` seconds each time, trying ``url`` and the
    ``fallback_urls`` (other ingresses of a cluster) in turn, and carries on from where the
    session resumed (the hello's ``last_seq``; a server restarted on its store resumes from its latest persisted
    state). Frame seqs are positions in the source. A file source passes ``resend_from(position)`` (the frames from
    ``position`` on) and is sent again from the resume point, so the results are those of an uninterrupted run; for
    a live source the lost frames are yielded as a ``ResumeGap``. Ends with the ``finished`` message; raises
    ``ServiceError`` when the server does not come back in time or no longer knows the session."""
    own = client is None
    client = client or StreamClient(url, api_key, verify_tls)
    source = _ResumableSource(frames, resend_from)
    names: dict[int, str] = {}  # every connection's ``client.names``: seq → frame name
    answered: set[int] = set()  # seqs whose result was yielded: a reconnect sends the latest results again
    try:
        if client.session is None:
            await client.create_session(settings)
        away_since: float | None = None
        wait = backoff[0]
        while True:
            try:
                client._seq = -1  # the hello's last_seq sets it: the next seq is the resume point
                async for msg in stream(
                    url, source, encoding=encoding, quality=quality, window=window, rate=rate, client=client
                ):
                    if isinstance(msg, HelloMsg):
                        away_since, wait = None, backoff[0]
                        yield msg
                        gap = source.resume_at(0 if msg.last_seq is None else msg.last_seq + 1)
                        client._seq = source.sent - 1  # seqs stay positions in the source, past a gap too
                        if gap is not None:
                            yield gap
                        continue
                    if isinstance(msg, ResultMsg):
                        if msg.seq in answered:
                            continue
                        answered.add(msg.seq)
                    if isinstance(msg, FinishedMsg) or (isinstance(msg, ErrorMsg) and msg.code == "not_finishable"):
                        client.names = names | client.names
                        yield msg
                        return
                    yield msg
                problem = "the connection closed"
            except ServiceError as exc:
                if exc.code in FATAL_CLOSES:
                    raise
                problem = str(exc)
            except (OSError, ConnectionClosed, TimeoutError) as exc:
                problem = f"{exc.__class__.__name__}: {exc}"
            names.update(client.names)
            await client.disconnect()
            now = time.monotonic()
            away_since = away_since or now
            if now - away_since > reconnect_timeout:
                raise ServiceError(
                    f"the server did not come back within {reconnect_timeout:g} s ({problem}); "
                    f"{source.sent} frames were sent, the stream is incomplete",
                    code="unreachable",
                )
            await asyncio.sleep(wait)
            wait = min(wait * 2, backoff[1])
            if fallback_urls:
                servers = [u.rstrip("/") for u in (url, *fallback_urls)]
                at = servers.index(client.url) if client.url in servers else -1
                await client.use_server(servers[(at + 1) % len(servers)])
    finally:
        if own:
            await client.close()

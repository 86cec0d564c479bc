"""WebSocket authentication without tokens in URLs: the token travels as the subprotocol spann3r.token.TOKEN
(offered next to spann3r.v1, which is all the server answers); ?token= still works for old clients, and no token
ever reaches the server's log lines (uvicorn's access log prints URLs)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from service_helpers import live_server, run
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from spann3r.client import StreamClient
from spann3r.server.auth import LOGGERS_WITH_URLS, redact_tokens
from spann3r.server.protocol import (
    CLOSE_UNAUTHORIZED,
    SUBPROTOCOL,
    TOKEN_SUBPROTOCOL_PREFIX,
    HelloMsg,
    decode_server_message,
)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def server_log_lines() -> Iterator[list[str]]:
    """The messages of the loggers that print URLs, as they reach their handlers (after the filters)."""
    handler = Lines()
    loggers = [logging.getLogger(name) for name in LOGGERS_WITH_URLS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


async def first_message_or_close(url: str, subprotocols: list[str]) -> tuple[str | None, object]:
    """The subprotocol the server chose and its first message (or the close code)."""
    async with connect(url, subprotocols=[Subprotocol(p) for p in subprotocols]) as ws:
        try:
            return ws.subprotocol, decode_server_message(await ws.recv())
        except ConnectionClosed as exc:
            return ws.subprotocol, exc.rcvd.code if exc.rcvd else None


def test_the_token_travels_as_a_subprotocol(tiny_engine):
    with live_server(tiny_engine) as srv:
        created = httpx.post(f"{srv.url}/v1/sessions").json()
        url, token, watch = created["stream_url"], created["token"], created["watch_token"]
        assert "token" not in url
        chosen, hello = run(first_message_or_close(url, [SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX + token]))
        assert chosen == SUBPROTOCOL  # the token is never echoed back
        assert isinstance(hello, HelloMsg) and hello.role == "stream"
        _, hello = run(first_message_or_close(url, [SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX + watch]))
        assert isinstance(hello, HelloMsg) and hello.role == "watch"
        _, code = run(first_message_or_close(url, [SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX + "wrong"]))
        assert code == CLOSE_UNAUTHORIZED
        _, code = run(first_message_or_close(url, [SUBPROTOCOL]))
        assert code == CLOSE_UNAUTHORIZED


def test_the_python_client_sends_no_token_in_the_url(tiny_engine):
    async def connect_and_hello(base: str) -> tuple[str, HelloMsg]:
        async with StreamClient(base) as client:
            await client.create_session()
            hello = await client.connect()
            ws = client.ws
            assert ws is not None
            return ws.request.path if ws.request else "", hello

    with live_server(tiny_engine) as srv:
        path, hello = run(connect_and_hello(srv.url))
        assert hello.role == "stream" and "token" not in path


def test_no_token_reaches_the_server_log(tiny_engine):
    with live_server(tiny_engine, log_level="info") as srv, server_log_lines() as lines:
        created = httpx.post(f"{srv.url}/v1/sessions").json()
        sid, token, watch = created["id"], created["token"], created["watch_token"]
        # an old client: the token in the query of the WebSocket, of REST calls, and a watch link to the page
        _, hello = run(first_message_or_close(f"{created['stream_url']}?token={token}", [SUBPROTOCOL]))
        assert isinstance(hello, HelloMsg) and hello.role == "stream"
        assert httpx.get(f"{srv.url}/v1/sessions/{sid}?token={watch}").status_code == 200
        httpx.get(f"{srv.url}/?watch={sid}&token={watch}")
        assert httpx.get(f"{srv.url}/v1/sessions/{sid}?token=not-{token}").status_code == 401
        log = "\n".join(lines)
        assert f"/v1/sessions/{sid}" in log and "token=[redacted]" in log  # the URLs are logged, redacted
        assert token not in log and watch not in log


def test_redact_tokens():
    assert (
        redact_tokens("GET /v1/jobs?session_id=a&session_token=s3cr-t_ HTTP/1.1")
        == "GET /v1/jobs?session_id=a&session_token=[redacted] HTTP/1.1"
    )
    assert (
        redact_tokens('"WebSocket /v1/sessions/x/ws?token=abc" [accepted]')
        == '"WebSocket /v1/sessions/x/ws?token=[redacted]" [accepted]'
    )

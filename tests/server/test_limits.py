"""Limits and strictness at the edges (docs/security.md): REST bodies (size, strict JSON, ErrorBody replies, the
API key checked first), WebSocket messages (nesting, echo, seq range, reset), the close code at shutdown, and
the Python client's message size against the largest result the server sends."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import msgpack
import pytest
from service_helpers import live_server, run

from spann3r.client import StreamClient, stream
from spann3r.server import protocol as P
from spann3r.server.settings import ServeSettings

DOCS = Path(__file__).resolve().parents[2] / "docs"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(tiny_engine):
    with live_server(tiny_engine, max_protocol_errors=1000, max_json_body_bytes=8192) as srv:
        yield srv


def assert_error_body(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert set(body) == {"code", "detail"} and body["code"] == code, body
    assert len(r.content) < 1024  # never an echo of the request
    return body


# --------------------------------------------------------------------------------------------- REST bodies


@pytest.mark.parametrize(
    "raw",
    [
        b'{"conf_thresh": NaN}',
        b'{"compact_scale": Infinity}',
        b'{"compact_scale": -Infinity}',
        b'{"preview": "yes"}',
        b'{"queue_size": "12"}',
        b'{"queue_size": true}',
        b'{"stride": 2.5}',
        b'{"colour": "red"}',
        b"[1, 2, 3]",
        b'{"frame_policy": "' + b"x" * 6000 + b'"}',
        b'{"x' + b"k" * 6000 + b'": 1}',
        b"{",
        b'"' + b"s" * 7000 + b'"',
    ],
)
def test_bad_session_settings_get_a_short_422_error_body(server, raw):
    r = httpx.post(f"{server.url}/v1/sessions", content=raw, headers=JSON)
    assert_error_body(r, 422, "invalid_request")


def test_valid_settings_and_empty_bodies_still_create_sessions(server):
    for raw in (b'{"queue_size": 12, "conf_thresh": 0, "compact_scale": 2}', b"", b"null"):
        r = httpx.post(f"{server.url}/v1/sessions", content=raw, headers=JSON)
        assert r.status_code == 201, r.text
        httpx.delete(f"{server.url}/v1/sessions/{r.json()['id']}", params={"token": r.json()["token"]})
    assert r.json()["settings"]["encoding"] == "compact"


def test_query_validation_errors_are_error_bodies(server):
    r = httpx.post(
        f"{server.url}/v1/jobs",
        params={"conf_thresh": "x" * 5000},
        content=b"zip",
        headers={"Content-Type": "application/zip"},
    )
    assert_error_body(r, 422, "invalid_request")


def test_large_bodies_are_refused_before_they_are_read(server):
    big = b"[" + b"0," * (5 * 2**20) + b"0]"  # 10 MiB JSON array
    r = httpx.post(f"{server.url}/v1/sessions", content=big, headers=JSON, timeout=30)
    assert_error_body(r, 413, "body_too_large")

    def chunks():  # no Content-Length: the limit holds while the body streams in
        for _ in range(200):
            yield b" " * 65536

    r = httpx.post(f"{server.url}/v1/sessions", content=chunks(), headers=JSON, timeout=30)
    assert_error_body(r, 413, "body_too_large")
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_the_api_key_is_checked_before_the_body_is_parsed(tiny_engine):
    with live_server(tiny_engine, api_key="sesame") as srv:
        for raw in (b"{", b'{"preview": "yes"}', b'{"conf_thresh": NaN}'):
            assert_error_body(httpx.post(f"{srv.url}/v1/sessions", content=raw, headers=JSON), 401, "unauthorized")
        r = httpx.post(f"{srv.url}/v1/sessions", content=b'{"preview": "yes"}', headers={**JSON, "X-API-Key": "sesame"})
        assert_error_body(r, 422, "invalid_request")


# --------------------------------------------------------------------------------------------- WebSocket


def _deep(depth: int):
    obj: object = 0
    for _ in range(depth):
        obj = {"k": obj}
    return obj


async def _errors_for(url: str, messages: list[bytes]) -> list[P.ErrorMsg]:
    async with StreamClient(url) as c:
        await c.create_session()
        await c.connect()
        for data in messages:
            await c.send_raw(data)
        await c.ping(1)
        out = []
        while not isinstance(m := await c.receive(), P.PongMsg):
            out.append(m)
        await c.delete()
        return out


def test_deep_nesting_and_huge_values_get_short_documented_errors(server):
    def frame(**kw) -> bytes:
        return msgpack.packb({"type": "frame", "seq": 1, "format": "jpeg", "data": b"", **kw})

    messages = [
        msgpack.packb({"type": _deep(1000)}),
        frame(junk=_deep(900)),
        msgpack.packb({"type": "t" * 2**20}),
        frame(format="f" * 2**20),
        frame(seq=2**64 - 1),
        frame(seq=True),
        frame(ts=float("nan")),
    ]
    errors = run(_errors_for(server.url, messages))
    assert [e.code for e in errors] == [
        "malformed",
        "malformed",
        "unknown_type",
        "bad_schema",
        "bad_schema",
        "bad_schema",
        "bad_schema",
    ], errors
    assert all(len(e.message) <= P.MAX_ERROR_MESSAGE_CHARS for e in errors)
    assert errors[4].seq is None  # an out-of-range seq is not echoed
    metrics = server.service.metrics.render()
    metrics = metrics.decode() if isinstance(metrics, bytes) else metrics
    assert re.search(r'protocol_errors_total\{code="malformed"\} [1-9]', metrics), metrics[:2000]


def test_strict_settings_over_the_websocket(server):
    bad = [
        {"preview": "yes"},
        {"queue_size": "12"},
        {"queue_size": True},
        {"compact_scale": float("inf")},
        {"conf_thresh": float("nan")},
    ]
    messages = [msgpack.packb({"type": "control", "action": "settings", "settings": s}) for s in bad]
    assert [e.code for e in run(_errors_for(server.url, messages))] == ["bad_schema"] * len(bad)


def test_reset_clears_the_seq_watermark(server, small_frames):
    img = small_frames[0][1]

    async def main():
        async with StreamClient(server.url) as c:
            await c.create_session({"frame_policy": "queue"})
            await c.connect()
            await c.send_frame(img, "png", seq=P.MAX_SEQ)
            await c.reset()
            await c.send_frame(img, "png", seq=1)
            out = []
            while not any(getattr(m, "seq", None) == 1 for m in out):
                out.append(await c.receive())
            await c.delete()
            return out

    out = run(main())
    answer = next(m for m in out if getattr(m, "seq", None) == 1)
    assert isinstance(answer, P.ResultMsg) and answer.frame_index == 0, out


def test_shutdown_closes_streams_with_the_documented_code(tiny_engine):
    with live_server(tiny_engine) as srv:

        async def main():
            async with StreamClient(srv.url) as c:
                await c.create_session()
                await c.connect()
                stopping = asyncio.create_task(asyncio.to_thread(srv.stop))
                try:
                    while True:
                        await c.receive()
                except Exception as exc:  # ServiceError with the close code
                    code = getattr(exc, "code", None)
                await stopping
                return code

        assert run(main()) == str(P.CLOSE_SHUTDOWN)
    assert P.CLOSE_SHUTDOWN == 1012
    assert "| 1012 |" in (DOCS / "protocol.md").read_text()


def test_full_float32_stream_with_previews_passes_through_the_client(server, small_frames):
    settings = {"encoding": "full", "dtype": "float32", "preview": True, "frame_policy": "queue"}

    async def main():
        sizes = []
        async for m in stream(server.url, small_frames[:3], settings=settings, encoding="png"):
            assert not isinstance(m, (P.ErrorMsg, P.DroppedMsg)), m
            if isinstance(m, P.ResultMsg) and m.final is not None:
                sizes.append(len(P.pack(m)))
        return sizes

    sizes = run(main())
    assert len(sizes) == 2 and all(2**20 < s <= P.MAX_SERVER_MESSAGE_BYTES for s in sizes), sizes


# --------------------------------------------------------------------------------------------- docs


def test_documented_defaults_match_the_settings():
    defaults = ServeSettings()
    protocol = (DOCS / "protocol.md").read_text()
    documented = re.search(r"--job-max-files` images \(default (\d+)", protocol)
    assert documented and int(documented.group(1)) == defaults.job_max_files
    security = (DOCS / "security.md").read_text()
    assert "security.md" in protocol
    limits = [
        name
        for name in ServeSettings.model_fields
        if name.startswith(("max_", "job_max_")) or name in ("idle_timeout_s", "job_ttl_s")
    ]
    for name in limits:
        row = re.search(rf"^\| `{name}` \|[^|]*\| ([^|]+) \|", security, re.M)
        assert row, f"docs/security.md has no row for {name}"
        assert str(getattr(defaults, name)) in row.group(1).replace(",", "").replace("_", ""), (name, row.group(1))

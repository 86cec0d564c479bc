"""Property-based fuzzing of the WebSocket protocol against a live server, beside a healthy streaming session.

Hypothesis generates random and mutated messages: valid frame / control / ping messages changed field by field
(wrong types, huge or non-finite numbers, huge strings, deep nesting, missing and unknown keys), random bytes,
random msgpack, deep nesting beyond what msgpack packs, text frames and over-limit messages. Each goes to a live
server over a real WebSocket (a session of its own) and must be answered only with valid server messages, every
error carrying a documented code, every close a documented close code. Meanwhile a healthy session streams
and must get every result in order with no error or drop, and the process's RSS stays within a bound.

Bounded for CI (about a minute on a small CPU, reproducible: derandomized). A longer run:
``SPANN3R_FUZZ_EXAMPLES=5000 python -m pytest tests/server/test_fuzz.py``.
"""

from __future__ import annotations

import asyncio
import os
import threading
from itertools import count, cycle

import cv2
import httpx
import msgpack
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_helpers import live_server

from spann3r.client import stream
from spann3r.server import protocol as P

websockets_sync = pytest.importorskip("websockets.sync.client")

EXAMPLES = int(os.environ.get("SPANN3R_FUZZ_EXAMPLES", "200"))
LIMIT = 256 * 1024  # max_message_bytes of the server under test
VIOLATIONS = 40  # max_protocol_errors: low enough that the fuzzer sees documented closes now and then
RSS_GROWTH_BOUND = 400 * 2**20
DOCUMENTED_CLOSES = set(P.CLOSE_CODES.values())


@pytest.fixture(scope="module")
def server(tiny_engine):
    with live_server(
        tiny_engine, max_message_bytes=LIMIT, max_protocol_errors=VIOLATIONS, max_pixels=1_000_000, max_sessions=16
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def tiny_jpeg(small_frames) -> bytes:
    rgb = cv2.resize(small_frames[3][1], (64, 48))
    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


# --------------------------------------------------------------------------------------------- strategies


def deep_msgpack(depth: int) -> bytes:
    """``{"type": [[[...nil...]]]}`` nested ``depth`` deep, written by hand: msgpack refuses to pack > 511."""
    return b"\x81\xa4type" + b"\x91" * depth + b"\xc0"


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=64),
    st.sampled_from(["frame", "control", "ping", "settings", "reset", "finish", "snapshot", "jpeg", "rgb8"]),
)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
huge = st.one_of(
    st.integers(1000, 200_000).map(lambda n: "x" * n),
    st.integers(1000, 200_000).map(bytes),
    st.integers(2, 600).map(lambda d: _nest(d)),
    st.just(2**53),
    st.just(2**64 - 1),
    st.just(-(2**63)),
    st.just(float("nan")),
    st.just(float("inf")),
)
values = st.one_of(junk, huge)


def _nest(depth: int):
    obj: object = 0
    for _ in range(depth):
        obj = [obj]
    return obj


def base_messages(jpeg: bytes):
    settings_patch = st.fixed_dictionaries(
        {},
        optional={
            "frame_policy": st.sampled_from(["latest", "queue", "every_nth"]),
            "queue_size": st.integers(1, 64),
            "encoding": st.sampled_from(["full", "compact"]),
            "dtype": st.sampled_from(["float32", "float16"]),
            "stride": st.integers(1, 16),
            "preview": st.booleans(),
            "conf_thresh": st.floats(0, 0.9),
        },
    )
    return st.one_of(
        st.builds(
            lambda seq, ts: {"type": "frame", "seq": seq, "ts": ts, "format": "jpeg", "data": jpeg},
            st.integers(0, P.MAX_SEQ),
            st.floats(0, 1e10),
        ),
        st.builds(lambda s: {"type": "control", "action": "settings", "settings": s}, settings_patch),
        st.sampled_from([{"type": "control", "action": a} for a in ("reset", "snapshot", "finish")]),
        st.builds(lambda i: {"type": "ping", "id": i}, st.integers(-P.MAX_SEQ, P.MAX_SEQ)),
    )


@st.composite
def mutated(draw, jpeg: bytes) -> bytes:
    """A valid message with one to three fields replaced, removed or added."""
    msg = dict(draw(base_messages(jpeg)))
    for _ in range(draw(st.integers(1, 3))):
        target = msg
        if "settings" in msg and isinstance(msg["settings"], dict) and draw(st.booleans()):
            target = msg["settings"] = dict(msg["settings"])
        key = draw(st.one_of(st.sampled_from(sorted(target) or ["type"]), st.text(max_size=12)))
        if draw(st.integers(0, 5)) == 0:
            target.pop(key, None)
        else:
            target[key] = draw(values)
    return msgpack.packb(msg, use_bin_type=True)


def fuzz_messages(jpeg: bytes):
    return st.one_of(
        mutated(jpeg),
        st.binary(max_size=512),
        junk.map(lambda obj: msgpack.packb(obj, use_bin_type=True)),
        st.integers(17, 3000).map(deep_msgpack),
        st.text(max_size=64),  # a text frame
        st.integers(LIMIT + 1, LIMIT + 4096).map(lambda n: msgpack.packb({"type": "frame", "data": bytes(n)})),
    )


# --------------------------------------------------------------------------------------------- the fuzzer's side


class FuzzConnection:
    """A session of its own over a synchronous WebSocket: send one message, then a ping, and collect every
    answer up to its pong. Reopens the socket when the server closes it (a documented close is expected)."""

    def __init__(self, url: str):
        created = httpx.post(f"{url}/v1/sessions", json={"frame_policy": "latest", "encoding": "compact"}).json()
        self.uri = f"{created['stream_url']}?token={created['token']}"
        self.ids = count(1)
        self.closes: list[int] = []
        self.answers: list = []
        self.ws = None
        self._open()

    def _open(self) -> None:
        if self.ws is not None:
            self.ws.close()
        self.ws = websockets_sync.connect(self.uri, max_size=P.MAX_SERVER_MESSAGE_BYTES, compression=None)
        self.ws.__enter__()  # websockets wants its context manager entered; close() leaves it
        hello = P.decode_server_message(self.ws.recv(timeout=30))
        assert isinstance(hello, P.HelloMsg)

    def exchange(self, data: bytes | str) -> None:
        from websockets.exceptions import ConnectionClosed

        ping = next(self.ids)
        try:
            self.ws.send(data)
            self.ws.send(msgpack.packb({"type": "ping", "id": ping}))
            while True:
                msg = P.decode_server_message(self.ws.recv(timeout=60))  # a server message, or this raises
                self.answers.append(msg)
                if isinstance(msg, P.PongMsg) and msg.id == ping:
                    return
        except ConnectionClosed as exc:
            self.closes.append(exc.rcvd.code if exc.rcvd else 1006)
            self._open()

    def close(self) -> None:
        self.ws.close()


# --------------------------------------------------------------------------------------------- the healthy side


class HealthyStream(threading.Thread):
    """Streams frames, in a loop of its own, until told to stop; keeps every message."""

    def __init__(self, url: str, frames):
        super().__init__(daemon=True)
        self.url, self.frames, self.stop = url, frames, threading.Event()
        self.messages: list = []
        self.error: BaseException | None = None

    def _frames(self):
        for i, frame in enumerate(cycle(self.frames)):
            if i >= 4 and self.stop.is_set():
                return
            yield frame

    def run(self) -> None:
        async def main():
            async for m in stream(
                self.url, self._frames(), settings={"frame_policy": "queue", "preview": False}, encoding="png"
            ):
                self.messages.append(m)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by the test
            self.error = exc


def assert_healthy(messages: list) -> None:
    assert not [m for m in messages if isinstance(m, (P.ErrorMsg, P.DroppedMsg))]
    results = [m for m in messages if isinstance(m, P.ResultMsg)]
    assert results and [r.seq for r in results] == list(range(results[0].seq, results[0].seq + len(results)))
    assert [r.frame_index for r in results] == list(range(len(results)))
    assert isinstance(messages[-1], P.FinishedMsg) and messages[-1].frames == len(results)


# --------------------------------------------------------------------------------------------- the test


def test_fuzzed_messages_get_documented_answers_and_harm_nobody(server, tiny_jpeg, small_frames):
    process = psutil.Process()
    fuzz = FuzzConnection(server.url)
    fuzz.exchange(msgpack.packb({"type": "frame", "seq": 0, "format": "jpeg", "data": tiny_jpeg}))  # warm up
    rss_before = process.memory_info().rss
    healthy = HealthyStream(server.url, small_frames[:6])
    healthy.start()

    @settings(
        max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(data=fuzz_messages(tiny_jpeg))
    def one_message(data):
        fuzz.exchange(data)

    try:
        one_message()
    finally:
        healthy.stop.set()
        healthy.join(120)
        fuzz.close()
    rss_growth = process.memory_info().rss - rss_before

    assert healthy.error is None, repr(healthy.error)
    assert_healthy(healthy.messages)
    codes = {m.code for m in fuzz.answers if isinstance(m, P.ErrorMsg)}
    assert codes <= set(P.ERROR_CODES)
    assert {"malformed", "bad_schema", "unknown_type", "message_too_large"} <= codes  # the fuzzer reached them
    assert all(len(m.message) <= P.MAX_ERROR_MESSAGE_CHARS for m in fuzz.answers if isinstance(m, P.ErrorMsg))
    assert set(fuzz.closes) <= DOCUMENTED_CLOSES, fuzz.closes
    assert rss_growth < RSS_GROWTH_BOUND, f"RSS grew by {rss_growth / 2**20:.0f} MiB"
    assert httpx.get(f"{server.url}/healthz").status_code == 200

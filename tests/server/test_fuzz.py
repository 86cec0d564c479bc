"""Property-based fuzzing of the WebSocket protocol against a live server, beside a healthy streaming session.

Hypothesis generates random and mutated messages: valid frame / control / ping messages changed field by field
(wrong types, huge or non-finite numbers, huge strings, deep nesting, missing and unknown keys), random bytes,
random msgpack, deep nesting beyond what msgpack packs, text frames and over-limit messages. Each goes to a live
server over a real WebSocket (a session of its own) and must be answered only with valid server messages, every
error carrying a documented code, every close a documented close code. Meanwhile a healthy session streams
and must get every result in order with no error or drop, and the process's RSS stays within a bound.

Memory: the server and the test share one process, so RSS also counts what the test side keeps. Each Hypothesis
run keeps the result of every example it tried (an LRU of 10,000: ``CACHE_SIZE`` in hypothesis/internal/
conjecture/engine.py), and each result keeps every str and bytes value drawn for it (``span_values``): here the fuzz
messages themselves, 27 KiB an example on average (over-limit frames are 260 KiB). One run of 20,000 examples held
about 300 MiB of the test's own messages by its 10,000th example (RSS +370 MiB with no server at all), and glibc
kept the pages after the run freed them: that, not the server, was most of a long run's 577 MiB. The test also
kept every answer (40,000 pydantic objects in a long run) and every ``finished`` message with its full final map
(~1 MB each). The server alone, under 8,000 hostile messages without Hypothesis (175 violation closes): RSS and
malloc'd bytes flat within 1 MiB, one live ``Connection``, seven tasks. So:

- the examples run in batches of ``BATCH``, one Hypothesis run each (seeded by its number: reproducible), so what
  Hypothesis holds is one batch's worth at any length of run (RSS +42 MiB for 14,000 examples with no server);
- answers are checked as they arrive and counted; the healthy session's results and finish keep no arrays.

The bounds, in the process's RSS, then measure the server: ``RSS_GROWTH_BOUND`` from before the healthy session
starts to the end, at any length of run (20,000 examples: +226 and +233 MiB in two runs, reached within the first
few thousand: the healthy session's model state, glibc's arenas grown to the message sizes in each thread, one
batch of Hypothesis's cache); and over the second half of the run, ``RSS_LATE_SLACK`` plus ``RSS_PER_EXAMPLE`` per
example (20,000 examples: +14 and +17 MiB over the second 10,000, bound 84), in runs of at least ``2 * WARM_UP``
examples: a shorter run's second half is still warming up (the default run's: +11 to +64 MiB in six runs; 2,000
examples: +35). A leak of 8 KiB per message fails a 20,000 example run (one of 32 KiB per protocol error failed
6,000 examples: +116 MiB over the second half); a short run catches only gross leaks by RSS, and every run checks
that no ``Connection`` outlives its socket (one kept per connection fails the default run).

Bounded for CI (about a minute on a small CPU, reproducible: seeded). A longer run:
``SPANN3R_FUZZ_EXAMPLES=20000 python -m pytest tests/server/test_fuzz.py -s`` (prints the numbers).
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from collections import Counter
from itertools import count, cycle
from typing import Any

import cv2
import httpx
import msgpack
import psutil
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from service_helpers import live_server

from spann3r.client import stream
from spann3r.server import protocol as P
from spann3r.server.connection import Connection

websockets_sync = pytest.importorskip("websockets.sync.client")

EXAMPLES = int(os.environ.get("SPANN3R_FUZZ_EXAMPLES", "200"))
LIMIT = 256 * 1024  # max_message_bytes of the server under test
VIOLATIONS = 40  # max_protocol_errors: low enough that the fuzzer sees documented closes now and then
BATCH = 500  # examples per Hypothesis run: what Hypothesis keeps of a run is bounded by one batch (docstring)
RSS_GROWTH_BOUND = 320 * 2**20  # whole run, any length
RSS_LATE_SLACK = 64 * 2**20  # over the second half of the run: a constant ...
RSS_PER_EXAMPLE = 2 * 2**10  # ... plus this per later example
WARM_UP = 2000  # examples before RSS reaches its plateau (allocator arenas, the healthy session); see the docstring
DOCUMENTED_CLOSES = set(P.CLOSE_CODES.values())


@pytest.fixture(scope="module")
def server(tiny_engine):
    # a small export budget: what the healthy session keeps for export is bounded by design, and the RSS bound is
    # about what the fuzz traffic leaves behind, at any length of run
    with live_server(
        tiny_engine,
        max_message_bytes=LIMIT,
        max_protocol_errors=VIOLATIONS,
        max_pixels=1_000_000,
        max_sessions=16,
        max_export_points=1000,
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
    answer up to its pong. Reopens the socket when the server closes it (a documented close is expected).
    Answers are checked as they come and counted, not kept: a long run would hold tens of thousands of them."""

    def __init__(self, url: str):
        created = httpx.post(f"{url}/v1/sessions", json={"frame_policy": "latest", "encoding": "compact"}).json()
        self.uri = f"{created['stream_url']}?token={created['token']}"
        self.ids = count(1)
        self.closes: Counter[int] = Counter()
        self.answers: Counter[str] = Counter()  # by type
        self.errors: Counter[str] = Counter()  # error answers by code
        self.long_errors: list[P.ErrorMsg] = []  # error answers over MAX_ERROR_MESSAGE_CHARS (none, or the test fails)
        self.ws: Any = None  # a websockets.sync ClientConnection once open
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
                msg: Any = P.decode_server_message(self.ws.recv(timeout=60))  # a server message, or this raises
                self.answers[msg.type] += 1
                if isinstance(msg, P.ErrorMsg):
                    self.errors[msg.code] += 1
                    if len(msg.message) > P.MAX_ERROR_MESSAGE_CHARS:
                        self.long_errors.append(msg)
                if isinstance(msg, P.PongMsg) and msg.id == ping:
                    return
        except ConnectionClosed as exc:
            self.closes[exc.rcvd.code if exc.rcvd else 1006] += 1
            self._open()

    def close(self) -> None:
        self.ws.close()


def _slim(msg):
    """What the checks read of a message; a result's or finish's arrays are dropped (a long run would hold them)."""
    if isinstance(msg, P.ResultMsg):
        return msg.model_copy(update={"final": None, "preview": None})
    return msg.model_copy(update={"final": None}) if isinstance(msg, P.FinishedMsg) else msg


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
                self.messages.append(_slim(m))

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


def batches(examples: int, batch: int = BATCH) -> list[int]:
    """Examples per Hypothesis run: ``batch`` each, the last one what is left."""
    return [batch] * (examples // batch) + ([examples % batch] if examples % batch else [])


def run_examples(number: int, examples: int, jpeg: bytes, fuzz: FuzzConnection) -> None:
    """One Hypothesis run of ``examples`` fuzz messages (seeded with ``number``); its cache goes when it returns."""

    @seed(number)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(data=fuzz_messages(jpeg))
    def one_message(data):
        fuzz.exchange(data)

    one_message()


def live_connections(server, timeout: float = 30) -> int:
    """``Connection`` objects alive once the server has let go of the closed ones (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        # by type, not isinstance: isinstance asks a weakref proxy for its referent's class, and a proxy whose
        # referent is gone (other libraries leave them, e.g. numba's compiled functions) raises ReferenceError
        alive = sum(issubclass(type(o), Connection) for o in gc.get_objects())
        if alive == 0 or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def test_fuzzed_messages_get_documented_answers_and_harm_nobody(server, tiny_jpeg, small_frames):
    process = psutil.Process()
    fuzz = FuzzConnection(server.url)
    fuzz.exchange(msgpack.packb({"type": "frame", "seq": 0, "format": "jpeg", "data": tiny_jpeg}))  # warm up
    rss_before = process.memory_info().rss
    healthy = HealthyStream(server.url, small_frames[:6])
    healthy.start()
    warm_up = EXAMPLES // 2
    sizes = batches(warm_up) + batches(EXAMPLES - warm_up)
    t0 = time.monotonic()
    try:
        for number, examples in enumerate(sizes):
            if number == len(batches(warm_up)):
                rss_warm = process.memory_info().rss
            run_examples(number, examples, tiny_jpeg, fuzz)
    finally:
        healthy.stop.set()
        healthy.join(120)
        fuzz.close()
    rss_end = process.memory_info().rss
    rss_growth, late_growth, late_examples = rss_end - rss_before, rss_end - rss_warm, EXAMPLES - warm_up
    late_bound = RSS_LATE_SLACK + RSS_PER_EXAMPLE * late_examples
    late_checked = warm_up >= WARM_UP
    print(  # the numbers a long run (SPANN3R_FUZZ_EXAMPLES) is documented with; shown with pytest -s
        f"fuzz: {EXAMPLES} examples in {len(sizes)} runs, {time.monotonic() - t0:.0f} s, "
        f"answers {dict(fuzz.answers.most_common())}, errors {dict(fuzz.errors.most_common())}, "
        f"closes {dict(fuzz.closes)}, "
        f"healthy results {sum(isinstance(m, P.ResultMsg) for m in healthy.messages)}, "
        f"RSS growth {rss_growth / 2**20:.1f} MiB (bound {RSS_GROWTH_BOUND / 2**20:.0f}), "
        f"over the second half {late_growth / 2**20:.1f} MiB ({late_growth / max(1, late_examples):.0f} B/example, "
        + (f"bound {late_bound / 2**20:.0f} MiB)" if late_checked else f"unchecked: under {2 * WARM_UP} examples)")
    )

    assert healthy.error is None, repr(healthy.error)
    assert_healthy(healthy.messages)
    codes = set(fuzz.errors)
    assert codes <= set(P.ERROR_CODES)
    assert {"malformed", "bad_schema", "unknown_type", "message_too_large"} <= codes  # the fuzzer reached them
    assert not fuzz.long_errors, fuzz.long_errors[:3]
    assert set(fuzz.closes) <= DOCUMENTED_CLOSES, fuzz.closes
    assert rss_growth < RSS_GROWTH_BOUND, f"RSS grew by {rss_growth / 2**20:.0f} MiB"
    if late_checked:
        assert late_growth < late_bound, f"RSS grew by {late_growth / 2**20:.0f} MiB over the second half"
    assert live_connections(server) == 0  # every closed connection let go (per-connection leaks)
    assert httpx.get(f"{server.url}/healthz").status_code == 200

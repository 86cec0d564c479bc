"""Bad input: each gets an error with its code (and seq), the offending session keeps streaming, and a healthy
session streaming at the same time gets exactly the results it gets alone. Only repeated protocol violations
close a connection."""

from __future__ import annotations

import asyncio
import struct
import zlib

import cv2
import msgpack
import numpy as np
import pytest
from golden import check_close
from service_helpers import answers_by_seq, live_server, run
from websockets.exceptions import ConnectionClosed

from spann3r.client import Recording, ServiceError, StreamClient, stream
from spann3r.core.reconstruct import reconstruct
from spann3r.server.protocol import CLOSE_PROTOCOL_VIOLATION, DroppedMsg, ErrorMsg, PongMsg, ResultMsg

LIMIT = 1 << 20  # max_message_bytes of the server under test


@pytest.fixture(scope="module")
def server(tiny_engine):
    with live_server(
        tiny_engine, max_message_bytes=LIMIT, max_pixels=4_000_000, max_protocol_errors=3, max_sessions=64
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def healthy_ref(tiny_engine, small_frames):
    return reconstruct(tiny_engine, small_frames[:4])


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a few bytes of pixel data: a decompression bomb's shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def frame(seq=1, **kw) -> bytes:
    return msgpack.packb({"type": "frame", "seq": seq, "format": "jpeg", "data": b"", **kw})


def png(rgb) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


async def healthy_stream(url, frames):
    client = StreamClient(url)
    rec = Recording()
    async for m in stream(
        url,
        frames,
        settings={"encoding": "full", "frame_policy": "queue", "preview": False},
        encoding="png",
        client=client,
    ):
        assert not isinstance(m, (ErrorMsg, DroppedMsg)), m
        rec.add(m)
    await client.close()
    return rec.reconstruction(client.names)


def assert_healthy(rec, ref):
    """Same results as alone (within the reference tolerances: it may share batches with the offender)."""
    check_close("pts3d", rec.pts3d, ref.pts3d)
    check_close("conf", rec.conf, ref.conf)
    np.testing.assert_array_equal(rec.skipped, ref.skipped)
    np.testing.assert_array_equal(rec.mem_tokens, ref.mem_tokens)


BAD = {
    "malformed msgpack": (lambda f: b"\xc1\xc1\xc1", "malformed", None),
    "text message": (lambda f: "hello", "malformed", None),
    "unknown type": (lambda f: msgpack.packb({"type": "teleport", "seq": 1}), "unknown_type", 1),
    "missing field": (lambda f: msgpack.packb({"type": "frame", "seq": 1, "format": "png"}), "bad_schema", 1),
    "wrong field type": (lambda f: frame(width="wide", format="rgb8"), "bad_schema", 1),
    "undecodable image": (lambda f: frame(data=b"this is not a JPEG"), "bad_image", 1),
    "truncated PNG": (lambda f: frame(format="png", data=png(f)[:300]), "bad_image", 1),
    "zero-size image": (lambda f: frame(data=b""), "bad_image", 1),
    "1x1 image": (lambda f: frame(format="rgb8", data=b"\0\0\0", width=1, height=1), "bad_image", 1),
    "rgb8 size mismatch": (lambda f: frame(format="rgb8", data=b"\0" * 10, width=8, height=8), "bad_image", 1),
    "gigantic PNG header": (lambda f: frame(format="png", data=png_header_only(30000, 30000)), "image_too_large", 1),
    "gigantic rgb8 claim": (
        lambda f: frame(format="rgb8", data=b"\0" * 30, width=5000, height=5000),
        "image_too_large",
        1,
    ),
    "message too large": (lambda f: frame(data=b"\0" * (LIMIT + 1000)), "message_too_large", None),
    "repeated seq": (lambda f: frame(seq=0, format="png", data=png(f)), "bad_seq", 0),
    # once accepted, a seq of 2^64-1 left every later seq 'bad_seq': the session was bricked
    "seq beyond 2^53": (lambda f: frame(seq=2**64 - 1, format="png", data=png(f)), "bad_schema", None),
    "bool for seq": (lambda f: frame(seq=True, format="png", data=png(f)), "bad_schema", None),
    # ~1000 levels raised RecursionError while the error text was built: a silent drop (1006), nothing counted
    "deep nesting": (lambda f: b"\x81\xa4type" + b"\x91" * 1000 + b"\xc0", "malformed", None),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_and_harms_nobody(server, small_frames, healthy_ref, case):
    make, code, seq = BAD[case]
    img = small_frames[5][1]

    async def offender():
        async with StreamClient(server.url) as c:
            await c.create_session({"frame_policy": "queue"})
            await c.connect()
            await c.send_frame(img, "png", seq=0)
            await c.send_raw(make(img))
            await c.send_frame(small_frames[6][1], "png", seq=2)
            await c.ping(7)
            out = []
            while not (any(isinstance(m, PongMsg) for m in out) and 2 in answers_by_seq(out)):
                out.append(await c.receive())
            await c.finish()
            while not out or out[-1].type != "finished":
                out.append(await c.receive())
            await c.delete()
            return out

    async def main():
        return await asyncio.gather(offender(), healthy_stream(server.url, small_frames[:4]))

    out, healthy = run(main())
    errors = [m for m in out if isinstance(m, ErrorMsg)]
    assert [(e.code, e.seq) for e in errors] == [(code, seq)], errors
    results = {m.seq: m for m in out if isinstance(m, ResultMsg)}
    assert results[0].frame_index == 0 and results[2].frame_index == 1  # the bad message never entered the stream
    assert out[-1].frames == 2
    assert_healthy(healthy, healthy_ref)


def test_frames_after_finish_and_a_flood(server, small_frames, healthy_ref):
    tiny = cv2.resize(small_frames[2][1], (64, 48))

    async def offender():
        async with StreamClient(server.url) as c:
            await c.create_session({"frame_policy": "latest"})
            await c.connect()
            n = 150
            for _ in range(n):  # a flood: far faster than the worker
                await c.send_frame(tiny, "jpeg")
            out = []
            while len(answers_by_seq(out)) < n:
                out.append(await c.receive())
            await c.send_frame(tiny, "jpeg")  # a flood may leave one frame processed: a stream needs two
            while len(answers_by_seq(out)) < n + 1:
                out.append(await c.receive())
            await c.finish()
            while out[-1].type != "finished":
                out.append(await c.receive())
            await c.send_frame(tiny, "jpeg")
            out.append(await c.receive())
            await c.delete()
            return n, out

    async def main():
        return await asyncio.gather(offender(), healthy_stream(server.url, small_frames[:4]))

    (n, out), healthy = run(main())
    answers = answers_by_seq(out[:-1])
    assert sorted(answers) == list(range(n + 1)) and all(len(a) == 1 for a in answers.values()), {
        k: [m.type + str(getattr(m, "reason", "")) for m in a] for k, a in answers.items() if len(a) > 1
    }
    dropped = [a[0] for a in answers.values() if isinstance(a[0], DroppedMsg)]
    assert len(dropped) > n // 2 and {d.reason for d in dropped} == {"superseded"}
    assert isinstance(answers[n - 1][0], ResultMsg)  # the flood's latest frame won
    assert isinstance(out[-1], ErrorMsg) and out[-1].code == "finished" and out[-1].seq == n + 1
    assert_healthy(healthy, healthy_ref)


def test_repeated_violations_close_the_connection_not_the_session(server, small_frames, healthy_ref):
    async def offender():
        async with StreamClient(server.url) as c:
            created = await c.create_session({"frame_policy": "queue"})
            await c.connect()
            await c.send_frame(small_frames[0][1], "png", seq=0)
            for _ in range(3):
                await c.send_raw(b"\xc1")
            out = []
            try:
                while True:
                    out.append(await c.receive())
            except ServiceError as exc:
                closed = exc.args[0]
            # far beyond the limit: the WebSocket layer itself cuts the connection (1009)
            c2 = StreamClient(server.url)
            c2.attach(created.id, created.token)
            await c2.connect()
            try:
                await c2.send_raw(frame(data=b"\0" * (3 * LIMIT)))
                while True:
                    await c2.receive()
            except ServiceError as exc:
                too_big = exc.code
            except ConnectionClosed as exc:  # the server may cut the connection while the message is still going out
                too_big = str(exc.rcvd.code) if exc.rcvd else None
            await c2.close()
            # the session itself is fine: reconnect and carry on
            c3 = StreamClient(server.url)
            c3.attach(created.id, created.token)
            hello = await c3.connect()
            seq = await c3.send_frame(small_frames[1][1], "png")
            after = await c3.receive()
            while getattr(after, "seq", None) != seq:  # frame 0's result may still be on its way
                after = await c3.receive()
            await c3.delete()
            await c3.close()
            return out, closed, too_big, hello, after

    async def main():
        return await asyncio.gather(offender(), healthy_stream(server.url, small_frames[:4]))

    (out, closed, too_big, hello, after), healthy = run(main())
    assert [m.code for m in out if isinstance(m, ErrorMsg)] == ["malformed"] * 3
    assert str(CLOSE_PROTOCOL_VIOLATION) in closed and "protocol errors" in closed
    assert too_big == "1009"
    assert hello.frames_processed <= 1 and hello.last_seq == 0  # frame 0 may still be decoding
    assert isinstance(after, ResultMsg) and after.seq == 1 and after.frame_index == 1
    assert_healthy(healthy, healthy_ref)

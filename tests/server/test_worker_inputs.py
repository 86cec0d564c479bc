"""Image inputs bounded by aspect ratio before any decode or allocation (one check, core.preprocess), for stream
frames (PNG/JPEG/WebP header, rgb8 size) and job uploads; a refused frame harms no other session."""

from __future__ import annotations

import asyncio

import cv2
import httpx
import numpy as np
import pytest
from service_helpers import live_server, run

from spann3r.client import StreamClient
from spann3r.core.preprocess import MAX_ASPECT, ImageError, check_image_header, decode_and_prepare
from spann3r.server.protocol import DroppedMsg, ErrorMsg, ResultMsg

TALL = (2, 10_000)  # w, h: the resize target would be 224 × 1,120,000 pixels


def png(w: int, h: int) -> bytes:
    return cv2.imencode(".png", np.zeros((h, w, 3), np.uint8))[1].tobytes()


@pytest.mark.parametrize("fmt", ["png", "rgb8"])
def test_extreme_aspect_ratios_are_refused_from_the_header(fmt):
    w, h = TALL
    data = png(w, h) if fmt == "png" else bytes(w * h * 3)
    with pytest.raises(ImageError) as exc:
        decode_and_prepare(data, fmt, w, h, max_pixels=40_000_000)
    assert exc.value.code == "bad_aspect_ratio"
    with pytest.raises(ImageError) as exc:
        check_image_header(data, fmt, h, w)  # lying on its side, no better
    assert exc.value.code in ("bad_aspect_ratio", "bad_image")


def test_the_header_alone_decides():
    """A PNG cut after its header still says bad_aspect_ratio: nothing was decoded to find out."""
    with pytest.raises(ImageError) as exc:
        check_image_header(png(*TALL)[:41], "png")  # signature, IHDR and the next chunk's length
    assert exc.value.code == "bad_aspect_ratio"


def test_the_bound_itself_is_accepted():
    w = int(224 * MAX_ASPECT)
    assert check_image_header(png(w, 224), "png") == (w, 224)
    assert decode_and_prepare(bytes(w * 224 * 3), "rgb8", w, 224).colors.shape == (224, 224, 3)


def test_extreme_aspect_frames_and_uploads_are_refused_over_a_live_server(tiny_engine, small_frames):
    w, h = TALL
    good = [rgb for _, rgb in small_frames[:4]]

    async def offender(url):
        async with StreamClient(url) as c:
            await c.create_session({"frame_policy": "queue"})
            await c.connect()
            await c.send_frame(png(w, h), "png", seq=1)
            await c.send_frame(bytes(w * h * 3), "rgb8", seq=2, width=w, height=h)
            await c.send_frame(good[0], "png", seq=3)
            out = []
            while not any(isinstance(m, ResultMsg) and m.seq == 3 for m in out):
                out.append(await c.receive())
            await c.delete()
            return out

    async def healthy(url):
        async with StreamClient(url) as c:
            await c.create_session({"frame_policy": "queue"})
            await c.connect()
            for rgb in good:
                await c.send_frame(rgb, "png")
            out = []
            while len([m for m in out if isinstance(m, ResultMsg)]) < len(good):
                out.append(await c.receive())
            await c.delete()
            return out

    async def both(url):
        return await asyncio.gather(offender(url), healthy(url))

    with live_server(tiny_engine, max_batch=2) as srv:
        bad, ok = run(both(srv.url))
        tall = png(w, h)
        parts = [("files", ("a.png", png(320, 240), "image/png")), ("files", ("tall.png", tall, "image/png"))]
        r = httpx.post(f"{srv.url}/v1/jobs", files=parts, timeout=60)
    assert [(m.code, m.seq) for m in bad if isinstance(m, ErrorMsg)] == [
        ("bad_aspect_ratio", 1),
        ("bad_aspect_ratio", 2),
    ]
    assert [m.frame_index for m in bad if isinstance(m, ResultMsg)] == [0]  # the session goes on
    assert not [m for m in ok if isinstance(m, (ErrorMsg, DroppedMsg))]
    assert [m.frame_index for m in ok if isinstance(m, ResultMsg)] == list(range(len(good)))
    assert r.status_code == 422 and r.json()["code"] == "bad_aspect_ratio" and "tall.png" in r.json()["detail"]

"""Collection jobs do not starve live streams: job images decode in their own one-thread pool, so a stream frame's
decode never queues behind an upload's images."""

from __future__ import annotations

import asyncio

import cv2
import httpx
import numpy as np
from service_helpers import live_server, run

from spann3r.client import StreamClient
from spann3r.server.protocol import ResultMsg

SIDE, IMAGES, UPLOADS = 3000, 5, 2  # each image takes ~0.5 s to decode and prepare on one core


def large_png(shift: int) -> bytes:
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    img = np.stack([(x + shift) % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


def test_stream_frames_never_wait_behind_job_image_decoding(tiny_engine, small_frames):
    images = [large_png(i) for i in range(IMAGES)]

    def upload(url: str) -> httpx.Response:
        parts = [("files", (f"big{i}.png", data, "image/png")) for i, data in enumerate(images)]
        return httpx.post(f"{url}/v1/jobs", files=parts, timeout=300)

    async def main(url):
        async with StreamClient(url) as c:
            await c.create_session({"frame_policy": "queue", "encoding": "compact"})
            await c.connect()
            uploads = [asyncio.create_task(asyncio.to_thread(upload, url)) for _ in range(UPLOADS)]
            decode_waits = []
            i = 0
            while not all(u.done() for u in uploads):  # frames sent while the uploads are checked and decoded
                await c.send_frame(small_frames[i % len(small_frames)][1], "png")
                while not isinstance(msg := await c.receive(), ResultMsg):
                    pass
                decode_waits.append(msg.timings["decode_s"])
                i += 1
                await asyncio.sleep(0.05)
            responses = [await u for u in uploads]
            await c.delete()
            return decode_waits, responses

    with live_server(tiny_engine) as srv:
        decode_waits, responses = run(main(srv.url), timeout=300)
    assert [r.status_code for r in responses] == [201] * UPLOADS, [r.text for r in responses]
    assert len(decode_waits) >= 3
    # today's shared pool made a frame wait for whole uploads (seconds); a 320x240 PNG decodes in milliseconds
    assert max(decode_waits) < 1.0, decode_waits

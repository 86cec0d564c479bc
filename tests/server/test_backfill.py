"""A watcher that joins a running session late first gets the scene so far (``backfill`` messages), then the live
results: through a real uvicorn server (tiny model), and the chunking policy on its own."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from service_helpers import live_server, run

from spann3r.client import StreamClient
from spann3r.server.backfill import CHUNK_POINTS, chunked, frame_shares, keep_every
from spann3r.server.exports import ExportBuffer
from spann3r.server.protocol import MAX_SERVER_MESSAGE_BYTES, BackfillMsg, HelloMsg, ResultMsg


@pytest.fixture(scope="module")
def server(tiny_engine):
    with live_server(tiny_engine, max_batch=2, max_wait_ms=10) as srv:
        yield srv


async def _results(client: StreamClient, n: int) -> list[ResultMsg]:
    got: list[ResultMsg] = []
    while len(got) < n:
        m = await client.receive()
        if isinstance(m, ResultMsg):
            got.append(m)
    return got


async def _until_backfilled(watcher: StreamClient) -> tuple[list[BackfillMsg], list[ResultMsg]]:
    """Backfill chunks (and any live result in between) until the last chunk."""
    chunks: list[BackfillMsg] = []
    live: list[ResultMsg] = []
    while not chunks or chunks[-1].chunk < chunks[-1].chunks - 1:
        m = await watcher.receive()
        if isinstance(m, BackfillMsg):
            chunks.append(m)
        elif isinstance(m, ResultMsg):
            live.append(m)
    return chunks, live


def test_a_late_watcher_gets_every_earlier_final_then_live_results(server, small_frames):
    frames = [rgb for _, rgb in small_frames[:6]]

    async def main():
        async with StreamClient(server.url) as streamer, StreamClient(server.url) as watcher:
            created = await streamer.create_session({"frame_policy": "queue", "queue_size": 8})
            await streamer.connect()
            for rgb in frames[:5]:
                await streamer.send_frame(rgb, "png")
            await _results(streamer, 5)  # finals of frames 0..3 are in the session's export buffer
            await asyncio.sleep(0.2)
            stats = await streamer.stats()
            trajectory = json.loads(await streamer.export("trajectory.json"))
            watcher.attach(created.id, created.watch_token)
            hello = await watcher.connect()
            chunks, live_during = await _until_backfilled(watcher)
            await streamer.send_frame(frames[5], "png")
            live_after = await _results(watcher, 1)
            return hello, stats, trajectory, chunks, live_during + live_after

    hello, stats, trajectory, chunks, live = run(main())
    assert isinstance(hello, HelloMsg) and hello.role == "watch" and hello.frames_processed == 5
    assert [c.chunk for c in chunks] == list(range(chunks[0].chunks))
    frames_sent = [f for c in chunks for f in c.frames]
    # every earlier final, in frame order, each once
    assert [f.index for f in frames_sent] == [0, 1, 2, 3]
    # stride 1 and no decimation: the whole confident cloud the server would export
    assert chunks[0].keep_every == 1
    assert sum(f.positions.shape[0] for f in frames_sent) == stats.export_points > 0
    for f in frames_sent:
        xyz = f.positions.to_numpy()
        assert xyz.dtype == np.float32 and xyz.shape[1] == 3 and np.isfinite(xyz).all()
        assert f.colors.to_numpy().shape == xyz.shape
    # the trajectory so far: the same poses as the export's
    exported = {f["index"]: f for f in trajectory["frames"]}
    for f in frames_sent:
        assert f.pose.valid == exported[f.index]["valid"]
        if f.pose.valid:
            np.testing.assert_allclose(np.reshape(f.pose.c2w, (4, 4)), exported[f.index]["c2w"], rtol=1e-6)
    assert chunks[0].focal == pytest.approx(stats.focal)
    # then the live results: the next frame's result reaches the late watcher
    assert any(r.seq == 5 and r.final is not None and r.final.index == 4 for r in live)


def test_a_watcher_of_a_fresh_session_gets_no_backfill(server, small_frames):
    async def main():
        async with StreamClient(server.url) as streamer, StreamClient(server.url) as watcher:
            created = await streamer.create_session({"frame_policy": "queue"})
            await streamer.connect()
            watcher.attach(created.id, created.watch_token)
            await watcher.connect()
            await streamer.send_frame(small_frames[0][1], "png")
            return await watcher.receive()

    first = run(main())
    assert isinstance(first, ResultMsg) and first.seq == 0


def _buffer(frames: int, points: int) -> ExportBuffer:
    rng = np.random.default_rng(0)
    buf = ExportBuffer(max_points=10_000_000)
    for i in range(frames):
        xyz = rng.normal(size=(points, 3)).astype(np.float32)
        buf.add(i, xyz, np.zeros((points, 3), np.uint8), np.eye(4), valid=i % 2 == 0)
    return buf


def test_chunks_hold_whole_frames_within_the_point_bound():
    shares = frame_shares(_buffer(frames=9, points=224 * 224), every=1)
    chunks = list(chunked(shares))
    assert [s.index for c in chunks for s in c] == list(range(9))  # every frame, once, in order
    assert all(sum(len(s.xyz) for s in c) <= CHUNK_POINTS for c in chunks)
    # the largest chunk's message stays under what clients size their limit by
    assert CHUNK_POINTS * 15 + 64 * 1024 < MAX_SERVER_MESSAGE_BYTES
    # invalid poses travel as none
    assert [s.c2w is None for s in shares] == [i % 2 == 1 for i in range(9)]


def test_backfill_is_as_dense_as_the_live_stream_and_within_its_budget():
    assert keep_every(stride=1, decimation=1, points=1000) == 1
    assert keep_every(stride=2, decimation=1, points=1000) == 4  # compact maps keep 1 pixel in 4
    assert keep_every(stride=2, decimation=4, points=1000) == 1  # the buffer already thinned that much
    assert keep_every(stride=1, decimation=1, points=10_000, budget=1000) == 10

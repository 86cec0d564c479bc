"""The worker's batch formation over a live server (tiny model): frames a batch runs are claimed when the batch
is formed, so a frame superseded during the batch-fill wait never breaks the batch or the session's counters."""

from __future__ import annotations

import asyncio
import logging
import threading

import cv2
from service_helpers import answers_by_seq, live_server, run

from spann3r.client import StreamClient
from spann3r.server.protocol import DroppedMsg, ErrorMsg, FinishedMsg, ResultMsg

FPS, SECONDS = 30, 3


async def stream_at_rate(url: str, images, n: int) -> tuple[list, int]:
    """Send n frames at FPS (latest-frame-wins) while receiving; finish; return every message and the
    server's frames_processed."""
    async with StreamClient(url) as c:
        await c.create_session({"frame_policy": "latest", "encoding": "compact"})
        await c.connect()
        messages: list = []

        async def receive_until_finished():
            while not messages or not isinstance(messages[-1], FinishedMsg):
                messages.append(await c.receive())

        receiver = asyncio.create_task(receive_until_finished())
        for i in range(n):
            await c.send_frame(images[i % len(images)], "png", seq=i)
            await asyncio.sleep(1 / FPS)
        while len(answers_by_seq(messages)) < n and not receiver.done():
            await asyncio.sleep(0.05)
        await c.finish()
        await receiver
        processed = (await c.stats()).frames_processed
        await c.delete()
        return messages, processed


def test_superseded_frames_during_the_fill_wait_never_break_a_batch(tiny_engine, frames_A, caplog):
    # full-size PNGs: their decode takes a while, so the fill wait often ends while a newer frame decodes
    images = [cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes() for _, rgb in frames_A[:8]]
    n = FPS * SECONDS
    caplog.set_level(logging.ERROR, logger="spann3r")
    # a fill wait longer than the frame interval: frames are superseded while the worker waits for company, which
    # two streaming sessions are to each other (a lone stream never waits for company)
    with live_server(tiny_engine, max_batch=4, max_wait_ms=60) as srv:

        async def two_streams():
            return await asyncio.gather(stream_at_rate(srv.url, images, n), stream_at_rate(srv.url, images, n))

        streams = run(two_streams())
    for messages, processed in streams:
        check_stream(messages, processed, n)
    assert "batch failed" not in caplog.text


def check_stream(messages: list, processed: int, n: int) -> None:
    answers = answers_by_seq(messages)
    assert sorted(answers) == list(range(n)) and all(len(a) == 1 for a in answers.values()), [
        s for s in range(n) if len(answers.get(s, [])) != 1
    ]
    assert not [m for m in messages if isinstance(m, ErrorMsg)]
    results = [m for m in messages if isinstance(m, ResultMsg)]
    assert len(results) + sum(isinstance(m, DroppedMsg) for m in messages) == n
    assert len(results) == processed  # every processed frame got its result
    finished = messages[-1]
    assert finished.frames == processed and finished.final.seq == results[-1].seq
    assert finished.final.index == processed - 1


def _ready_frame(seq: int, ready_at: float):
    from spann3r.server.protocol import FrameMsg
    from spann3r.server.sessions import RawFrame, ReadyFrame

    raw = RawFrame(FrameMsg(seq=seq, format="png", data=b"x"), received=ready_at)
    return raw, ReadyFrame(raw, prepared=None, decode_s=0.0, ready_at=ready_at)


def test_claiming_a_step_takes_the_frame_ready_now_and_only_once():
    """'latest': newer frames replace undecoded ones, and the frame decoded for the next step once per step; a frame
    dropped after the scheduler named its session is neither claimed nor counted."""
    from spann3r.server.protocol import SessionSettings
    from spann3r.server.results import StreamCameras
    from spann3r.server.sessions import Session

    s = Session(SessionSettings(frame_policy="latest"), 1000, 30.0)
    s.attach_stream(object(), StreamCameras())  # a stand-in: claiming only carries it into the ticket
    raw0, ready0 = _ready_frame(0, 1.0)
    s.intake(raw0)
    assert s.next_to_decode() is raw0 and s.decode_done(raw0)
    s.set_ready(ready0)
    raw1, ready1 = _ready_frame(1, 1.5)
    assert s.intake(raw1) == [(0, "superseded")] and s.ready is None  # superseded while a batch waited
    assert s.claim_step() is None and s.frames_processed == 0 and not s.in_model  # nothing claimed, nothing counted
    assert s.next_to_decode() is raw1 and s.decode_done(raw1)
    s.set_ready(ready1)
    assert s.ready_since == 1.0  # since its first ready frame: a replacement keeps the session's place in line
    raw2, _ = _ready_frame(2, 1.6)
    assert s.intake(raw2) == [] and s.ready is ready1  # replaced once this step: now the decoded frame stays
    assert s.next_to_decode() is None  # one frame decoded ahead at most
    raw3, _ = _ready_frame(3, 1.7)
    assert s.intake(raw3) == [(2, "superseded")]  # an undecoded frame is always replaced by the newest
    ticket = s.claim_step()
    assert ticket.frame is ready1 and ticket.index == 0 and ticket.prev_seq is None and s.in_model
    assert s.claim_step() is None and s.frames_processed == 1  # a frame is claimed once
    assert s.seq_by_index == {0: 1} and s.ready_since is None
    assert s.next_to_decode() is raw3  # the newest, decoded while the step runs
    raw4, _ = _ready_frame(4, 1.8)
    assert s.intake(raw4) == [(3, "superseded")]  # a new step: the frame ahead may be replaced once again


def test_overload_never_replaces_every_decoded_frame():
    """Frames arriving far faster than a session's steps: each step costs two decodes at most, so the session's
    frames still run (replacing the decoded frame on every arrival would decode all of them and run none)."""
    from spann3r.server.protocol import SessionSettings
    from spann3r.server.results import StreamCameras
    from spann3r.server.sessions import Session

    s = Session(SessionSettings(frame_policy="latest"), 1000, 30.0)
    s.attach_stream(object(), StreamCameras())
    decodes = steps = 0
    for seq in range(100):  # 10 arrivals per step
        raw, _ = _ready_frame(seq, float(seq))
        s.intake(raw)
        got = s.next_to_decode()
        if got is not None:  # decodes finish before the next arrival
            decodes += 1
            assert s.decode_done(got)
            s.set_ready(_ready_frame(got.seq, float(seq))[1])
        if seq % 10 == 9 and s.claim_step() is not None:
            steps += 1
            s.step_done(ok=True)
    assert steps == 10 and decodes <= 2 * steps + 1


def test_a_lone_streams_results_are_made_on_the_model_thread_and_company_keeps_the_pool(
    tiny_engine, frames_A, monkeypatch
):
    """``RunBatch.post_on_model``: a lone stream's result messages are made on the model thread right after its
    step; once another session streams, in the post-processing pool. A message that fails there is reported for
    its frame alone (an internal error), as from the pool, and the stream goes on."""
    from spann3r.server import results

    made: list[tuple[int, str]] = []  # (seq, thread name) of each result message made
    make = results.result_bytes

    def recording(frame, *args):
        made.append((frame.seq, threading.current_thread().name))
        if frame.seq == 3 and threading.current_thread().name.startswith("model"):
            raise RuntimeError("broken encoder")
        return make(frame, *args)

    monkeypatch.setattr(results, "result_bytes", recording)
    images = [cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes() for _, rgb in frames_A[:6]]

    async def answer(c: StreamClient, seq: int):
        while True:
            m = await c.receive()
            if isinstance(m, (ResultMsg, ErrorMsg)) and m.seq == seq:
                return m

    async def lone(url):
        async with StreamClient(url) as c:
            await c.create_session({"frame_policy": "queue", "encoding": "compact"})
            await c.connect()
            out = []
            for i in range(6):
                await c.send_frame(images[i], "png", seq=i)
                out.append(await answer(c, i))
            await c.delete()
            return out

    async def two(url):
        async with StreamClient(url) as a, StreamClient(url) as b:
            for c in (a, b):
                await c.create_session({"frame_policy": "queue", "encoding": "compact"})
                await c.connect()
            for i in range(6):
                await asyncio.gather(*(c.send_frame(images[i], "png", seq=i) for c in (a, b)))
                if i == 0:  # from here on both sessions stream
                    await asyncio.gather(answer(a, 0), answer(b, 0))
                    made.clear()
                    continue
                for m in await asyncio.gather(answer(a, i), answer(b, i)):
                    assert isinstance(m, ResultMsg)  # the model thread's failure was not a pool one

    with live_server(tiny_engine, max_batch=1, max_wait_ms=0) as srv:
        out = run(lone(srv.url))
        assert [type(m).__name__ for m in out] == ["ResultMsg"] * 3 + ["ErrorMsg"] + ["ResultMsg"] * 2
        assert out[3].code == "internal" and "post-processing failed" in out[3].message
        assert [seq for seq, _ in made] == list(range(6))
        assert all(name.startswith("model") for _, name in made), made
        made.clear()
        run(two(srv.url))
        assert len(made) == 10 and all(name.startswith("post") for _, name in made), made

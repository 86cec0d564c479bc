"""Durable sessions: a streaming session is persisted every ``persist_every`` frames (incrementally: the memory rows
written since the last commit, all of them after a prune), in a folder or in Redis; after a SIGKILL and a restart on
the same store it resumes from its latest persisted state and continues bit-identically to an uninterrupted run."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time

import httpx
import numpy as np
import pytest
from service_helpers import free_port, run, serve_subprocess

from spann3r.client import Recording, StreamClient, stream
from spann3r.core.config import MemoryConfig
from spann3r.core.engine import Engine
from spann3r.core.preprocess import prepare
from spann3r.core.reconstruct import reconstruct
from spann3r.core.snapshot import capture_stream, dump_stream, load_stream, load_stream_parts
from spann3r.server.snapshots import read_session
from spann3r.server.store import FolderStore, RedisStore, SessionStore

PERSIST_EVERY = 3


# ---------------------------------------------------------------------------------------------- stores
@pytest.fixture(params=["folder", "redis"])
def store_flags(request, tmp_path) -> tuple[list[str], SessionStore]:
    """serve flags of one store, and the same store opened here (to look inside)."""
    if request.param == "folder":
        return ["--state-dir", str(tmp_path / "state")], FolderStore(tmp_path / "state")
    url = request.getfixturevalue("redis_url")
    store = RedisStore(url)
    store.client.flushdb()
    return ["--state-url", url], store


def test_a_commit_is_all_or_nothing_in_a_folder(tmp_path):
    store, sid = FolderStore(tmp_path), "a" * 32
    store.commit(sid, {"record": b"1", "rows.0": b"r0"})
    store.commit(sid, {"record": b"2", "rows.1": b"r1"}, drop=["rows.0"])
    assert store.get(sid) == {"record": b"2", "rows.1": b"r1"}
    # a crash after the new blobs were written, before the manifest: the previous commit is what is read
    (tmp_path / f"{sid}.d" / "record.3").write_bytes(b"3")
    (tmp_path / f"{sid}.json.tmp").write_bytes(b"{half a manifest")
    assert store.get(sid) == {"record": b"2", "rows.1": b"r1"}
    store.commit(sid, {"record": b"3"})  # the next commit clears the leftovers
    assert sorted(p.name for p in (tmp_path / f"{sid}.d").iterdir()) == ["record.3", "rows.1.2"]
    assert store.sessions() == [sid]
    store.delete(sid)
    assert store.sessions() == [] and list(tmp_path.iterdir()) == []


def test_a_commit_is_all_or_nothing_in_redis(redis_url):
    store, sid = RedisStore(redis_url), "b" * 32
    store.client.flushdb()
    store.commit(sid, {"record": b"1", "rows.0": b"r0"})
    store.commit(sid, {"record": b"2", "rows.1": b"r1"}, drop=["rows.0"])
    assert store.get(sid) == {"record": b"2", "rows.1": b"r1"} and store.sessions() == [sid]
    with pytest.raises(ValueError):  # a bad blob name fails before anything is sent
        store.commit(sid, {"record": b"3", "../x": b""})
    assert store.get(sid)["record"] == b"2"
    store.delete(sid)
    assert store.sessions() == [] and store.get(sid) == {}


# ---------------------------------------------------------------------------------------------- core
def test_incremental_captures_restore_the_whole_stream(tiny_model, small_frames):
    """Rows since the last capture, all rows after a prune: the pieces restore a stream that continues exactly
    as the uninterrupted one (a small long-term memory prunes within these frames)."""
    engine = Engine(tiny_model, MemoryConfig(long_mem_size=400, work_mem_size=2))
    frames = [prepare(rgb) for _, rgb in small_frames[:8]]
    state = engine.new_stream(preview=False)
    head, segments, since, starts = b"", [], None, []
    for f in frames[:6]:
        engine.step([(state, f)])
        cap = capture_stream(state, since)
        since = cap.position
        starts.append(cap.start)
        segments = [cap.rows_bytes()] if cap.start == 0 else [*segments, cap.rows_bytes()]
        head = cap.head_bytes()
    assert 0 in starts[1:] and any(s > 0 for s in starts)  # pruned once, incremental otherwise
    pieces = load_stream_parts(engine, head, segments)
    whole = load_stream(engine, dump_stream(state))
    for f in frames[6:]:
        a, b, c = (engine.step([(s, f)])[0] for s in (state, pieces, whole))
        np.testing.assert_array_equal(b.final.pts3d, a.final.pts3d)
        np.testing.assert_array_equal(c.final.pts3d, a.final.pts3d)
        assert b.memory == a.memory


# ---------------------------------------------------------------------------------------------- SIGKILL
def serve(flags: list[str], port: int | None = None) -> tuple[subprocess.Popen, str]:
    return serve_subprocess("--persist-every", str(PERSIST_EVERY), *flags, port=port)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def stored_frames(store: SessionStore, session_id: str) -> int:
    try:
        return read_session(store, session_id).record.frames_processed
    except (KeyError, FileNotFoundError):
        return 0


def test_a_session_resumes_bit_identically_after_sigkill(tiny_engine, small_frames, store_flags):
    flags, store = store_flags
    frames, sent = small_frames, 7  # 8 frames
    first = Recording()
    proc, url = serve(flags)
    try:

        async def stream_then_wait_for_the_store():
            c = StreamClient(url)
            created = await c.create_session({"encoding": "full", "frame_policy": "queue"})
            async for m in stream(url, frames[:sent], client=c, encoding="png", finish=False):
                first.add(m)
            deadline = time.monotonic() + 30  # the commit of frame 6's state runs off the model thread
            while stored_frames(store, created.id) < 6 and time.monotonic() < deadline:
                time.sleep(0.05)
            await c.close()
            return created

        created = run(stream_then_wait_for_the_store())
    finally:
        kill(proc)  # no shutdown snapshot: what is there was persisted while streaming

    assert stored_frames(store, created.id) == 6  # every 3 frames: 7 frames sent, the state of 6 is there
    second = Recording()
    proc, url = serve(flags)
    try:

        async def resume():
            c = StreamClient(url)
            c.attach(created.id, created.token)
            hello = None
            async for m in stream(url, frames[6:], client=c, encoding="png"):
                hello = hello or m
                second.add(m)
            traj = json.loads(await c.export("trajectory.json"))
            await c.close()
            return hello, traj

        hello, traj = run(resume())
    finally:
        kill(proc)
    assert hello.frames_processed == 6 and hello.last_seq == 5
    assert hello.resume is not None and (hello.resume.frames_processed, hello.resume.last_seq) == (6, 5)
    assert [f["index"] for f in traj["frames"]] == list(range(len(frames)))  # the export buffer came back too
    assert set(first.finals) == set(range(6)) and set(second.finals) == set(range(5, len(frames)))
    # the final of frame 5 came in both runs (the one-frame lag): recomputed from the restored state, equal
    np.testing.assert_array_equal(second.finals[5][1]["pts3d"], first.finals[5][1]["pts3d"])
    merged = Recording()
    merged.finals = {**first.finals, **second.finals}
    merged.memory = {**first.memory, **second.memory}
    merged.focal = first.focal
    ours, ref = merged.reconstruction(), reconstruct(tiny_engine, frames)
    np.testing.assert_array_equal(ours.pts3d, ref.pts3d)
    np.testing.assert_array_equal(ours.conf, ref.conf)
    np.testing.assert_array_equal(ours.skipped, ref.skipped)
    np.testing.assert_array_equal(ours.mem_tokens, ref.mem_tokens)
    assert store.sessions() == []  # the second run finished the stream: its unfinished state is gone


def test_a_reset_or_finish_leaves_nothing_to_restore(small_frames, store_flags):
    flags, store = store_flags
    proc, url = serve(flags)
    try:

        async def reset_after_persisting():
            c = StreamClient(url)
            created = await c.create_session({"encoding": "compact", "frame_policy": "queue"})
            async for _ in stream(url, small_frames[:4], client=c, encoding="png", finish=False):
                pass
            deadline = time.monotonic() + 30
            while stored_frames(store, created.id) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            persisted = stored_frames(store, created.id)
            await c.reset()
            deadline = time.monotonic() + 30
            while store.sessions() and time.monotonic() < deadline:
                time.sleep(0.05)
            await c.close()
            return created, persisted

        created, persisted = run(reset_after_persisting())
        assert persisted == 3
        assert store.sessions() == []  # the reset removed the old stream's state
    finally:
        kill(proc)
    proc, url = serve(flags)
    try:
        r = httpx.get(f"{url}/v1/sessions/{created.id}", headers={"Authorization": f"Bearer {created.token}"})
        assert r.status_code == 404, r.text
    finally:
        kill(proc)


@pytest.mark.parametrize("kill_after_s", [0.6, 1.3])
def test_a_reconnecting_client_gets_the_whole_run_whenever_the_server_dies(
    tiny_engine, small_frames, store_flags, kill_after_s
):
    """The library's ``reconnecting_stream`` across a SIGKILL at an arbitrary moment and a restart on the same
    port and store: re-sending from the resume point, its finals equal an uninterrupted offline run's."""
    from spann3r.client.client import reconnecting_stream

    flags, _ = store_flags
    port, frames, rec = free_port(), small_frames, Recording()
    procs = [serve(flags, port)[0]]
    url = f"http://127.0.0.1:{port}"

    async def crash_and_restart():
        await asyncio.sleep(kill_after_s)
        kill(procs[-1])
        procs.append((await asyncio.to_thread(serve, flags, port))[0])

    async def main():
        crasher = asyncio.create_task(crash_and_restart())
        resumes = []
        async for m in reconnecting_stream(
            url,
            frames,
            resend_from=lambda k: frames[k:],
            encoding="png",
            rate=4,
            settings={"encoding": "full", "frame_policy": "queue"},
        ):
            if getattr(m, "resume", None) is not None:
                resumes.append(m.resume)
            rec.add(m)
        await crasher
        return resumes

    try:
        resumes = run(main(), timeout=300)
    finally:
        for p in procs:
            kill(p)
    assert rec.finished and set(rec.finals) == set(range(len(frames)))
    assert len(resumes) == 1  # 8 frames at 4 fps: the server died mid-stream, the session resumed once
    ours, ref = rec.reconstruction(), reconstruct(tiny_engine, frames)
    np.testing.assert_array_equal(ours.pts3d, ref.pts3d)
    np.testing.assert_array_equal(ours.conf, ref.conf)
    np.testing.assert_array_equal(ours.mem_tokens, ref.mem_tokens)

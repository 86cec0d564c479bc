"""Snapshots never bring back a stream the client abandoned: a reset deletes the session's snapshot, so a server
killed with SIGKILL (no shutdown snapshot) and restarted on the same state dir does not restore the old stream."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx
from service_helpers import run, serve_subprocess

from spann3r.client import StreamClient
from spann3r.server.protocol import AckMsg, FinishedMsg, ResultMsg


def serve(state: Path) -> tuple[subprocess.Popen, str]:
    """``spann3r serve`` (tiny model) in a subprocess on ``state``; returns once it is ready."""
    return serve_subprocess("--state-dir", str(state))


async def receive_until(c: StreamClient, done) -> list:
    out = []
    while not out or not done(out[-1]):
        out.append(await c.receive())
    return out


def test_a_reset_stream_is_never_restored_after_sigkill(small_frames, tmp_path):
    state = tmp_path / "state"
    proc, url = serve(state)
    try:

        async def snapshot_finish_reset():
            c = StreamClient(url)
            created = await c.create_session({"frame_policy": "queue", "encoding": "compact"})
            await c.connect()
            for _, rgb in small_frames[:3]:
                await c.send_frame(rgb, "png")
            await receive_until(c, lambda m: isinstance(m, ResultMsg) and m.seq == 2)
            await c.control("snapshot")
            await receive_until(c, lambda m: isinstance(m, AckMsg) and m.action == "snapshot")
            snapshotted = sorted(p.name for p in state.iterdir())
            await c.finish()
            await receive_until(c, lambda m: isinstance(m, FinishedMsg))
            await c.reset()
            await receive_until(c, lambda m: isinstance(m, AckMsg) and m.action == "reset")
            await c.send_frame(small_frames[5][1], "png")  # frame 0 of the new stream
            fresh = await receive_until(c, lambda m: isinstance(m, ResultMsg))
            return created, snapshotted, fresh[-1]

        created, snapshotted, fresh = run(snapshot_finish_reset())
        assert snapshotted == [f"{created.id}.d", f"{created.id}.json"]
        assert fresh.frame_index == 0
    finally:
        proc.send_signal(signal.SIGKILL)  # no shutdown snapshot
        proc.wait()

    assert not list(state.glob(f"{created.id}*"))  # the reset deleted the old stream's snapshot
    proc, url = serve(state)
    try:
        r = httpx.get(f"{url}/v1/sessions/{created.id}", headers={"Authorization": f"Bearer {created.token}"})
        assert r.status_code == 404, r.text  # not the abandoned stream (which would say frames_processed=3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

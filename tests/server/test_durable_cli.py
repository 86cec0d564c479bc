"""``spann3r stream`` across a server crash: it reconnects with backoff while the server is away and sends the
frames again from where the restarted server resumed, so its npz equals ``spann3r reconstruct``'s; when the server
never comes back it fails, says why, and writes no partial file."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from service_helpers import free_port
from test_durable_sessions import kill, serve, stored_frames

from spann3r.server.store import FolderStore

SPANN3R = [sys.executable, "-m", "spann3r.cli"]


def write_frames(folder: Path, frames) -> Path:
    folder.mkdir()
    for name, rgb in frames:
        cv2.imwrite(str(folder / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return folder


def start_stream(frames: Path, url: str, out: Path, *extra: str) -> subprocess.Popen:
    """``spann3r stream`` at 3 frames/s: slow enough to kill the server in the middle."""
    return subprocess.Popen(
        [*SPANN3R, "stream", str(frames), "--url", url, "--out", str(out), "--encoding", "rgb8", "--rate", "3", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_persisted(store: FolderStore, frames: int, timeout: float = 60) -> None:
    """Until the store holds a session with at least ``frames`` frames."""
    deadline = time.monotonic() + timeout
    while not any(stored_frames(store, sid) >= frames for sid in store.sessions()):
        assert time.monotonic() < deadline, f"no session with {frames} frames was persisted"
        time.sleep(0.05)


def test_stream_survives_a_server_crash_and_writes_the_whole_run(small_frames, tmp_path):
    frames = write_frames(tmp_path / "frames", small_frames)
    state, port = tmp_path / "state", free_port()
    server, url = serve(["--state-dir", str(state)], port)
    client = start_stream(frames, url, tmp_path / "s.npz", "--reconnect-timeout", "120")
    try:
        wait_for_persisted(FolderStore(state), 3)
        kill(server)  # mid-stream: frames sent after the persisted state are lost with it
        time.sleep(1.0)  # the client finds the server away and backs off
        server, _ = serve(["--state-dir", str(state)], port)
        _, stderr = client.communicate(timeout=300)
    finally:
        kill(server)
        if client.poll() is None:
            client.kill()
    assert client.returncode == 0, stderr
    assert "resumed after frame" in stderr
    offline = subprocess.run(
        [
            *SPANN3R,
            "reconstruct",
            str(frames),
            "--model",
            "tiny",
            "--weights",
            "synthetic",
            "--out",
            str(tmp_path / "r.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert offline.returncode == 0, offline.stderr
    s, r = np.load(tmp_path / "s.npz"), np.load(tmp_path / "r.npz")
    assert sorted(s.files) == sorted(r.files) and len(s["pts3d"]) == len(small_frames)
    for key in r.files:
        np.testing.assert_array_equal(s[key], r[key], err_msg=key)  # NaN poses compare equal


def test_stream_fails_clearly_when_the_server_never_comes_back(small_frames, tmp_path):
    frames = write_frames(tmp_path / "frames", small_frames)
    state = tmp_path / "state"
    server, url = serve(["--state-dir", str(state)])
    client = start_stream(frames, url, tmp_path / "s.npz", "--reconnect-timeout", "3")
    try:
        wait_for_persisted(FolderStore(state), 3)
        kill(server)
        _, stderr = client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode != 0
    assert "did not come back within 3 s" in stderr and "not written" in stderr, stderr
    assert not (tmp_path / "s.npz").exists()


def test_a_resumed_source_sends_again_or_reports_the_gap():
    from spann3r.client.client import ResumeGap, _ResumableSource

    frames = [(f"f{i}", i) for i in range(10)]
    files = _ResumableSource(frames, resend_from=lambda k: frames[k:])
    assert files.resume_at(0) is None and [f for _, f in zip(range(6), files)] == frames[:6]
    assert files.resume_at(3) is None and list(files) == frames[3:]  # lost 3..5: sent again
    live = _ResumableSource(iter(frames), resend_from=None)
    assert [f for _, f in zip(range(6), live)] == frames[:6]
    gap = live.resume_at(3)
    assert gap == ResumeGap(3, 5) and list(gap.seqs) == [3, 4, 5] and live.sent == 6
    assert list(live) == frames[6:]  # a live source goes on; the next seq is its position

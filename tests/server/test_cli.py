"""The commands as a user runs them: ``spann3r serve`` (flags + SPANN3R_* environment) in its own process,
``spann3r stream`` writing the same npz as ``spann3r reconstruct``, graceful shutdown snapshotting sessions."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from service_helpers import free_port, serve_subprocess

from spann3r.cli.serve import settings_from_args
from spann3r.server.settings import ServeSettings

SPANN3R = [sys.executable, "-m", "spann3r.cli"]


def test_flags_and_environment(monkeypatch, capsys):
    from spann3r.cli.main import build_parser, main

    monkeypatch.setenv("SPANN3R_MAX_SESSIONS", "3")
    monkeypatch.setenv("SPANN3R_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("SPANN3R_MAX_FPS", "9")
    args = build_parser("serve").parse_args(["serve", "--model", "tiny", "--max-fps", "12.5", "--port", "0"])
    s = settings_from_args(args)
    assert (s.model, s.max_sessions, s.max_fps, s.port) == ("tiny", 3, 12.5, 0)  # flags win over env
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    # every setting has a flag
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    help_text = capsys.readouterr().out
    for name in ServeSettings.model_fields:
        assert "--" + name.replace("_", "-") in help_text, name
    with pytest.raises(Exception, match="tls"):
        settings_from_args(build_parser("serve").parse_args(["serve", "--tls-cert", "cert.pem"]))


def test_bad_weights_fail_in_one_line(tmp_path):
    r = subprocess.run(
        [*SPANN3R, "serve", "--model", "tiny", "--weights", str(tmp_path / "none.pth"), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "checkpoint not found" in r.stderr and "Traceback" not in r.stderr


def write_frames(folder: Path, frames) -> Path:
    """(name, RGB) frames as image files in a new folder, for the commands that read folders."""
    folder.mkdir()
    for name, rgb in frames:
        cv2.imwrite(str(folder / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture
def served(tmp_path):
    """``spann3r serve`` in a subprocess (tiny model, state dir, settings partly from the environment)."""
    env = {"SPANN3R_MAX_FPS": "40", "SPANN3R_STATE_DIR": str(tmp_path / "state")}
    proc, url = serve_subprocess(env=env)
    yield url, proc, tmp_path / "state"
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_stream_command_writes_what_reconstruct_writes(served, small_frames, tmp_path):
    url, proc, state = served
    frames = write_frames(tmp_path / "frames", small_frames[:5])
    streamed = subprocess.run(
        [
            *SPANN3R,
            "stream",
            str(frames),
            "--url",
            url,
            "--out",
            str(tmp_path / "s.npz"),
            "--encoding",
            "rgb8",
            "--dtype",
            "float32",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert streamed.returncode == 0, streamed.stderr
    assert "UNTRAINED MODEL" in streamed.stderr  # synthetic weights are announced
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
    assert sorted(s.files) == sorted(r.files)
    for key in r.files:
        np.testing.assert_array_equal(s[key], r[key], err_msg=key)  # NaN poses compare equal

    # the session the command created is still held (a client may export it); SIGTERM saves it
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a graceful shutdown
    saved = sorted(p.suffix for p in state.iterdir())
    assert saved == [".d", ".json"]  # the session's manifest and its blobs (server/store.py)


def test_stream_command_refuses_a_bad_input(served, tmp_path):
    url, _, _ = served
    r = subprocess.run(
        [*SPANN3R, "stream", str(tmp_path / "nothing"), "--url", url, "--out", str(tmp_path / "o.npz")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "input not found" in r.stderr
    r = subprocess.run(
        [*SPANN3R, "stream", str(tmp_path), "--url", "http://127.0.0.1:9", "--out", str(tmp_path / "o.npz")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "no images" in r.stderr


# Runs the CLI with the service's heavy packages made unimportable, as on a robot laptop with only the base install.
WITHOUT_SERVER_PACKAGES = """
import importlib.abc, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "fastapi", "starlette", "uvicorn", "PIL", "pydantic_settings"}:
            raise ImportError(f"{name} is not installed (blocked by the test)")

sys.meta_path.insert(0, Blocked())
from spann3r.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_stream_needs_neither_torch_nor_the_server_packages(served, small_frames, tmp_path):
    url, _, _ = served
    frames = write_frames(tmp_path / "frames", small_frames[:3])
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            WITHOUT_SERVER_PACKAGES,
            "stream",
            str(frames),
            "--url",
            url,
            "--out",
            str(tmp_path / "s.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "s.npz") as s:
        assert s["pts3d"].shape == (3, 224, 224, 3) and np.isfinite(s["pts3d"]).all()
    # and the block is real: the service's commands cannot start without those packages
    r = subprocess.run(
        [sys.executable, "-c", WITHOUT_SERVER_PACKAGES, "serve", "--help"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode != 0 and "blocked by the test" in r.stderr


def test_stream_command_records_mcap_equal_to_its_npz(served, small_frames, tmp_path):
    """``spann3r stream --mcap`` records live; every cloud equals the confident points of the npz it writes."""
    from rosbags.highlevel import AnyReader

    url, _, _ = served
    frames = write_frames(tmp_path / "frames", small_frames[:3])
    r = subprocess.run(
        [
            *SPANN3R,
            "stream",
            str(frames),
            "--url",
            url,
            "--out",
            str(tmp_path / "s.npz"),
            "--encoding",
            "rgb8",
            "--mcap",
            str(tmp_path / "s.mcap"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    arrays = dict(np.load(tmp_path / "s.npz"))
    with AnyReader([tmp_path / "s.mcap"]) as reader:
        clouds = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages() if c.topic == "/spann3r/points"]
    assert len(clouds) == 3
    for i, cloud in enumerate(clouds):
        conf = arrays["conf"][i]
        keep = (conf - 1) / conf > 1e-3
        xyz = np.frombuffer(cloud.data.tobytes(), "<f4").reshape(-1, cloud.point_step // 4)[:, :3]
        np.testing.assert_array_equal(xyz, arrays["pts3d"][i][keep])


def test_server_defaults_fill_what_a_client_did_not_choose():
    from spann3r.server.protocol import SessionSettings

    s = ServeSettings(default_encoding="full", default_pose_method="pnp_ransac")
    assert (s.session_settings(None).encoding, s.session_settings(None).pose_method) == ("full", "pnp_ransac")
    merged = s.session_settings(SessionSettings.model_validate({"preview": False}))
    assert (merged.encoding, merged.pose_method, merged.preview) == ("full", "pnp_ransac", False)
    assert s.session_settings(SessionSettings.model_validate({"encoding": "compact"})).encoding == "compact"

"""Poses through the live service on rendered pointmaps (bench/standin.py's room, known camera): the default
robust solver recovers the true trajectory, PnP-RANSAC agrees, and known intrinsics set the reported focal."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from service_helpers import live_server, run

from spann3r.client import Recording, StreamClient, stream
from spann3r.server.protocol import ResultMsg

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from standin import StandInEngine, loop_pose

FRAMES = 6


def trajectory_truth(n: int) -> np.ndarray:
    w2c0 = np.linalg.inv(loop_pose(0))
    return np.stack([w2c0 @ loop_pose(k) for k in range(n)])


def rotation_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = (np.trace(a[:3, :3].T @ b[:3, :3]) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(cos, -1, 1))))


def stream_poses(settings: dict) -> tuple[Recording, list[ResultMsg]]:
    frames = [(f"{i}.png", np.full((240, 320, 3), 40 * i, np.uint8)) for i in range(FRAMES)]
    with live_server(StandInEngine()) as srv:

        async def main():
            client = StreamClient(srv.url)
            messages = [
                m
                async for m in stream(
                    srv.url,
                    frames,
                    client=client,
                    encoding="rgb8",
                    settings={"encoding": "full", "frame_policy": "queue", **settings},
                )
            ]
            await client.close()
            return messages

        messages = run(main())
    rec = Recording()
    for m in messages:
        rec.add(m)
    return rec, [m for m in messages if isinstance(m, ResultMsg)]


@pytest.mark.parametrize("method", ["robust", "pnp_ransac"])
def test_service_poses_follow_the_rendered_trajectory(method):
    rec, results = stream_poses({"pose_method": method, "preview": True})
    ours = rec.reconstruction()
    truth = trajectory_truth(FRAMES)
    assert ours.pose_valid.all()
    for c2w, true in zip(ours.poses, truth):
        assert rotation_deg(c2w, true) < 0.5
        assert np.linalg.norm(c2w[:3, 3] - true[:3, 3]) < 0.02  # the room is ~5 m wide; noise is ~0.5 %
    previews = [r.preview for r in results if r.preview is not None]
    assert previews and all(p.pose.valid for p in previews)  # previews get poses too (they were asked for)


def test_no_pose_work_for_previews_nobody_asked_for():
    _, results = stream_poses({"preview": False})
    assert all(r.preview is None for r in results)


def test_known_intrinsics_set_the_focal_and_keep_the_poses():
    """The stand-in's camera at the model resolution is square with its principal point at (112, 112). The client
    states it in pixels of its 320x240 frames, which preprocessing resizes to 298x224 and crops 37 px off the
    left: the service must map it back exactly (a naive 224/240 scaling of fx would be 0.2 % off)."""
    from standin import focal_px

    focal, sx, sy, left = focal_px(), 298 / 320, 224 / 240, 37
    intrinsics = [focal / sx, focal / sy, (112 + 0.5 + left) / sx - 0.5, (112 + 0.5) / sy - 0.5]
    rec, _ = stream_poses({"intrinsics": intrinsics})
    ours = rec.reconstruction()
    assert ours.focal == pytest.approx(focal, rel=1e-9)
    assert ours.pose_valid.all()
    for c2w, true in zip(ours.poses, trajectory_truth(FRAMES)):
        assert rotation_deg(c2w, true) < 0.5
        assert np.linalg.norm(c2w[:3, 3] - true[:3, 3]) < 0.02


def test_service_poses_equal_the_offline_reconstruction():
    """Each map is warm-started from its stream's latest final pose, in the service (finals and previews of a
    step in one batched solve) as offline (one final per call): the same rule gives the same trajectory."""
    from spann3r.core.reconstruct import reconstruct

    rec, _ = stream_poses({"preview": True})
    ours = rec.reconstruction()
    frames = [(f"{i}.png", np.full((240, 320, 3), 40 * i, np.uint8)) for i in range(FRAMES)]
    ref = reconstruct(StandInEngine(), frames)
    assert ours.pose_valid.all() and ref.pose_valid.all()
    np.testing.assert_allclose(ours.poses, ref.poses, atol=1e-6)


def test_the_pose_track_survives_the_session_record():
    """The pose track's latest final pose is part of the persisted session: a session restored from its record
    (JSON round trip) solves its next maps from the same warm start, so its poses equal an uninterrupted run's."""
    from spann3r.core.preprocess import prepare
    from spann3r.server.protocol import SessionSettings
    from spann3r.server.results import StreamCameras, step_cameras
    from spann3r.server.sessions import Session
    from spann3r.server.snapshots import SessionRecord, merge_export

    engine, settings = StandInEngine(), SessionSettings(preview=True)
    stream_state = engine.new_stream()
    steps = [engine.step([(stream_state, prepare(np.full((240, 320, 3), 9, np.uint8)))])[0] for _ in range(FRAMES)]

    def solve(cameras: StreamCameras, step_results) -> list:
        return [step_cameras([(cameras, r, settings, (320, 240))])[0].poses for r in step_results]

    whole = solve(StreamCameras(), steps)
    s = Session(settings, 10_000, 30.0)
    before = solve(s.cameras, steps[:3])
    record = SessionRecord.from_json(s.record(3, 2, s.cameras.track_state()).to_json(), s.id)
    assert record.pose_track is not None and record.pose_track["last"] is not None
    restored = Session.from_record(record, merge_export([]), 10_000, 30.0)
    after = solve(restored.cameras, steps[3:])
    assert all(p.valid for poses in whole for p in poses)
    for got, want in zip(before + after, whole):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a.c2w, b.c2w)


def test_a_failing_camera_solve_reports_invalid_poses_and_keeps_the_results(monkeypatch, caplog):
    """The solve runs after the streams stepped: if it raised, the step's results would be lost while the streams
    moved on. Its failure is logged and the maps go out with invalid poses; the tracks do not move."""
    import spann3r.server.results as results
    from spann3r.core.preprocess import prepare
    from spann3r.server.protocol import SessionSettings

    engine, settings = StandInEngine(), SessionSettings(preview=True)
    stream_state = engine.new_stream()
    steps = [engine.step([(stream_state, prepare(np.full((240, 320, 3), 9, np.uint8)))])[0] for _ in range(3)]
    cams = results.StreamCameras()
    for r in steps[:2]:
        results.step_cameras([(cams, r, settings, (320, 240))])
    assert cams.track is not None and cams.track.last is not None
    last = cams.track.last.copy()

    def broken(*args, **kwargs):
        raise RuntimeError("linalg failure")

    monkeypatch.setattr(results, "solve_tracks", broken)
    (got,) = results.step_cameras([(cams, steps[2], settings, (320, 240))])
    assert len(got.poses) == 2 and not any(p.valid for p in got.poses) and got.calibration is cams.calibration
    assert np.isnan(got.poses[0].c2w).all() and "solving the cameras of 2 maps failed" in caplog.text
    np.testing.assert_array_equal(cams.track.last, last)

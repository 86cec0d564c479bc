"""Offline reconstruction of an ordered sequence: frames → engine → poses → arrays (the ``reconstruct`` CLI)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np

from .camera import PoseTrack, TrackMap, estimate_focal, solve_tracks
from .engine import Engine, FrameOutput, MemoryTrace, Session
from .intrinsics import Intrinsics, focal_intrinsics, model_intrinsics
from .preprocess import prepare
from .records import Reconstruction

log = logging.getLogger(__name__)


def assemble(
    finals: list[FrameOutput],
    traces: list[MemoryTrace],
    names: list[str],
    with_poses: bool = True,
    K: np.ndarray | None = None,
    pose_method: str = "robust",
) -> Reconstruction:
    """Finals (in frame order) + memory traces → arrays, the focal and a pose per frame.

    ``K``: the camera at the model resolution (``core.intrinsics.model_intrinsics`` of known intrinsics); by
    default the focal estimated from frame 0 with the principal point at the centre. Poses are solved one frame
    per call, each warm-started from the latest valid one (``camera.solve_tracks``, as the service does)."""
    pts = np.stack([f.pts3d for f in finals])
    conf = np.stack([f.conf for f in finals])
    colors = np.stack([f.colors for f in finals])
    n = len(finals)
    if K is None:
        K = focal_intrinsics(estimate_focal(pts[0]))
    poses = np.full((n, 4, 4), np.nan, dtype=np.float64)
    valid = np.zeros(n, dtype=bool)
    if with_poses:
        track = PoseTrack(K)
        for i in range(n):
            (pose,) = solve_tracks([(track, [TrackMap(pts[i], conf[i], final=True)], pose_method)])[0]
            poses[i], valid[i] = pose.c2w, pose.valid
    skipped = np.ones(n, dtype=bool)
    tokens = np.zeros(n, dtype=np.int32)
    for t in traces:
        skipped[t.frame_index], tokens[t.frame_index] = t.skipped, t.mem_tokens
    if traces:
        tokens[n - 1] = traces[-1].mem_tokens
    return Reconstruction(pts, conf, colors, poses, valid, float(K[0, 0]), skipped, tokens, names, traces)


def reconstruct(
    engine: Engine,
    frames: Iterable[tuple[str, np.ndarray]],
    preview: bool = False,
    progress: Callable[[int], None] | None = None,
    with_poses: bool = True,
    intrinsics: Intrinsics | None = None,
    pose_method: str = "robust",
) -> Reconstruction:
    """Stream ``(name, RGB uint8)`` frames through one session. Previews are off by default: the last frame's
    final output is then computed once, in ``finish``, and no other preview head runs. ``intrinsics``: the
    camera in pixels of the given frames (mapped through preprocessing's crop and resize; the first frame's size
    is the stream's)."""
    session = Session(engine, preview=preview)
    finals: list[FrameOutput] = []
    traces: list[MemoryTrace] = []
    names: list[str] = []
    K = None
    for name, rgb in frames:
        if intrinsics is not None and K is None:
            K = model_intrinsics(intrinsics, rgb.shape[1], rgb.shape[0])
        result = session.push(prepare(rgb))
        names.append(name)
        if result.final is not None:
            finals.append(result.final.on_host())  # many maps: kept on the host
        if result.memory is not None:
            traces.append(result.memory)
        if progress:
            progress(1)
    finals.append(session.finish())
    return assemble(finals, traces, names, with_poses, K, pose_method)

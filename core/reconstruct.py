"""Offline reconstruction of an ordered sequence: frames → engine → poses → arrays (the ``reconstruct`` CLI)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np

from .camera import estimate_focal, solve_pose
from .engine import Engine, FrameOutput, MemoryTrace, Session
from .preprocess import prepare
from .records import Reconstruction

log = logging.getLogger(__name__)


def assemble(
    finals: list[FrameOutput], traces: list[MemoryTrace], names: list[str], with_poses: bool = True
) -> Reconstruction:
    """Finals (in frame order) + memory traces → arrays, focal of frame 0 and a pose per frame."""
    pts = np.stack([f.pts3d for f in finals])
    conf = np.stack([f.conf for f in finals])
    colors = np.stack([f.colors for f in finals])
    n = len(finals)
    focal = estimate_focal(pts[0])
    poses = np.full((n, 4, 4), np.nan, dtype=np.float64)
    valid = np.zeros(n, dtype=bool)
    if with_poses:
        for i in range(n):
            p = solve_pose(pts[i], focal)
            poses[i], valid[i] = p.c2w, p.valid
    skipped = np.ones(n, dtype=bool)
    tokens = np.zeros(n, dtype=np.int32)
    for t in traces:
        skipped[t.frame_index], tokens[t.frame_index] = t.skipped, t.mem_tokens
    if traces:
        tokens[n - 1] = traces[-1].mem_tokens
    return Reconstruction(pts, conf, colors, poses, valid, focal, skipped, tokens, names, traces)


def reconstruct(
    engine: Engine,
    frames: Iterable[tuple[str, np.ndarray]],
    preview: bool = False,
    progress: Callable[[int], None] | None = None,
    with_poses: bool = True,
) -> Reconstruction:
    """Stream ``(name, RGB uint8)`` frames through one session. Previews are off by default: the last frame's
    final output is then computed once, in ``finish``, and no other preview head runs."""
    session = Session(engine, preview=preview)
    finals: list[FrameOutput] = []
    traces: list[MemoryTrace] = []
    names: list[str] = []
    for name, rgb in frames:
        result = session.push(prepare(rgb))
        names.append(name)
        if result.final is not None:
            finals.append(result.final)
        if result.memory is not None:
            traces.append(result.memory)
        if progress:
            progress(1)
    finals.append(session.finish())
    return assemble(finals, traces, names, with_poses)

"""The result builder: one model step's outputs → the bytes sent to clients, and the export buffer's items.

Calibration (focal and the compact encoding's auto scale, fixed by a stream's frame 0), camera poses, encoding
of the maps and the message. CPU work only, no session state and no asyncio: the worker runs these in its
post-processing pool and applies what they return.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core.camera import Pose, estimate_focal, solve_pose
from ..core.engine import FrameOutput, MemoryTrace, StepResult
from ..core.export import fuse
from .encoding import choose_scale, encode_frame
from .protocol import FinishedMsg, FrameData, MemoryInfo, ResultMsg, SessionSettings, pack

FAILED_CALIBRATION_SCALE = 1e-3  # compact scale when frame 0's calibration fails


@dataclass(frozen=True)
class Calibration:
    """Per-stream constants fixed by frame 0's final: focal, and the auto scale of compact positions."""

    focal: float
    auto_scale: float


@dataclass(frozen=True)
class Cameras:
    """The focal the poses were solved with, and one pose per map."""

    focal: float
    poses: list[Pose]


@dataclass(frozen=True)
class ExportItem:
    """A final's confident points and camera, for the session's export buffer."""

    index: int
    xyz: np.ndarray
    rgb: np.ndarray
    c2w: np.ndarray
    valid: bool


@dataclass(frozen=True)
class FrameIdentity:
    """Which client frame a step ran, for the message: its seq and timestamp, and the seq of the frame whose
    final the step produced (frame index − 1; None for index 0)."""

    seq: int
    ts: float
    prev_seq: int | None
    received: float  # time.perf_counter() at arrival


def solve_cameras(maps: Sequence[np.ndarray], focal: float | None = None) -> Cameras:
    """Poses of pointmaps in the stream's frame; the focal is estimated from the first map when not given.
    The one place the camera solver is called (a batched solver swaps in here)."""
    if focal is None:
        focal = estimate_focal(maps[0])
    return Cameras(focal, [solve_pose(m, focal) for m in maps])


def calibration_of(final: FrameOutput, focal: float, conf_thresh: float) -> Calibration:
    """The stream's calibration from frame 0's final and the focal estimated from it."""
    return Calibration(focal, choose_scale(final.pts3d, final.conf, conf_thresh))


def failed_calibration() -> Calibration:
    return Calibration(float("nan"), FAILED_CALIBRATION_SCALE)


def memory_info(trace: MemoryTrace | None) -> MemoryInfo | None:
    if trace is None:
        return None
    return MemoryInfo(step=trace.step, frame_index=trace.frame_index, similarity=trace.similarity,
                      skipped=trace.skipped, pruned=trace.pruned, mem_tokens=trace.mem_tokens, wm=trace.wm,
                      lm=trace.lm, attn_zeroed_frac=trace.attn_zeroed_frac)


def frame_data(out: FrameOutput, seq: int, pose: Pose, cal: Calibration, settings: SessionSettings) -> FrameData:
    scale = settings.compact_scale or cal.auto_scale
    return encode_frame(out.index, seq, out.kind, out.pts3d, out.conf, out.colors, pose.c2w, pose.valid,
                        cal.focal if math.isfinite(cal.focal) else None, settings, scale)


def export_item(out: FrameOutput, pose: Pose, conf_thresh: float) -> ExportItem:
    xyz, rgb = fuse(out.pts3d[None], out.conf[None], out.colors[None], conf_thresh)
    return ExportItem(out.index, xyz, rgb, pose.c2w, pose.valid)


def step_outputs(res: StepResult) -> list[FrameOutput]:
    """The maps of a step that need a pose: the final (of the previous frame), then the preview."""
    return [o for o in (res.final, res.preview) if o is not None]


def result_bytes(frame: FrameIdentity, res: StepResult, cameras: Cameras, cal: Calibration | None,
                 settings: SessionSettings, timings: dict[str, float]) -> tuple[bytes, ExportItem | None]:
    """A step's result message (and the final's export item). ``cameras``: poses of ``step_outputs(res)``.
    Adds ``encode_s`` and ``server_s`` to ``timings``."""
    t0 = time.perf_counter()
    pose_of = {id(o): p for o, p in zip(step_outputs(res), cameras.poses)}
    final = preview = export = None
    if res.final is not None:
        pose = pose_of[id(res.final)]
        final = frame_data(res.final, frame.prev_seq if frame.prev_seq is not None else -1, pose, cal, settings)
        export = export_item(res.final, pose, settings.conf_thresh)
    if res.preview is not None:
        preview = frame_data(res.preview, frame.seq, pose_of[id(res.preview)], cal, settings)
    msg = ResultMsg.model_construct(type="result", seq=frame.seq, frame_index=res.frame_index, ts=frame.ts,
                                    final=final, preview=preview, memory=memory_info(res.memory), timings=timings)
    timings["encode_s"] = time.perf_counter() - t0
    timings["server_s"] = time.perf_counter() - frame.received
    return pack(msg), export


def finished_bytes(frames: int, out: FrameOutput, seq: int, pose: Pose, cal: Calibration,
                   settings: SessionSettings) -> tuple[bytes, ExportItem]:
    """The finished message (the last frame's final) and its export item."""
    msg = FinishedMsg.model_construct(type="finished", frames=frames, final=frame_data(out, seq, pose, cal, settings))
    return pack(msg), export_item(out, pose, settings.conf_thresh)

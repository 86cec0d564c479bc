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

from ..core.camera import CameraPose, estimate_focal, solve_poses
from ..core.engine import FrameOutput, MemoryTrace, StepResult
from ..core.intrinsics import Intrinsics, focal_intrinsics, model_intrinsics
from .encoding import choose_scale, encode_frame, kept_pixels, take_pixels
from .protocol import FinishedMsg, FrameData, MemoryInfo, PoseMethod, ResultMsg, SessionSettings, pack

FAILED_CALIBRATION_SCALE = 1e-3  # compact scale when frame 0's calibration fails


@dataclass(frozen=True)
class Calibration:
    """Per-stream constants fixed by frame 0's final: the camera at the model's 224² resolution (the session's
    known intrinsics, or the focal estimated from frame 0's final with the principal point at the centre) and
    the auto scale of compact positions. Plain numbers, so the snapshot record stores it as JSON."""

    camera: tuple[float, float, float, float]  # fx, fy, cx, cy in model pixels
    auto_scale: float

    @property
    def focal(self) -> float:
        """The focal reported to clients and used by exports (fx)."""
        return float(self.camera[0])

    @property
    def K(self) -> np.ndarray:
        return Intrinsics(*self.camera).matrix()


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
    ts: float | None  # the client's capture time, echoed
    prev_seq: int | None
    received: float  # time.perf_counter() at arrival


def camera_of(K: np.ndarray) -> tuple[float, float, float, float]:
    return float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])


def calibrate(final: FrameOutput, settings: SessionSettings, source_size: tuple[int, int]) -> Calibration:
    """The stream's calibration from frame 0's final. Known intrinsics (in pixels of the ``source_size`` images
    the client sends) are mapped through preprocessing's crop and resize; otherwise the focal is estimated."""
    if settings.intrinsics is not None:
        K = model_intrinsics(Intrinsics(*settings.intrinsics), *source_size)
    else:
        K = focal_intrinsics(estimate_focal(final.pts3d))
    return Calibration(camera_of(K), choose_scale(final.pts3d, final.conf, settings.conf_thresh))


def failed_calibration() -> Calibration:
    """A calibration whose camera ``solve_poses`` flags invalid (every pose of the stream is reported invalid)."""
    return Calibration(camera_of(focal_intrinsics(float("nan"))), FAILED_CALIBRATION_SCALE)


def solve_cameras(maps: Sequence[FrameOutput], cal: Calibration, method: PoseMethod) -> list[CameraPose]:
    """Poses of a step's maps in the stream's frame, in one call of the batched solver (``core.camera``)."""
    if not maps:
        return []
    c2w, valid = solve_poses(np.stack([m.pts3d for m in maps]), np.stack([m.conf for m in maps]), cal.K, method=method)
    return [CameraPose(c2w[i], bool(valid[i])) for i in range(len(maps))]


def solve_step_cameras(
    jobs: Sequence[tuple[Sequence[FrameOutput], Calibration | None, PoseMethod]],
) -> list[list[CameraPose]]:
    """Poses of the maps of several streams (one model step's sessions: maps, calibration, pose method each), in
    one call of the batched solver per pose method, each map with its stream's camera."""
    poses: list[list[CameraPose]] = [[] for _ in jobs]
    for method in dict.fromkeys(m for maps, _, m in jobs if maps):
        mine = [(i, o, cal) for i, (maps, cal, m) in enumerate(jobs) if m == method for o in maps]
        assert all(cal is not None for _, _, cal in mine)  # a step with maps waited for its stream's calibration
        c2w, valid = solve_poses(
            np.stack([o.pts3d for _, o, _ in mine]),
            np.stack([o.conf for _, o, _ in mine]),
            np.stack([cal.K for _, _, cal in mine if cal is not None]),
            method=method,
        )
        for k, (i, _, _) in enumerate(mine):
            poses[i].append(CameraPose(c2w[k], bool(valid[k])))
    return poses


def memory_info(trace: MemoryTrace | None) -> MemoryInfo | None:
    if trace is None:
        return None
    return MemoryInfo(
        step=trace.step,
        frame_index=trace.frame_index,
        similarity=trace.similarity,
        skipped=trace.skipped,
        pruned=trace.pruned,
        mem_tokens=trace.mem_tokens,
        wm=trace.wm,
        lm=trace.lm,
        attn_zeroed_frac=trace.attn_zeroed_frac,
    )


def frame_data(out: FrameOutput, seq: int, pose: CameraPose, cal: Calibration, settings: SessionSettings) -> FrameData:
    scale = settings.compact_scale or cal.auto_scale
    return encode_frame(
        out.index,
        seq,
        out.kind,
        out.pts3d,
        out.conf,
        out.colors,
        pose.c2w,
        pose.valid,
        cal.focal if math.isfinite(cal.focal) else None,
        settings,
        scale,
    )


def export_item(out: FrameOutput, pose: CameraPose, conf_thresh: float) -> ExportItem:
    """``core.export.fuse`` of the one map (its confident finite points), with the encoder's faster gathers."""
    index = kept_pixels(out.pts3d, out.conf, conf_thresh)
    xyz = take_pixels(out.pts3d, index).astype(np.float32, copy=False)
    rgb = take_pixels(out.colors, index).astype(np.uint8, copy=False)
    return ExportItem(out.index, xyz, rgb, pose.c2w, pose.valid)


def step_outputs(res: StepResult) -> list[FrameOutput]:
    """The maps of a step that need a pose: the final (of the previous frame), then the preview."""
    return [o for o in (res.final, res.preview) if o is not None]


def result_bytes(
    frame: FrameIdentity,
    res: StepResult,
    poses: list[CameraPose],
    cal: Calibration | None,
    settings: SessionSettings,
    timings: dict[str, float],
) -> tuple[bytes, ExportItem | None]:
    """A step's result message (and the final's export item). ``poses``: those of ``step_outputs(res)``.
    Adds ``encode_s`` and ``server_s`` to ``timings`` (both in the message), then ``pack_s`` (not in it)."""
    t0 = time.perf_counter()
    pose_of = {id(o): p for o, p in zip(step_outputs(res), poses)}
    final = preview = export = None
    if res.final is not None:
        assert cal is not None  # a step with maps waited for its stream's calibration
        pose = pose_of[id(res.final)]
        final = frame_data(res.final, frame.prev_seq if frame.prev_seq is not None else -1, pose, cal, settings)
        export = export_item(res.final, pose, settings.conf_thresh)
    if res.preview is not None:
        assert cal is not None
        preview = frame_data(res.preview, frame.seq, pose_of[id(res.preview)], cal, settings)
    msg = ResultMsg.model_construct(
        type="result",
        seq=frame.seq,
        frame_index=res.frame_index,
        ts=frame.ts,
        final=final,
        preview=preview,
        memory=memory_info(res.memory),
        timings=timings,
    )
    timings["encode_s"] = time.perf_counter() - t0
    timings["server_s"] = time.perf_counter() - frame.received
    t_pack = time.perf_counter()
    data = pack(msg)
    timings["pack_s"] = time.perf_counter() - t_pack  # for the worker's metrics: added after the message is packed
    return data, export


def finished_bytes(
    frames: int, out: FrameOutput, seq: int, pose: CameraPose, cal: Calibration, settings: SessionSettings
) -> tuple[bytes, ExportItem]:
    """The finished message (the last frame's final) and its export item."""
    msg = FinishedMsg.model_construct(type="finished", frames=frames, final=frame_data(out, seq, pose, cal, settings))
    return pack(msg), export_item(out, pose, settings.conf_thresh)

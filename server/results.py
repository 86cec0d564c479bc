"""The result builder: one model step's outputs → the bytes sent to clients, and the export buffer's items.

Calibration (focal and the compact encoding's auto scale, fixed by a stream's frame 0, from its host copy) and
camera poses, on the model thread right after each step (``step_cameras``: one batched solve for the whole step,
on the maps where the engine left them); encoding of the maps (on an accelerator, on the device: only what is
sent is copied to the host; see ``encoding``) and the message in the worker's post-processing pool. No asyncio
here: the worker applies what these return.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..core.camera import CameraPose, PoseTrack, TrackMap, estimate_focal, solve_tracks
from ..core.engine import FrameOutput, MemoryTrace, StepResult
from ..core.intrinsics import Intrinsics, focal_intrinsics, model_intrinsics
from .encoding import choose_scale, confident_pixels, encode_frame, on_accelerator, take_pixels
from .map_kernels import confident_points
from .protocol import FinishedMsg, FrameData, MemoryInfo, ResultMsg, SessionSettings, pack

log = logging.getLogger(__name__)

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
    """A final's confident points and camera, for the session's export buffer, which takes xyz and rgb over as they
    are (``export_item`` makes them fresh and compact, for nothing else)."""

    index: int
    xyz: np.ndarray
    rgb: np.ndarray
    c2w: np.ndarray
    valid: bool
    every: int = 1  # xyz and rgb keep 1 confident point in this many (the export buffer's level when made)


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


@dataclass
class StreamCameras:
    """A stream's cameras: its calibration, fixed by frame 0's final, and its pose track (``core.camera``:
    every map warm-started from the stream's latest final pose). Changed only on the model thread, right after
    each of the stream's steps (``step_cameras``), so its poses follow the stream's order whatever the batching."""

    calibration: Calibration | None = None
    track: PoseTrack | None = None

    @classmethod
    def restored(cls, calibration: Calibration | None, track: dict | None) -> StreamCameras:
        if calibration is None:
            return cls()
        return cls(calibration, PoseTrack.from_state(calibration.K, track))

    def calibrate(self, final: FrameOutput, settings: SessionSettings, source_size: tuple[int, int]) -> None:
        try:
            cal = calibrate(final, settings, source_size)
        except Exception:
            log.exception("calibration failed")
            cal = failed_calibration()
        self.calibration, self.track = cal, PoseTrack(cal.K)

    def track_state(self) -> dict | None:
        """The pose track as the snapshot record keeps it (``PoseTrack.state``)."""
        return None if self.track is None else self.track.state()


@dataclass(frozen=True)
class StepCameras:
    """A step's cameras for its result: the stream's calibration (None before it has maps) and the poses of
    ``step_outputs``, with this result's share of the batched solve's seconds."""

    calibration: Calibration | None
    poses: list[CameraPose]
    seconds: float


def step_cameras(
    items: Sequence[tuple[StreamCameras, StepResult, SessionSettings, tuple[int, int]]],
    device: torch.device | str = "cpu",
) -> list[StepCameras]:
    """Model thread, right after a step: calibrate the streams whose frame 0's final just came, then the poses of
    every map of the step (all its streams) in one batched solve per pose method, on ``device`` (the engine's).
    Items: each stream's cameras, step result, settings and source image size."""
    t0 = time.perf_counter()
    jobs: list[tuple[PoseTrack, list[TrackMap], str]] = []
    for cams, res, settings, source_size in items:
        maps = step_outputs(res)
        if not maps:
            continue
        if res.final is not None and res.final.index == 0 and cams.calibration is None:
            cams.calibrate(res.final, settings, source_size)
        if cams.track is None:  # cannot happen in order (frame 0's final comes first); never guess a camera
            log.error("a step with maps but no calibration: its poses are reported invalid")
            cal = failed_calibration()
            cams.calibration, cams.track = cal, PoseTrack(cal.K)
        jobs.append(
            (
                cams.track,
                [TrackMap(o.pts3d_device, o.conf_device, final=o.kind == "final") for o in maps],
                settings.pose_method,
            )
        )
    try:
        solved = iter(solve_tracks(jobs, device) if jobs else [])
    except Exception:  # the streams have stepped already: their results go out, with no camera rather than none
        log.exception("solving the cameras of %d maps failed: reported invalid", sum(len(m) for _, m, _ in jobs))
        solved = iter([[CameraPose(np.full((4, 4), np.nan), False) for _ in maps] for _, maps, _ in jobs])
    per_item = [next(solved) if step_outputs(res) else [] for _, res, _, _ in items]
    seconds, n_maps = time.perf_counter() - t0, sum(len(p) for p in per_item)
    return [
        StepCameras(cams.calibration, p, seconds * len(p) / n_maps if n_maps else 0.0)
        for (cams, *_), p in zip(items, per_item)
    ]


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
        out.pts3d_device,
        out.conf_device,
        out.colors,
        pose.c2w,
        pose.valid,
        cal.focal if math.isfinite(cal.focal) else None,
        settings,
        scale,
    )


def export_item(out: FrameOutput, pose: CameraPose, conf_thresh: float, every: int = 1) -> ExportItem:
    """``core.export.fuse`` of the one map (its confident finite points), every ``every``-th of them (the session's
    export buffer thins to that). A map on an accelerator is selected on its device (only those points are copied
    to the host); one on the CPU in one compiled pass (map_kernels.py)."""
    if on_accelerator(out.pts3d_device):
        with torch.inference_mode():
            index = confident_pixels(out.pts3d_device, out.conf_device, conf_thresh)[::every]
            xyz = out.pts3d_device.reshape(-1, 3)[index].float().cpu().numpy()
            host_index = index.cpu().numpy()
        rgb = take_pixels(out.colors, host_index).astype(np.uint8, copy=False)
    else:
        xyz, rgb = confident_points(out.pts3d, out.conf, out.colors, np.float32(conf_thresh), every)
    return ExportItem(out.index, xyz, rgb, pose.c2w, pose.valid, every)


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
    export_every: int = 1,
) -> tuple[bytes, ExportItem | None]:
    """A step's result message (and the final's export item, of every ``export_every``-th confident point).
    ``poses``: those of ``step_outputs(res)``. Adds ``encode_s`` and ``server_s`` to ``timings`` (both in the
    message), then ``pack_s`` (not in it)."""
    t0 = time.perf_counter()
    pose_of = {id(o): p for o, p in zip(step_outputs(res), poses)}
    final = preview = export = None
    if res.final is not None:
        assert cal is not None  # a step with maps waited for its stream's calibration
        pose = pose_of[id(res.final)]
        final = frame_data(res.final, frame.prev_seq if frame.prev_seq is not None else -1, pose, cal, settings)
        export = export_item(res.final, pose, settings.conf_thresh, export_every)
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
    frames: int,
    out: FrameOutput,
    seq: int,
    pose: CameraPose,
    cal: Calibration,
    settings: SessionSettings,
    export_every: int = 1,
) -> tuple[bytes, ExportItem]:
    """The finished message (the last frame's final) and its export item (as ``result_bytes``)."""
    msg = FinishedMsg.model_construct(type="finished", frames=frames, final=frame_data(out, seq, pose, cal, settings))
    return pack(msg), export_item(out, pose, settings.conf_thresh, export_every)

"""A stand-in for ``core.engine.Engine`` whose step costs nothing, so a benchmark measures everything around the
network: the service's sockets, protocol, image decoding, scheduling, poses, encoding and messages.

Its pointmaps are rendered, not random: a room (walls, floor, ceiling and a table) seen by a pinhole camera with a
known focal moving on a smooth closed loop, back-projected into the camera of frame 0 as the model's outputs are,
with a little depth noise; confidence is high on surfaces and falls towards creases, occluding edges and the image
border. The loop is rendered once up front, so ``step`` only looks frames up (O(1) per frame). Memory traces
follow the model's shape (tokens growing per written frame, a skip now and then, pruning at a cap).

    engine = StandInEngine()        # same new_stream / step / finish / snapshot / restore as Engine
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from types import SimpleNamespace

import cv2
import numpy as np

from spann3r.core.camera import pixel_grid
from spann3r.core.engine import FrameOutput, MemoryTrace, StepResult, StreamError
from spann3r.core.preprocess import RESOLUTION, PreparedFrame

LOOP_FRAMES = 64  # frames of the camera's closed loop (then it repeats)
FOV_DEG = 60.0
ROOM = np.array([[-2.5, -1.2, -2.0], [2.5, 1.3, 4.0]])  # min / max corners (OpenCV axes: y down)
TABLE = np.array([[-0.6, 0.55, 1.4], [0.7, 1.3, 2.3]])
TOKENS_PER_FRAME = (RESOLUTION // 16) ** 2
WORKING_MEMORY_CAP = 50  # frames in working memory before the oldest move to long-term memory
LONG_TERM_CAP = 4000  # tokens of long-term memory before a prune


def focal_px(fov_deg: float = FOV_DEG, size: int = RESOLUTION) -> float:
    return size / (2 * math.tan(math.radians(fov_deg) / 2))


def rotation(yaw: float, pitch: float) -> np.ndarray:
    """Camera-to-world rotation: yaw about the (down) y axis, then pitch about x."""
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    r_yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    return r_yaw @ r_pitch


def loop_pose(k: int, frames: int = LOOP_FRAMES) -> np.ndarray:
    """Camera-to-world 4x4 of frame k of a closed loop: a slow orbit with a sway of the view, as a hand holds it."""
    phi = 2 * math.pi * k / frames
    c2w = np.eye(4)
    c2w[:3, :3] = rotation(0.6 * math.sin(phi), 0.12 * math.sin(2 * phi))
    c2w[:3, 3] = (0.8 * math.sin(phi), 0.1 * math.sin(2 * phi), 0.6 * (1 - math.cos(phi)))
    return c2w


def _box_exit(origin: np.ndarray, dirs: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance along each ray (from inside the box) to where it leaves it, and the face it leaves through."""
    with np.errstate(divide="ignore"):
        t = np.where(dirs > 0, (box[1] - origin) / dirs, (box[0] - origin) / dirs)  # [N, 3]
    t = np.where(np.isfinite(t) & (t > 0), t, np.inf)
    axis = t.argmin(1)
    face = axis * 2 + (dirs[np.arange(len(dirs)), axis] > 0)
    return t.min(1), face


def _box_entry(origin: np.ndarray, dirs: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance along each ray to where it enters a box seen from outside (inf: it misses), and the face."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t0, t1 = (box[0] - origin) / dirs, (box[1] - origin) / dirs
    near, far = np.minimum(t0, t1), np.maximum(t0, t1)
    t_in, t_out = np.nan_to_num(near, nan=-np.inf).max(1), np.nan_to_num(far, nan=np.inf).min(1)
    hit = (t_in <= t_out) & (t_in > 0)
    return np.where(hit, t_in, np.inf), 6 + np.nan_to_num(near, nan=-np.inf).argmax(1)


def render(
    c2w: np.ndarray, focal: float, rng: np.random.Generator, size: int = RESOLUTION
) -> tuple[np.ndarray, np.ndarray]:
    """World points [size, size, 3] seen through each pixel of a camera at ``c2w``, and their confidence."""
    uv = pixel_grid(size, size) - size / 2
    rays_cam = np.concatenate([uv / focal, np.ones((len(uv), 1), np.float32)], 1)
    dirs = rays_cam @ c2w[:3, :3].T
    origin = c2w[:3, 3]
    t_room, face_room = _box_exit(origin, dirs, ROOM)
    t_table, face_table = _box_entry(origin, dirs, TABLE)
    table = t_table < t_room
    t = np.where(table, t_table, t_room)
    face = np.where(table, face_table, face_room).reshape(size, size)
    depth = (t * rays_cam[:, 2]).reshape(size, size)
    depth = depth * (1 + 0.003 * rng.standard_normal(depth.shape))  # the model's outputs are not exact
    pts_cam = rays_cam.reshape(size, size, 3) * depth[..., None]
    pts_cam = (pts_cam + 0.002 * depth[..., None] * rng.standard_normal(pts_cam.shape)).reshape(-1, 3)
    pts = pts_cam @ c2w[:3, :3].T + origin
    return pts.reshape(size, size, 3).astype(np.float32), confidence(face, depth)


def confidence(face: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """DUSt3R-like confidence (≥ 1): high on surfaces, lower far away, near creases and occluding edges (where the
    surface seen changes) and towards the image border."""
    edges = np.zeros(face.shape, bool)
    edges[:, 1:] |= face[:, 1:] != face[:, :-1]
    edges[1:, :] |= face[1:, :] != face[:-1, :]
    to_edge = cv2.distanceTransform((~edges).astype(np.uint8), cv2.DIST_L2, 3)
    n = face.shape[0]
    idx = np.arange(n)
    to_border = np.minimum.outer(np.minimum(idx, n - 1 - idx), np.minimum(idx, n - 1 - idx))
    surface = 1 + 25 * np.exp(-depth / 4)
    falloff = (1 - 0.85 * np.exp(-to_edge / 3)) * (1 - 0.7 * np.exp(-to_border / 6))
    return (1 + (surface - 1) * falloff).astype(np.float32)


class RenderedLoop:
    """The loop's maps in the frame of its first camera (the stream's global frame), rendered once and shared
    by every stream and step (the service only reads a step's maps)."""

    def __init__(self, frames: int = LOOP_FRAMES, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.focal = focal_px()
        w2c0 = np.linalg.inv(loop_pose(0, frames))
        self.pts3d, self.conf = [], []
        for k in range(frames):
            pts, conf = render(loop_pose(k, frames), self.focal, rng)
            pts = pts @ w2c0[:3, :3].T.astype(np.float32) + w2c0[:3, 3].astype(np.float32)
            self.pts3d.append(pts)
            self.conf.append(conf)

    def output(self, index: int, kind: str, colors: np.ndarray) -> FrameOutput:
        k = index % len(self.pts3d)
        return FrameOutput.from_numpy(index, kind, self.pts3d[k], self.conf[k], colors)


@dataclass
class StandInStream:
    """What ``core.engine.StreamState`` carries that the service reads, and enough to continue a stream."""

    preview: bool = True
    frames: int = 0
    finished: bool = False
    prev_colors: np.ndarray | None = None
    written: int = 0  # frames written to memory (not skipped)
    pruned_tokens: int = 0

    @property
    def steps(self) -> int:
        return max(self.frames - 1, 0)


class StandInEngine:
    """``core.engine.Engine``'s interface, answering from a rendered loop in O(1) per frame."""

    def __init__(self, loop_frames: int = LOOP_FRAMES):
        self.loop = RenderedLoop(loop_frames)
        self.device = "cpu"
        self.model = SimpleNamespace(cfg=None)  # the service names the preset from it ("custom")

    def new_stream(self, preview: bool = True) -> StandInStream:
        return StandInStream(preview)

    def step(self, batch: list[tuple[StandInStream, PreparedFrame]]) -> list[StepResult]:
        if len({id(s) for s, _ in batch}) != len(batch):
            raise StreamError("a batched step takes at most one frame per stream")
        if any(s.finished for s, _ in batch):
            raise StreamError("stream already finished")
        results = []
        for s, frame in batch:
            r = StepResult(s.frames, None, None, None, {"step_s": 0.0, "encode_s": 0.0, "batch": float(len(batch))})
            if s.prev_colors is not None:  # a previous frame: this step gives its final
                r.final = self.loop.output(s.frames - 1, "final", s.prev_colors)
                r.memory = self._memory_write(s)
                if s.preview:
                    r.preview = self.loop.output(s.frames, "preview", frame.colors)
            s.prev_colors = frame.colors
            s.frames += 1
            results.append(r)
        return results

    @staticmethod
    def _memory_write(s: StandInStream) -> MemoryTrace:
        """The model's memory decisions, in shape: a similar view is skipped now and then, long-term memory
        grows from the working memory's overflow and is pruned at its cap."""
        step = s.frames - 1
        similarity = None if step == 0 else 0.85 + 0.1 * math.sin(step / 3)
        skipped = similarity is not None and similarity > 0.94
        s.written += not skipped
        wm = min(s.written, WORKING_MEMORY_CAP) * TOKENS_PER_FRAME
        lm = max(0, s.written - WORKING_MEMORY_CAP) * TOKENS_PER_FRAME // 4 - s.pruned_tokens
        pruned = lm > LONG_TERM_CAP
        if pruned:
            s.pruned_tokens += lm - LONG_TERM_CAP // 2
            lm = LONG_TERM_CAP // 2
        return MemoryTrace(step, step, similarity, skipped, pruned, wm + lm, wm, lm, 0.02)

    def finish(self, state: StandInStream) -> FrameOutput:
        if state.frames < 2:
            raise StreamError(f"a stream needs at least two frames, got {state.frames}")
        if state.finished:
            raise StreamError("stream already finished")
        state.finished = True
        assert state.prev_colors is not None
        return self.loop.output(state.frames - 1, "final", state.prev_colors)

    def snapshot(self, state: StandInStream) -> bytes:
        buf = io.BytesIO()
        colors = state.prev_colors if state.prev_colors is not None else np.zeros((0, 0, 3), np.uint8)
        counters = np.array([state.preview, state.frames, state.finished, state.written, state.pruned_tokens])
        np.savez(buf, counters=counters.astype(np.int64), prev_colors=colors)
        return buf.getvalue()

    def restore(self, data: bytes) -> StandInStream:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            preview, frames, finished, written, pruned = (int(x) for x in z["counters"])
            colors = z["prev_colors"] if z["prev_colors"].size else None
        return StandInStream(bool(preview), frames, bool(finished), colors, written, pruned)

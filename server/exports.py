"""A session's reconstruction as files: fused cloud (PLY, GLB), trajectory JSON, nerfstudio transforms.json, and
ROS 2 messages in MCAP (the robotics extra)."""

from __future__ import annotations

import io
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from ..core.export import glb_bytes, ply_bytes, trajectory_json, transforms_json


def _owned(a: np.ndarray) -> np.ndarray:
    """A compact copy: a slice of a per-frame array would keep the whole frame's array alive."""
    return np.array(a, copy=True, order="C")


def _held(a: np.ndarray) -> np.ndarray:
    """The array whose memory ``a`` keeps alive (itself, or the base of a view)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _is_compact(x: np.ndarray, c: np.ndarray) -> bool:
    return _held(x) is x and _held(c) is c


COMPACT_PER_ADD = 2  # thinned frames made compact on each add (a doubling makes every frame a view)


@dataclass
class ExportBuffer:
    """Confident points of every final (for PLY/GLB), within a point budget, and the camera trajectory. Keyed by
    frame index: post-processing finishes out of order, exports come out in frame order.

    When the points exceed the budget, every frame keeps every 2nd of its points (``decimation`` doubles). That
    step makes views, not copies (copying millions of points held the service's event loop for tens of ms); each
    later add copies ``COMPACT_PER_ADD`` of them compact, so a view's larger array is freed within a few frames
    and an add costs about the points it adds."""

    max_points: int
    points_by_frame: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # index → (xyz, rgb)
    poses: dict[int, tuple[np.ndarray, bool]] = field(default_factory=dict)  # final frame index → (c2w, valid)
    decimation: int = 1  # keep every n-th confident point; doubles whenever the budget is exceeded
    points: int = field(init=False, default=0)  # points held: kept by ``add`` (a sum over frames on every add is O(n))

    def __post_init__(self) -> None:
        self._count()
        self._views: deque[int] = deque(i for i, (x, c) in self.points_by_frame.items() if not _is_compact(x, c))

    def _count(self) -> None:
        """Recount the points, after ``points_by_frame`` is replaced."""
        self.points = sum(len(x) for x, _ in self.points_by_frame.values())

    @property
    def nbytes(self) -> int:
        """Bytes the point arrays keep alive (a view keeps its larger array until it is made compact)."""
        held = {id(h): h.nbytes for arrays in self.points_by_frame.values() for h in map(_held, arrays)}
        return sum(held.values())

    def add(
        self,
        index: int,
        xyz: np.ndarray,
        rgb: np.ndarray,
        c2w: np.ndarray,
        valid: bool,
        *,
        every: int = 1,
        take: bool = False,
    ) -> None:
        """A final's points and camera; xyz and rgb keep 1 confident point in ``every`` (a power of 2). ``take``:
        they are fresh compact arrays that nothing else holds (the service's export items, thinned in a
        post-processing thread to the buffer's ``decimation`` when it was read), held as they are: the event loop,
        which adds them, copies nothing. Otherwise the caller keeps them and the buffer holds a copy."""
        step = max(1, self.decimation // every)
        if take and step == 1:
            kept = (xyz, rgb)
        elif take:  # the buffer thinned since the item was made: a view, made compact later
            kept = (xyz[::step], rgb[::step])
            self._views.append(index)
        else:
            kept = (_owned(xyz[::step]), _owned(rgb[::step]))
        old = self.points_by_frame.get(index)
        self.points_by_frame[index] = kept
        self.points += len(kept[0]) - (0 if old is None else len(old[0]))
        self.poses[index] = (np.array(c2w), valid)
        while self.points > self.max_points:
            before = self.points
            self.decimation *= 2
            self.points_by_frame = {i: (x[::2], c[::2]) for i, (x, c) in self.points_by_frame.items()}
            self._views = deque(sorted(self.points_by_frame))
            self._count()
            if self.points == before:  # every frame holds one point at most: more frames than the budget has points
                break
        self._compact(COMPACT_PER_ADD)

    def _compact(self, frames: int) -> None:
        """Copy up to ``frames`` of the frames that are views compact, oldest first."""
        while self._views and frames > 0:
            i = self._views.popleft()
            arrays = self.points_by_frame.get(i)
            if arrays is not None and not _is_compact(*arrays):
                self.points_by_frame[i] = (_owned(arrays[0]), _owned(arrays[1]))
                frames -= 1

    def frozen(self) -> ExportBuffer:
        """A copy that later additions do not touch (for reading in another thread)."""
        return ExportBuffer(self.max_points, dict(self.points_by_frame), dict(self.poses), self.decimation)

    def cloud(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.points_by_frame:
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
        order = sorted(self.points_by_frame)
        return (
            np.concatenate([self.points_by_frame[i][0] for i in order]),
            np.concatenate([self.points_by_frame[i][1] for i in order]),
        )

    def trajectory(self) -> tuple[np.ndarray, np.ndarray]:
        n = max(self.poses) + 1 if self.poses else 0
        c2w, valid = np.full((n, 4, 4), np.nan), np.zeros(n, bool)
        for i, (p, v) in self.poses.items():
            c2w[i], valid[i] = p, v
        return c2w, valid

    def arrays(self) -> dict[str, np.ndarray]:
        """For the snapshot file (plain arrays, no pickle)."""
        order = sorted(self.points_by_frame)
        xyz, rgb = self.cloud()
        c2w, valid = self.trajectory()
        return {
            "xyz": xyz,
            "rgb": rgb,
            "frames": np.array(order, np.int64),
            "counts": np.array([len(self.points_by_frame[i][0]) for i in order], np.int64),
            "c2w": c2w,
            "valid": valid,
        }

    def load_arrays(self, z) -> None:
        bounds = np.cumsum(z["counts"])[:-1]
        self.points_by_frame = {
            int(i): (_owned(x), _owned(c))
            for i, x, c in zip(z["frames"], np.split(z["xyz"], bounds), np.split(z["rgb"], bounds))
        }
        self._count()
        c2w, valid = z["c2w"], z["valid"]
        self.poses = {i: (np.array(c2w[i]), bool(valid[i])) for i in range(len(valid))}


class ExportKind(StrEnum):
    ply = "cloud.ply"
    glb = "cloud.glb"
    trajectory = "trajectory.json"
    transforms = "transforms.json"
    mcap = "scene.mcap"


MEDIA_TYPES = {
    ExportKind.ply: "application/octet-stream",
    ExportKind.glb: "model/gltf-binary",
    ExportKind.trajectory: "application/json",
    ExportKind.transforms: "application/json",
    ExportKind.mcap: "application/octet-stream",
}


class ExportUnavailable(RuntimeError):
    """An export whose optional packages are not installed. The message says which extra to install."""


def mcap_bytes(export: ExportBuffer, focal: float) -> bytes:
    """The buffer's frames as ROS 2 messages (docs/robotics.md): each final's kept points (no confidence: the
    buffer holds points and colours only) and, where valid, its pose and transform."""
    try:
        from ..core.ros_export import McapRosWriter, intrinsics_matrix
    except ImportError as exc:
        raise ExportUnavailable(
            f"MCAP export needs the robotics extra (pip install 'spann3r-service[robotics]'): {exc}"
        ) from None
    out = io.BytesIO()
    with McapRosWriter(out) as writer:
        for i in sorted(export.points_by_frame):
            xyz, rgb = export.points_by_frame[i]
            c2w, valid = export.poses.get(i, (None, False))
            writer.add_points(xyz, rgb, None, c2w if valid else None, intrinsics=intrinsics_matrix(focal))
    return out.getvalue()


def export_bytes(export: ExportBuffer, focal: float, kind: ExportKind, image_paths: list[str] | None = None) -> bytes:
    """Runs in a thread (GLB export of millions of points takes a while). ``image_paths``: transforms.json's
    file_path per frame index (default images/frame_00000.png, ...)."""
    if kind is ExportKind.mcap:
        return mcap_bytes(export, focal)
    if kind in (ExportKind.ply, ExportKind.glb):
        xyz, rgb = export.cloud()
        return ply_bytes(xyz, rgb) if kind is ExportKind.ply else glb_bytes(xyz, rgb)
    c2w, valid = export.trajectory()
    if kind is ExportKind.trajectory:
        return trajectory_json(c2w, valid, focal).encode()
    return transforms_json(c2w, valid, focal, ply_file_path="cloud.ply", image_paths=image_paths).encode()

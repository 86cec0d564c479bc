"""A session's reconstruction as files: fused cloud (PLY, GLB), trajectory JSON, nerfstudio transforms.json, and
ROS 2 messages in MCAP (the robotics extra)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from ..core.export import glb_bytes, ply_bytes, trajectory_json, transforms_json


def _owned(a: np.ndarray) -> np.ndarray:
    """A compact copy: a slice of a per-frame array would keep the whole frame's array alive."""
    return np.array(a, copy=True, order="C")


@dataclass
class ExportBuffer:
    """Confident points of every final (for PLY/GLB), within a point budget, and the camera trajectory. Keyed by
    frame index: post-processing finishes out of order, exports come out in frame order."""

    max_points: int
    points_by_frame: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # index → (xyz, rgb)
    poses: dict[int, tuple[np.ndarray, bool]] = field(default_factory=dict)  # final frame index → (c2w, valid)
    decimation: int = 1  # keep every n-th confident point; doubles whenever the budget is exceeded
    points: int = field(init=False, default=0)  # points held: kept by ``add`` (a sum over frames on every add is O(n))

    def __post_init__(self) -> None:
        self._count()

    def _count(self) -> None:
        """Recount the points, after ``points_by_frame`` is replaced."""
        self.points = sum(len(x) for x, _ in self.points_by_frame.values())

    @property
    def nbytes(self) -> int:
        """Bytes of the point arrays (each owns its data: no view keeps a larger array alive)."""
        return sum(x.nbytes + c.nbytes for x, c in self.points_by_frame.values())

    def add(
        self, index: int, xyz: np.ndarray, rgb: np.ndarray, c2w: np.ndarray, valid: bool, *, take: bool = False
    ) -> None:
        """A final's points and camera. ``take``: xyz and rgb are fresh compact arrays that nothing else holds (the
        service's export items, made for this in a post-processing thread), kept as they are when not decimated:
        the event loop, which adds them, copies nothing."""
        old = self.points_by_frame.get(index)
        if take and self.decimation == 1:
            self.points_by_frame[index] = (xyz, rgb)
        else:
            self.points_by_frame[index] = (_owned(xyz[:: self.decimation]), _owned(rgb[:: self.decimation]))
        self.points += len(self.points_by_frame[index][0]) - (0 if old is None else len(old[0]))
        self.poses[index] = (np.array(c2w), valid)
        while self.points > self.max_points:
            self.decimation *= 2
            self.points_by_frame = {i: (_owned(x[::2]), _owned(c[::2])) for i, (x, c) in self.points_by_frame.items()}
            self._count()

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

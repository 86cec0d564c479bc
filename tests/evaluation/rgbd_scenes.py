"""Small RGB-D datasets in the official evaluation layouts (7-Scenes, Neural-RGBD), rendered from a scene whose
geometry is known exactly: the inside of an axis-aligned box room, seen by cameras that turn and move in it.

Only the frames the official sampling reads are rendered; the others exist as empty placeholders (the loaders
count files, as the official ones do, but never open unsampled frames)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOM_HALF = np.array([2.0, 1.5, 2.5])  # room = [-2, 2] × [-1.5, 1.5] × [-2.5, 2.5] metres (OpenCV axes, y down)


@dataclass(frozen=True)
class Camera:
    fx: float
    fy: float
    cx: float
    cy: float
    width: int = 640
    height: int = 480


SEVEN_SCENES_CAM = Camera(525.0, 525.0, 320.0, 240.0)
NRGBD_CAM = Camera(554.2562584220408, 554.2562584220408, 320.0, 240.0)


def rot_y(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def rot_x(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def trajectory_pose(i: int, n: int, yaw0: float) -> np.ndarray:
    """Camera-to-world (OpenCV axes) of frame i of n: turning 60° while sliding, looking slightly down."""
    t = i / max(n - 1, 1)
    c2w = np.eye(4)
    c2w[:3, :3] = rot_y(yaw0 + 60 * t) @ rot_x(-8)
    c2w[:3, 3] = [0.4 * np.cos(np.pi * t) - 0.2, -0.2, 0.3 * t - 0.4]
    return c2w


def render(c2w: np.ndarray, cam: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast the room → (RGB uint8 [H, W, 3], z-depth float64 [H, W] in metres)."""
    u, v = np.meshgrid(np.arange(cam.width), np.arange(cam.height))
    d_cam = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones_like(u, float)], axis=-1)
    d = d_cam @ c2w[:3, :3].T  # world directions with camera-z component 1: the hit parameter is the z-depth
    o = c2w[:3, 3]
    with np.errstate(divide="ignore"):
        t_axes = (np.sign(d) * ROOM_HALF - o) / d  # exit distance through each pair of walls
    t_axes[~np.isfinite(t_axes) | (t_axes <= 0)] = np.inf
    depth = t_axes.min(axis=-1)
    hit = o + d * depth[..., None]
    cells = np.floor(hit / 0.25).astype(int).sum(axis=-1) % 2  # checkerboard
    axis = t_axes.argmin(axis=-1)
    base = np.array([[200, 80, 60], [60, 180, 90], [70, 90, 210]], np.float64)[axis]
    rgb = base * (0.55 + 0.45 * cells[..., None]) + 20 * np.sin(hit * 7).sum(axis=-1, keepdims=True)
    return np.clip(rgb, 0, 255).astype(np.uint8), depth


def room_normals(pts: np.ndarray) -> np.ndarray:
    """Outward unit normal of the room surface each point [..., 3] lies on."""
    axis = np.argmax(np.abs(pts) / ROOM_HALF, axis=-1)
    normals = np.zeros_like(pts)
    np.put_along_axis(normals, axis[..., None], np.take_along_axis(np.sign(pts), axis[..., None], -1), axis=-1)
    return normals


def distance_to_room(pts: np.ndarray) -> np.ndarray:
    """Distance of points inside the room to its nearest wall."""
    return np.min(ROOM_HALF - np.abs(pts), axis=-1)


def write_depth_mm(path: Path, depth_m: np.ndarray) -> None:
    cv2.imwrite(str(path), np.clip(np.round(depth_m * 1000), 0, 65535).astype(np.uint16))


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


SEVEN_SCENES_SPLITS = {"chess": ["sequence1", "sequence2"], "office": ["sequence3"]}


def build_seven_scenes(root: Path, frames: int = 41, kf_every: int = 20) -> dict[str, list[np.ndarray]]:
    """``root/<scene>/{TestSplit,TrainSplit}.txt``, ``root/<scene>/seq-XX/frame-NNNNNN.*``. Returns the true
    camera-to-world poses of the sampled frames per sequence."""
    poses = {}
    for s, (scene, seqs) in enumerate(SEVEN_SCENES_SPLITS.items()):
        (root / scene).mkdir(parents=True)
        (root / scene / "TestSplit.txt").write_text("\n".join(seqs) + "\n")
        (root / scene / "TrainSplit.txt").write_text("sequence9\n")
        for q, seq in enumerate(seqs):
            folder = root / scene / f"seq-{int(seq[len('sequence') :]):02d}"
            folder.mkdir()
            poses[f"{scene}/{folder.name}"] = []
            for i in range(frames):
                stem = folder / f"frame-{i:06d}"
                if i % kf_every:
                    Path(f"{stem}.color.png").touch()
                    continue
                c2w = trajectory_pose(i, frames, yaw0=-30 + 100 * s + 40 * q)
                rgb, depth = render(c2w, SEVEN_SCENES_CAM)
                depth_mm = np.clip(np.round(depth * 1000), 0, 65535)
                depth_mm[230:250, 310:330] = 65535  # the dataset's invalid marker, in the middle
                write_rgb(Path(f"{stem}.color.png"), rgb)
                cv2.imwrite(f"{stem}.depth.proj.png", depth_mm.astype(np.uint16))
                np.savetxt(f"{stem}.pose.txt", c2w, fmt="%.9f")
                poses[f"{scene}/{folder.name}"].append(c2w)
    return poses


def build_nrgbd(root: Path, frames: int = 81, kf_every: int = 40, nan_pose: int = 1) -> dict[str, list[np.ndarray]]:
    """``root/<scene>/images/img{i}.png``, ``depth/depth{i}.png``, ``poses.txt`` (OpenGL axes, one NaN pose)."""
    poses = {}
    for s, scene in enumerate(["kitchen", "whiteroom"]):
        (root / scene / "images").mkdir(parents=True)
        (root / scene / "depth").mkdir()
        lines = []
        poses[scene] = []
        for i in range(frames):
            c2w = trajectory_pose(i, frames, yaw0=150 * s)
            gl = c2w.copy()
            gl[:, 1:3] *= -1  # OpenCV → OpenGL camera axes
            if i == nan_pose:
                gl[:] = np.nan
            lines += [" ".join(f"{x:.9f}" for x in row) for row in gl]
            if i % kf_every:
                (root / scene / "images" / f"img{i}.png").touch()
                continue
            rgb, depth = render(c2w, NRGBD_CAM)
            write_rgb(root / scene / "images" / f"img{i}.png", rgb)
            write_depth_mm(root / scene / "depth" / f"depth{i}.png", depth)
            poses[scene].append(c2w)
        (root / scene / "poses.txt").write_text("\n".join(lines) + "\n")
    return poses

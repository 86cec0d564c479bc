"""Camera from pointmaps, as the official demo computes it.

- Focal of the first frame (Weiszfeld re-weighting on x/z, y/z against centred pixel coordinates; principal
  point at the image centre, pixel grid without a half-pixel offset; clipped at 0).
- A camera-to-world pose per frame: PnP-RANSAC (OpenCV defaults: 100 iterations, 8 px, 0.99, iterative) of the
  frame's global pointmap against its pixel grid, then inverted.

OpenCV leaves undefined values in its outputs when RANSAC fails; we return ``valid=False`` and a NaN pose
instead. ``solvePnPRansac`` seeds its own RNG, so results are deterministic for a given input.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch


@dataclass
class Pose:
    c2w: np.ndarray  # [4, 4] float64 camera-to-world (OpenCV axes: x right, y down, z forward); NaN if invalid
    valid: bool
    inliers: int


def pixel_grid(h: int, w: int) -> np.ndarray:
    """[h*w, 2] float32 (u, v) pixel coordinates, row-major, no half-pixel offset."""
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    return np.stack((u, v), axis=-1).reshape(-1, 2).astype(np.float32)


def estimate_focal(pts3d: np.ndarray | torch.Tensor, iterations: int = 10) -> float:
    """Focal (pixels) of a camera at the origin looking down +z seeing ``pts3d`` [H, W, 3] through each pixel."""
    pts = torch.as_tensor(np.asarray(pts3d, dtype=np.float32))
    H, W, _ = pts.shape
    pp = torch.tensor((W / 2, H / 2), dtype=torch.float32)
    pixels = torch.from_numpy(pixel_grid(H, W)) - pp  # [HW, 2]
    pts = pts.reshape(-1, 3)
    xy_over_z = (pts[:, :2] / pts[:, 2:3]).nan_to_num(posinf=0, neginf=0)
    dot_xy_px = (xy_over_z * pixels).sum(dim=-1)
    dot_xy_xy = xy_over_z.square().sum(dim=-1)
    focal = dot_xy_px.mean() / dot_xy_xy.mean()
    for _ in range(iterations):
        dis = (pixels - focal * xy_over_z).norm(dim=-1)
        w = dis.clip(min=1e-8).reciprocal()
        focal = (w * dot_xy_px).mean() / (w * dot_xy_xy).mean()
    return float(focal.clip(min=0.0))


def intrinsics(focal: float, h: int, w: int) -> np.ndarray:
    return np.array([[focal, 0, w / 2], [0, focal, h / 2], [0, 0, 1]], dtype=np.float64)


def solve_pose(pts3d: np.ndarray, focal: float) -> Pose:
    """Camera-to-world pose of the camera that sees ``pts3d`` [H, W, 3] (global frame) through its pixel grid."""
    H, W, _ = pts3d.shape
    nan = np.full((4, 4), np.nan)
    if not np.isfinite(focal) or focal <= 0:
        return Pose(nan, False, 0)
    obj = np.ascontiguousarray(pts3d.reshape(-1, 3), dtype=np.float32)
    if not np.isfinite(obj).all():
        return Pose(nan, False, 0)
    K = intrinsics(focal, H, W).astype(np.float32)
    try:
        ok, rvec, tvec, inliers = cv2.solvePnPRansac(obj, pixel_grid(H, W), K, np.zeros(4, dtype=np.float32))
    except cv2.error:
        return Pose(nan, False, 0)
    if not ok or rvec is None or not (np.isfinite(rvec).all() and np.isfinite(tvec).all()):
        return Pose(nan, False, 0)
    R, _ = cv2.Rodrigues(rvec)
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, tvec.reshape(3)
    return Pose(np.linalg.inv(w2c), True, 0 if inliers is None else len(inliers))

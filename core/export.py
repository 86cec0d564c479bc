"""Exports of a reconstruction: fused point cloud (PLY, GLB), camera trajectory (JSON), nerfstudio transforms."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np


def fuse(
    pts3d: np.ndarray, conf: np.ndarray, colors: np.ndarray, conf_thresh: float = 1e-3, stride: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Stack per-frame maps [N, H, W, ...] into one cloud of points whose confidence passes the demo's
    filter ``(conf − 1) / conf > conf_thresh``. Returns (xyz float32 [M, 3], rgb uint8 [M, 3])."""
    pts3d, conf, colors = (np.asarray(a)[:, ::stride, ::stride] for a in (pts3d, conf, colors))
    keep = ((conf - 1) / conf > conf_thresh) & np.isfinite(pts3d).all(axis=-1)
    return pts3d[keep].astype(np.float32), colors[keep].astype(np.uint8)


def ply_bytes(xyz: np.ndarray, rgb: np.ndarray) -> bytes:
    """Binary little-endian PLY with float xyz and uchar rgb per vertex."""
    n = len(xyz)
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {n}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    ).encode()
    rec = np.empty(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
    rec["x"], rec["y"], rec["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    rec["r"], rec["g"], rec["b"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    return header + rec.tobytes()


def read_ply(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``ply_bytes`` (for tests and round trips)."""
    end = data.index(b"end_header\n") + len(b"end_header\n")
    n = int(next(line for line in data[:end].decode().splitlines() if line.startswith("element vertex")).split()[-1])
    rec = np.frombuffer(
        data[end:], dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")], count=n
    )
    return np.stack([rec["x"], rec["y"], rec["z"]], -1), np.stack([rec["r"], rec["g"], rec["b"]], -1)


def write_ply(path: str | Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    Path(path).write_bytes(ply_bytes(xyz, rgb))


def glb_bytes(xyz: np.ndarray, rgb: np.ndarray) -> bytes:
    """glTF binary point cloud (POINTS primitive with vertex colours), via trimesh."""
    import trimesh

    cloud = trimesh.PointCloud(vertices=xyz, colors=np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], 1))
    buf = io.BytesIO()
    trimesh.Scene(cloud).export(buf, file_type="glb")
    return buf.getvalue()


def trajectory_json(poses_c2w: np.ndarray, valid: np.ndarray, focal: float, size: int = 224) -> str:
    frames = [
        {"index": i, "valid": bool(v), "c2w": None if not v else np.asarray(p).tolist()}
        for i, (p, v) in enumerate(zip(poses_c2w, valid))
    ]
    return json.dumps(
        {"focal": float(focal), "width": size, "height": size, "convention": "opencv_c2w", "frames": frames}
    )


def transforms_json(
    poses_c2w: np.ndarray,
    valid: np.ndarray,
    focal: float,
    size: int = 224,
    ply_file_path: str | None = None,
    image_paths: list[str] | None = None,
) -> str:
    """nerfstudio ``transforms.json`` (OpenGL camera axes, as the official demo writes it); frames whose pose is
    invalid are left out."""
    frames = []
    for i, (pose, ok) in enumerate(zip(poses_c2w, valid)):
        if not ok:
            continue
        gl = np.array(pose, dtype=np.float64)
        gl[:3, 1] *= -1  # OpenCV → OpenGL: flip y and z
        gl[:3, 2] *= -1
        path = image_paths[i] if image_paths else f"images/frame_{i:05d}.png"
        frames.append({"file_path": path, "transform_matrix": gl.tolist()})
    out = {
        "w": size,
        "h": size,
        "fl_x": float(focal),
        "fl_y": float(focal),
        "cx": size / 2,
        "cy": size / 2,
        "k1": 0,
        "k2": 0,
        "p1": 0,
        "p2": 0,
        "camera_model": "OPENCV",
        "frames": frames,
    }
    if ply_file_path:
        out["ply_file_path"] = ply_file_path
    return json.dumps(out, indent=1)

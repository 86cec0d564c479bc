"""Data of the robotics tests: a small synthetic run in the layout of ``OUT.npz`` and the server messages of it."""

from __future__ import annotations

import numpy as np


def rotation_about(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' formula: rotation by ``angle`` radians about the unit vector ``axis``."""
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def synthetic_run(n: int = 4, size: int = 24, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays of an ``OUT.npz`` with ``n`` frames of ``size``² maps: random points, confidences around the
    threshold, a few NaN points, poses that turn through every quaternion regime (one of them invalid)."""
    rng = np.random.default_rng(seed)
    pts3d = rng.normal(size=(n, size, size, 3)).astype(np.float32)
    pts3d[:, 0, :3] = np.nan  # invalid points are skipped
    conf = (1.0 + rng.exponential(0.01, size=(n, size, size))).astype(np.float32)
    # smooth colours (so the JPEG of the input image stays close to them) with a little noise
    ramp = np.linspace(0, 200, size)
    smooth = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 200 - ramp[:, None]), -1)
    colors = (smooth[None] + rng.integers(0, 8, size=(n, size, size, 3))).astype(np.uint8)
    poses = np.zeros((n, 4, 4), dtype=np.float32)
    angles = [0.0, 1.0, np.pi - 0.05, 2.5]
    axes = [[0, 0, 1], [1, 2, 3], [1, 0, 0], [0, 1, -1]]
    for i in range(n):
        poses[i, :3, :3] = rotation_about(axes[i % 4], angles[i % 4])
        poses[i, :3, 3] = rng.normal(size=3)
        poses[i, 3, 3] = 1
    valid = np.ones(n, dtype=bool)
    valid[n - 2] = False
    poses[n - 2] = np.nan
    return {
        "pts3d": pts3d,
        "conf": conf,
        "colors": colors,
        "poses": poses,
        "pose_valid": valid,
        "focal": np.float32(201.5),
        "frame_names": np.array([f"f{i:03d}.png" for i in range(n)]),
    }


def server_messages(arrays: dict[str, np.ndarray], stamps: list[float], encoding: str = "full") -> list:
    """The messages a server would send for ``arrays`` (frame i's final rides on frame i+1's result; the last
    final on ``finished``), packed and decoded again as the client receives them."""
    from spann3r.server.encoding import choose_scale, encode_frame
    from spann3r.server.protocol import FinishedMsg, ResultMsg, SessionSettings, decode_server_message, pack

    settings = SessionSettings(encoding=encoding, conf_thresh=0.0)
    scale = choose_scale(arrays["pts3d"][0], arrays["conf"][0], 0.0)
    n = len(arrays["pts3d"])
    finals = [
        encode_frame(
            i,
            i,
            "final",
            arrays["pts3d"][i],
            arrays["conf"][i],
            arrays["colors"][i],
            arrays["poses"][i],
            bool(arrays["pose_valid"][i]),
            float(arrays["focal"]),
            settings,
            scale,
        )
        for i in range(n)
    ]
    messages = [ResultMsg(seq=i, frame_index=i, ts=stamps[i], final=finals[i - 1] if i else None) for i in range(n)]
    messages.append(FinishedMsg(frames=n, final=finals[-1]))
    return [decode_server_message(pack(m)) for m in messages]

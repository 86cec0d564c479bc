"""Output encodings of a frame's maps: ``full`` (whole 224×224 maps) and ``compact`` (confident points, int16).

Encoding runs off the event loop (in the post-processing pool); decoding is for clients and tests.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .protocol import Array, CompactMap, FrameData, FullMap, Pose, SessionSettings

INT16_MAX = 32767
SCALE_HEADROOM = 4.0  # the first output's extent uses a quarter of the int16 range: the scene grows


def confident(conf: np.ndarray, conf_thresh: float) -> np.ndarray:
    """The demo's (and ``core.export.fuse``'s) filter: (conf − 1) / conf > conf_thresh."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (conf - 1) / conf > conf_thresh


def choose_scale(pts3d: np.ndarray, conf: np.ndarray, conf_thresh: float) -> float:
    """Model units per int16 step, from a first output: its largest confident |coordinate| × headroom."""
    keep = confident(conf, conf_thresh) & np.isfinite(pts3d).all(-1)
    pts = pts3d[keep] if keep.any() else pts3d[np.isfinite(pts3d).all(-1)]
    extent = float(np.abs(pts).max()) if pts.size else 0.0
    return (extent if extent > 0 else 1.0) * SCALE_HEADROOM / INT16_MAX


def encode_map(
    pts3d: np.ndarray, conf: np.ndarray, colors: np.ndarray, settings: SessionSettings, scale: float
) -> FullMap | CompactMap:
    if settings.encoding == "full":
        dt = np.float16 if settings.dtype == "float16" else np.float32
        return FullMap.model_construct(
            encoding="full", pts3d=Array.of(pts3d.astype(dt)), conf=Array.of(conf.astype(dt)), colors=Array.of(colors)
        )
    s = settings.stride
    pts3d, conf, colors = pts3d[::s, ::s], conf[::s, ::s], colors[::s, ::s]
    keep = confident(conf, settings.conf_thresh) & np.isfinite(pts3d).all(-1)
    q = np.rint(pts3d[keep] / scale)
    inside = (np.abs(q) <= INT16_MAX).all(-1)
    return CompactMap.model_construct(
        encoding="compact",
        scale=float(scale),
        stride=s,
        clipped=int((~inside).sum()),
        positions=Array.of(q[inside].astype(np.int16)),
        colors=Array.of(colors[keep][inside]),
        conf=Array.of(conf[keep][inside].astype(np.float16)),
    )


def encode_frame(
    index: int,
    seq: int,
    kind: Literal["final", "preview"],
    pts3d: np.ndarray,
    conf: np.ndarray,
    colors: np.ndarray,
    c2w: np.ndarray | None,
    valid: bool,
    focal: float | None,
    settings: SessionSettings,
    scale: float,
) -> FrameData:
    pose = Pose.model_construct(
        c2w=[float(x) for x in np.asarray(c2w).reshape(-1)] if valid else None, valid=bool(valid)
    )
    return FrameData.model_construct(
        index=index, seq=seq, kind=kind, pose=pose, focal=focal, map=encode_map(pts3d, conf, colors, settings, scale)
    )


# --------------------------------------------------------------------------------------------- client side


def decode_map(m: FullMap | CompactMap) -> dict[str, np.ndarray]:
    """``full`` → pts3d [H,W,3], conf [H,W], colors [H,W,3] (float32 / uint8); ``compact`` → points [N,3]
    float32, colors [N,3] uint8, conf [N] float32."""
    if m.encoding == "full":
        return {
            "pts3d": m.pts3d.to_numpy().astype(np.float32),
            "conf": m.conf.to_numpy().astype(np.float32),
            "colors": m.colors.to_numpy(),
        }
    return {
        "points": m.positions.to_numpy().astype(np.float32) * np.float32(m.scale),
        "colors": m.colors.to_numpy(),
        "conf": m.conf.to_numpy().astype(np.float32),
    }


def pose_matrix(p: Pose) -> np.ndarray:
    return np.asarray(p.c2w, dtype=np.float64).reshape(4, 4) if p.valid and p.c2w else np.full((4, 4), np.nan)

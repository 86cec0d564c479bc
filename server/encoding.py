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


def finite_points(pts3d: np.ndarray) -> np.ndarray:
    """[..., 3] → [...] bool, all three coordinates finite (``np.isfinite(pts3d).all(-1)``, without numpy's slow
    reduction over a length-3 last axis)."""
    x, y, z = (np.isfinite(pts3d[..., i]) for i in range(3))
    return x & y & z


def kept_pixels(pts3d: np.ndarray, conf: np.ndarray, conf_thresh: float) -> np.ndarray:
    """Flat (row-major) indices of the pixels whose point is finite and confident: the selection of the compact
    encoding and of ``core.export.fuse``."""
    keep = confident(conf, conf_thresh)
    keep &= finite_points(pts3d)
    return np.flatnonzero(keep)


def take_pixels(a: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``a`` [H, W, ...] at flat pixel indices → [len(index), ...], as ``a[mask]`` gives for the mask of ``index``
    (a gather along one axis: numpy's boolean indexing of rows is several times slower)."""
    return np.take(a.reshape(-1, *a.shape[2:]), index, axis=0)


def to_float16(a: np.ndarray) -> np.ndarray:
    """``a.astype(np.float16)``: a float32 array through torch's vectorised conversion (numpy converts element by
    element, ~20x slower), bit for bit the same on every finite value and infinity (IEEE round to nearest even;
    NaN stays NaN, a signalling NaN's payload may differ); other dtypes through numpy."""
    if a.dtype != np.float32:
        return a.astype(np.float16)
    import torch  # clients import this module to decode: torch only where the server encodes

    return torch.from_numpy(np.ascontiguousarray(a)).half().numpy()


def choose_scale(pts3d: np.ndarray, conf: np.ndarray, conf_thresh: float) -> float:
    """Model units per int16 step, from a first output: its largest confident |coordinate| × headroom."""
    finite = finite_points(pts3d)
    keep = confident(conf, conf_thresh) & finite
    pts = pts3d[keep] if keep.any() else pts3d[finite]
    extent = float(np.abs(pts).max()) if pts.size else 0.0
    return (extent if extent > 0 else 1.0) * SCALE_HEADROOM / INT16_MAX


def encode_map(
    pts3d: np.ndarray, conf: np.ndarray, colors: np.ndarray, settings: SessionSettings, scale: float
) -> FullMap | CompactMap:
    if settings.encoding == "full":
        half = settings.dtype == "float16"
        return FullMap.model_construct(
            encoding="full",
            pts3d=Array.of(to_float16(pts3d) if half else pts3d.astype(np.float32)),
            conf=Array.of(to_float16(conf) if half else conf.astype(np.float32)),
            colors=Array.of(colors),
        )
    s = settings.stride
    pts3d, conf, colors = pts3d[::s, ::s], conf[::s, ::s], colors[::s, ::s]
    index = kept_pixels(pts3d, conf, settings.conf_thresh)
    q = np.rint(take_pixels(pts3d, index) / scale)
    clipped = 0
    if q.size and not np.abs(q).max() <= INT16_MAX:  # rare: points beyond the int16 range (or NaN: scale 0)
        inside = (np.abs(q) <= INT16_MAX).all(-1)
        clipped = int((~inside).sum())
        index, q = index[inside], q[inside]
    return CompactMap.model_construct(
        encoding="compact",
        scale=float(scale),
        stride=s,
        clipped=clipped,
        positions=Array.of(q.astype(np.int16)),
        colors=Array.of(take_pixels(colors, index)),
        conf=Array.of(to_float16(take_pixels(conf, index))),
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

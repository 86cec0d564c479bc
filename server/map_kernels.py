"""Compiled (numba) passes over a map on the host: the compact encoding and the export selection, each one loop
over the pixels instead of a dozen numpy passes and their temporaries, and without the GIL (the event loop runs on
beside the post-processing threads). Byte for byte what the numpy formulation gives
(tests/server/test_encoding_equivalence.py): every step is float32 as numpy computes it (a Python float meets a
float32 array as float32, NEP 50) and rounding is half to even (``np.rint``).

Only the server imports this module: the clients' decoding (encoding.py) needs no numba.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

INT16_LIMIT = np.float32(32767)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _kept(c, x, y, z, thresh) -> bool:
    """Finite and confident: (conf − 1) / conf > conf_thresh, in float32 (NaN, inf and 0 confidences fail)."""
    return (c - np.float32(1)) / c > thresh and math.isfinite(x) and math.isfinite(y) and math.isfinite(z)


@njit(cache=True, nogil=True, error_model="numpy")
def compact(pts3d, conf, colors, stride: int, conf_thresh, scale):
    """pts3d [H, W, 3] float32, conf [H, W] float32, colors [H, W, 3] uint8 on every ``stride``-th row and column;
    ``conf_thresh`` and ``scale`` float32 → the kept pixels' int16 positions [n, 3], colors [n, 3] and float32
    confidences [n] in row-major order, and how many confident points fell outside the int16 range."""
    H, W = conf.shape
    cap = ((H + stride - 1) // stride) * ((W + stride - 1) // stride)
    positions = np.empty((cap, 3), np.int16)
    kept_colors = np.empty((cap, 3), np.uint8)
    kept_conf = np.empty(cap, np.float32)
    n = clipped = 0
    for v in range(0, H, stride):
        for u in range(0, W, stride):
            c, x, y, z = conf[v, u], pts3d[v, u, 0], pts3d[v, u, 1], pts3d[v, u, 2]
            if not _kept(c, x, y, z, conf_thresh):
                continue
            qx, qy, qz = np.rint(x / scale), np.rint(y / scale), np.rint(z / scale)
            if not (abs(qx) <= INT16_LIMIT and abs(qy) <= INT16_LIMIT and abs(qz) <= INT16_LIMIT):
                clipped += 1  # beyond the int16 range, or NaN (scale 0)
                continue
            positions[n, 0], positions[n, 1], positions[n, 2] = np.int16(qx), np.int16(qy), np.int16(qz)
            kept_colors[n, 0], kept_colors[n, 1], kept_colors[n, 2] = colors[v, u, 0], colors[v, u, 1], colors[v, u, 2]
            kept_conf[n] = c
            n += 1
    return positions[:n].copy(), kept_colors[:n].copy(), kept_conf[:n].copy(), clipped


@njit(cache=True, nogil=True, error_model="numpy")
def confident_points(pts3d, conf, colors, conf_thresh, every: int):
    """``core.export.fuse`` of one map: the finite confident points [n, 3] float32 and their colors [n, 3], in
    row-major order (``conf_thresh`` float32), every ``every``-th of them (those of ``fuse(...)[::every]``)."""
    H, W = conf.shape
    cap = (H * W + every - 1) // every
    xyz = np.empty((cap, 3), np.float32)
    rgb = np.empty((cap, 3), np.uint8)
    n = skip = 0  # skip: kept points to pass over before the next one taken (a countdown: a modulo per point
    # costs as much as the rest of the loop)
    for v in range(H):
        for u in range(W):
            if _kept(conf[v, u], pts3d[v, u, 0], pts3d[v, u, 1], pts3d[v, u, 2], conf_thresh):
                if skip == 0:
                    xyz[n, 0], xyz[n, 1], xyz[n, 2] = pts3d[v, u, 0], pts3d[v, u, 1], pts3d[v, u, 2]
                    rgb[n, 0], rgb[n, 1], rgb[n, 2] = colors[v, u, 0], colors[v, u, 1], colors[v, u, 2]
                    n += 1
                    skip = every
                skip -= 1
    return xyz[:n].copy(), rgb[:n].copy()


def compile_kernels() -> None:
    """Compile (or load from numba's cache) for the types the server passes: a service does it at start."""
    pts, conf, colors = np.zeros((2, 2, 3), np.float32), np.ones((2, 2), np.float32), np.zeros((2, 2, 3), np.uint8)
    compact(pts, conf, colors, 1, np.float32(0.1), np.float32(1))
    confident_points(pts, conf, colors, np.float32(0.1), 1)

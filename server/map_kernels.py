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


@njit(cache=True, nogil=True, inline="always")
def half_bits(f32_bits) -> np.uint16:
    """The IEEE half-precision bits of a float32 given as its bits: numpy's ``astype(np.float16)`` (round to
    nearest even, inf beyond the half range, subnormals, signed zeros, NaN payloads as numpy keeps them). In the
    compact pass because numpy's cast converts value by value in scalar code at ~7 ns each, as much as the rest
    of the pass."""
    bits = np.int64(f32_bits)
    sign = (bits >> 16) & 0x8000
    exp = (bits >> 23) & 0xFF
    mant = bits & 0x7FFFFF
    if exp == 0xFF:  # inf, or NaN: the top of the payload, never 0 (that would be inf)
        payload = mant >> 13
        return np.uint16(sign | 0x7C00 | (payload if mant == 0 or payload != 0 else 1))
    if exp >= 143:  # ≥ 2^16: beyond the half range
        return np.uint16(sign | 0x7C00)
    if exp >= 113:  # a normal half: drop 13 bits of the mantissa, rounding to nearest even
        half = ((exp - 112) << 10) | (mant >> 13)
        rest = mant & 0x1FFF
        if rest > 0x1000 or (rest == 0x1000 and (half & 1) == 1):
            half += 1  # a carry moves the exponent on (65504 < x: up to inf, 0x7C00)
        return np.uint16(sign | half)
    # a subnormal half (or zero): the value in units of 2^-24, rounded to nearest even; a float32 subnormal
    # (exp 0) is far below half a unit
    if exp == 0:
        return np.uint16(sign)
    shift = 126 - exp  # ≥ 14
    if shift >= 25:
        return np.uint16(sign)
    sig = mant | 0x800000
    half = sig >> shift
    rest, tie = sig & ((1 << shift) - 1), 1 << (shift - 1)
    if rest > tie or (rest == tie and (half & 1) == 1):
        half += 1  # up to 0x400: the smallest normal, as it should
    return np.uint16(sign | half)


@njit(cache=True, nogil=True, error_model="numpy")
def compact(pts3d, conf, colors, stride: int, conf_thresh, scale):
    """pts3d [H, W, 3] float32, conf [H, W] float32, colors [H, W, 3] uint8 on every ``stride``-th row and column;
    ``conf_thresh`` and ``scale`` float32 → the kept pixels' int16 positions [n, 3], colors [n, 3] and float16
    confidences [n] (as uint16 bits: ``.view(np.float16)``) in row-major order, and how many confident points fell
    outside the int16 range. ``conf`` C-contiguous (its bits are read as uint32)."""
    H, W = conf.shape
    cap = ((H + stride - 1) // stride) * ((W + stride - 1) // stride)
    positions = np.empty((cap, 3), np.int16)
    kept_colors = np.empty((cap, 3), np.uint8)
    kept_conf = np.empty(cap, np.uint16)
    conf_bits = conf.view(np.uint32)
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
            kept_conf[n] = half_bits(conf_bits[v, u])
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

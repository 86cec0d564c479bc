"""The robust pose solve's Gauss-Newton refinement of one frame on a CPU, compiled (numba).

The same refinement as ``camera._gauss_newton`` (IRLS Gauss-Newton on the pixel reprojection error, Geman-McClure
loss scaled at ``ROBUST_SCALE`` x the median residual, weights log(confidence)), written as one loop over the
pixels per step instead of ~40 torch passes: on a CPU the passes are memory-bound and each op has a fixed cost, so
the loop is several times faster, and it runs without the GIL (the service's event loop keeps running beside the
model thread's solves). The torch version stays for accelerators, where batched passes are what is fast; a test
holds the two to the same poses.

Per frame: ``coarse_iterations`` steps on every ``coarse_step``-th row and column, then ``fine_iterations`` on every
``fine_step``-th. Each set's pixels that count are packed once per frame (``_pixel_sets``: points, weights
log(confidence) and normalised pixel coordinates, in contiguous rows), so each step is a branch-free loop the
compiler vectorises, and only the pixels used get a logarithm. Per-pixel work is in float64, the sums too.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

ROBUST_SCALE = 3.0  # Geman-McClure scale, x the median residual (camera.ROBUST_SCALE: the same constant)
SCALE_MIN_PX, SCALE_MAX_PX = 0.5, 50.0  # bounds of the robust scale
SAMPLE_EVERY = 16  # the median residual (and depth) over every 16th pixel of a step's set, as the torch version


@njit(cache=True, nogil=True, inline="always")
def _counts(c: float, X: float, Y: float, Z: float) -> bool:
    """Whether a pixel counts: confidence above 1 (weight log(c) > 0) and finite, and a finite point."""
    return c > 1.0 and c < math.inf and math.isfinite(X + Y + Z)


@njit(cache=True, nogil=True)
def count_weighted(pts: np.ndarray, conf: np.ndarray, enough: int) -> int:
    """Pixels that count (confidence above 1, finite, and a finite point), up to ``enough``: the solver only asks
    whether there are that many, usually among the first rows."""
    H, W = conf.shape
    n = 0
    for v in range(H):
        for u in range(W):
            if _counts(conf[v, u], pts[v, u, 0], pts[v, u, 1], pts[v, u, 2]):
                n += 1
                if n >= enough:
                    return n
    return n


@njit(cache=True, nogil=True)
def _pixel_sets(pts, conf, K, fine_step: int, coarse_step: int):
    """The pixels of every ``fine_step``-th and of every ``coarse_step``-th row and column that count, each set
    packed as the columns of P [6, N] float64: the point (X, Y, Z), its weight log(conf) (taken in float32, as
    torch's ``_confidence_weights``) and its pixel's normalised coordinates K⁻¹ (u, v); with which of its columns
    are the set's every SAMPLE_EVERY-th pixel (in row-major order over the whole set, counting or not, as torch's
    ``_residuals`` samples), for the medians. The steps then read contiguous rows, which the compiler vectorises.

    One pass over the fine grid: ``coarse_step`` is a multiple of ``fine_step`` (every 4th row and column of every
    2nd, the default), so the coarse grid is part of the fine one and its pixels are copied from the fine ones as
    they are packed, in the same order, with their logarithm taken once (equal steps: one set, returned twice).
    Returns (P, N, sample columns, their count) per set, fine first."""
    same = coarse_step == fine_step
    H, W = conf.shape
    fx, s, cx, fy, cy = K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2]
    size = ((H + fine_step - 1) // fine_step) * ((W + fine_step - 1) // fine_step)
    c_size = ((H + coarse_step - 1) // coarse_step) * ((W + coarse_step - 1) // coarse_step)
    F, C = np.empty((6, size)), np.empty((6, 0 if same else c_size))
    f_sample = np.empty((size + SAMPLE_EVERY - 1) // SAMPLE_EVERY, np.int64)
    c_sample = np.empty((c_size + SAMPLE_EVERY - 1) // SAMPLE_EVERY, np.int64)
    ratio = coarse_step // fine_step
    n = m = c_n = c_m = 0
    f_until = c_until = 0  # grid pixels to the next sampled one, per set (a countdown: no modulo per pixel)
    for v in range(0, H, fine_step):
        my = (v - cy) / fy
        cx_row = cx + s * my
        coarse_row = v % coarse_step == 0
        col_until = 0  # fine columns to the next coarse one (u = 0 is one)
        for u in range(0, W, fine_step):
            coarse = coarse_row and col_until == 0 and not same
            X, Y, Z, c = pts[v, u, 0], pts[v, u, 1], pts[v, u, 2], conf[v, u]
            if _counts(c, X, Y, Z):
                w, mx = math.log(c), (u - cx_row) / fx
                F[0, n], F[1, n], F[2, n], F[3, n], F[4, n], F[5, n] = X, Y, Z, w, mx, my
                if f_until == 0:
                    f_sample[m] = n
                    m += 1
                n += 1
                if coarse:
                    C[0, c_n], C[1, c_n], C[2, c_n], C[3, c_n], C[4, c_n], C[5, c_n] = X, Y, Z, w, mx, my
                    if c_until == 0:
                        c_sample[c_m] = c_n
                        c_m += 1
                    c_n += 1
            f_until = SAMPLE_EVERY - 1 if f_until == 0 else f_until - 1
            if coarse:
                c_until = SAMPLE_EVERY - 1 if c_until == 0 else c_until - 1
            col_until = ratio - 1 if col_until == 0 else col_until - 1
    if same:
        return (F, n, f_sample, m), (F, n, f_sample, m)
    return (F, n, f_sample, m), (C, c_n, c_sample, c_m)


@njit(cache=True, nogil=True)
def _lower_median(a: np.ndarray) -> float:
    """Lower median, as torch's; NaN if empty."""
    k = len(a)
    return math.nan if k == 0 else np.partition(a, (k - 1) // 2)[(k - 1) // 2]


@njit(cache=True, nogil=True)
def _median_sample(P, sample, m: int, K, R, t, with_depth: bool):
    """Median squared pixel error over a set's sampled pixels (``_pixel_sets``) that are in front, and
    (``with_depth``) their median camera depth, in one pass; NaN where there are none (or not asked)."""
    fx, s, fy = K[0, 0], K[0, 1], K[1, 1]
    err2, depth = np.empty(m), np.empty(m)
    k = 0
    for i in range(m):
        c = sample[i]
        X, Y, Z = P[0, c], P[1, c], P[2, c]
        z = R[2, 0] * X + R[2, 1] * Y + R[2, 2] * Z + t[2]
        if not z > 1e-9:
            continue
        ex = (R[0, 0] * X + R[0, 1] * Y + R[0, 2] * Z + t[0]) / z - P[4, c]
        ey = (R[1, 0] * X + R[1, 1] * Y + R[1, 2] * Z + t[1]) / z - P[5, c]
        rx, ry = fx * ex + s * ey, fy * ey
        err2[k], depth[k] = rx * rx + ry * ry, z
        k += 1
    return _lower_median(err2[:k]), _lower_median(depth[:k]) if with_depth else math.nan


# fast-math without "nnan" and "ninf" (which would fold away the check for points behind the camera); numpy's
# error model: a division by zero gives inf instead of raising, so the loop has no branch and is vectorised (with
# Python's, each division carries a check and the loop stays scalar, ~3x slower)
@njit(cache=True, nogil=True, fastmath={"contract", "arcp", "reassoc", "nsz"}, error_model="numpy")
def _normal_equations(P, n: int, K, R, t, c2: float, max_err2: float):
    """One pass over a pixel set (``_pixel_sets``): H [6, 6], g [6] of Σ irls |K₂ e|² in the left rotation ω and
    camera translation τ (P' = P + ω×P + τ), and the weight within ``max_err2`` and in total. Branch-free (a point
    behind the camera gets weight 0), scalar sums, so each is one vector register of partial sums."""
    fx, s, fy = K[0, 0], K[0, 1], K[1, 1]
    ic2 = 1.0 / c2
    r00, r01, r02, r10, r11, r12, r20, r21, r22 = R.ravel()
    t0, t1, t2 = t
    Xs, Ys, Zs, Ws, Mx, My = P[0], P[1], P[2], P[3], P[4], P[5]
    h00 = h01 = h02 = h03 = h04 = h05 = h11 = h12 = h13 = h14 = h15 = 0.0
    h22 = h23 = h24 = h25 = h33 = h34 = h35 = h44 = h45 = h55 = 0.0
    g0 = g1 = g2 = g3 = g4 = g5 = inlier = total = 0.0
    for i in range(n):
        X, Y, Z, w = Xs[i], Ys[i], Zs[i], Ws[i]
        total += w
        z = r20 * X + r21 * Y + r22 * Z + t2
        front = z > 1e-9
        w = w if front else 0.0
        iz = 1.0 / (z if front else 1.0)
        nx = (r00 * X + r01 * Y + r02 * Z + t0) * iz
        ny = (r10 * X + r11 * Y + r12 * Z + t1) * iz
        ex, ey = nx - Mx[i], ny - My[i]
        rx, ry = fx * ex + s * ey, fy * ey
        rho2 = rx * rx + ry * ry
        inlier += w if rho2 < max_err2 else 0.0
        q = 1.0 / (1.0 + rho2 * ic2)
        irls = w * q * q
        # rows of K₂ d(nx, ny) / d(ω, τ), K₂ = [[fx, s], [0, fy]]:
        #   d nx = (-nx ny, 1 + nx², -ny, 1/z, 0, -nx/z),  d ny = (-(1 + ny²), nx ny, nx, 0, 1/z, -ny/z)
        a0, a1, a2 = -fx * nx * ny - s * (1.0 + ny * ny), fx * (1.0 + nx * nx) + s * nx * ny, s * nx - fx * ny
        a3, a4, a5 = fx * iz, s * iz, -(fx * nx + s * ny) * iz
        b0, b1, b2, b4, b5 = -fy * (1.0 + ny * ny), fy * nx * ny, fy * nx, fy * iz, -fy * ny * iz  # b3 = 0
        wa0, wa1, wa2, wa3, wa4, wa5 = irls * a0, irls * a1, irls * a2, irls * a3, irls * a4, irls * a5
        wb0, wb1, wb2, wb4, wb5 = irls * b0, irls * b1, irls * b2, irls * b4, irls * b5
        h00 += wa0 * a0 + wb0 * b0
        h01 += wa0 * a1 + wb0 * b1
        h02 += wa0 * a2 + wb0 * b2
        h03 += wa0 * a3
        h04 += wa0 * a4 + wb0 * b4
        h05 += wa0 * a5 + wb0 * b5
        h11 += wa1 * a1 + wb1 * b1
        h12 += wa1 * a2 + wb1 * b2
        h13 += wa1 * a3
        h14 += wa1 * a4 + wb1 * b4
        h15 += wa1 * a5 + wb1 * b5
        h22 += wa2 * a2 + wb2 * b2
        h23 += wa2 * a3
        h24 += wa2 * a4 + wb2 * b4
        h25 += wa2 * a5 + wb2 * b5
        h33 += wa3 * a3
        h34 += wa3 * a4
        h35 += wa3 * a5
        h44 += wa4 * a4 + wb4 * b4
        h45 += wa4 * a5 + wb4 * b5
        h55 += wa5 * a5 + wb5 * b5
        g0 += wa0 * rx + wb0 * ry
        g1 += wa1 * rx + wb1 * ry
        g2 += wa2 * rx + wb2 * ry
        g3 += wa3 * rx
        g4 += wa4 * rx + wb4 * ry
        g5 += wa5 * rx + wb5 * ry
    upper = (h00, h01, h02, h03, h04, h05, h11, h12, h13, h14, h15, h22, h23, h24, h25, h33, h34, h35, h44, h45, h55)
    JtJ = np.empty((6, 6))
    k = 0
    for i in range(6):
        for j in range(i, 6):
            JtJ[i, j] = JtJ[j, i] = upper[k]
            k += 1
    return JtJ, np.array([g0, g1, g2, g3, g4, g5]), inlier, total


# Small matrix algebra by hand: numba's np.linalg and matrix products call SciPy's LAPACK and BLAS, and SciPy is
# not a dependency of the service.
@njit(cache=True, nogil=True)
def _matmul(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    n, m, k = A.shape[0], B.shape[1], A.shape[1]
    out = np.zeros((n, m))
    for i in range(n):
        for j in range(m):
            for c in range(k):
                out[i, j] += A[i, c] * B[c, j]
    return out


@njit(cache=True, nogil=True)
def _solve(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A x = b by Gaussian elimination with partial pivoting; NaN where A is singular."""
    n = len(b)
    M = np.empty((n, n + 1))
    M[:, :n], M[:, n] = A, b
    for c in range(n):
        p = c + np.argmax(np.abs(M[c:, c]))
        if M[p, c] == 0.0:
            return np.full(n, np.nan)
        if p != c:
            row = M[c].copy()
            M[c], M[p] = M[p], row
        for r in range(c + 1, n):
            M[r, c:] -= M[r, c] / M[c, c] * M[c, c:]
    x = np.empty(n)
    for r in range(n - 1, -1, -1):
        acc = M[r, n]
        for c in range(r + 1, n):
            acc -= M[r, c] * x[c]
        x[r] = acc / M[r, r]
    return x


@njit(cache=True, nogil=True)
def _so3_exp(omega: np.ndarray) -> np.ndarray:
    theta2 = omega[0] ** 2 + omega[1] ** 2 + omega[2] ** 2
    if theta2 < 1e-12:
        a, b = 1.0 - theta2 / 6.0, 0.5 - theta2 / 24.0
    else:
        theta = math.sqrt(theta2)
        a, b = math.sin(theta) / theta, (1.0 - math.cos(theta)) / theta2
    hat = np.array(
        [[0.0, -omega[2], omega[1]], [omega[2], 0.0, -omega[0]], [-omega[1], omega[0], 0.0]],
    )
    return np.eye(3) + a * hat + b * _matmul(hat, hat)


@njit(cache=True, nogil=True)
def _step(JtJ: np.ndarray, g: np.ndarray, R: np.ndarray, t: np.ndarray):
    """The damped Gauss-Newton update of (R, t); no update where the system is not finite or singular."""
    if not (np.isfinite(JtJ).all() and np.isfinite(g).all()):
        return R, t
    A = JtJ + 1e-9 * max(np.trace(JtJ), 1e-30) * np.eye(6)
    delta = _solve(A, -g)
    if not np.isfinite(delta).all():
        return R, t
    dR = _so3_exp(delta[:3])
    return _matmul(dR, R), _matmul(dR, t.reshape(3, 1)).ravel() + delta[3:]


@njit(cache=True, nogil=True)
def refine(
    pts: np.ndarray,
    conf: np.ndarray,
    K: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    coarse_step: int,
    coarse_iterations: int,
    fine_step: int,
    fine_iterations: int,
    max_error_px: float,
):
    """Refine world-to-camera (R [3, 3], t [3], float64) of the camera seeing pts [H, W, 3] (float32) at its pixel
    grid, with confidence conf [H, W] (float32; weights log(conf)). Returns R, t, and for the validity check, from
    the last fine step (before its update): its H [6, 6], the share of the weight within ``max_error_px``, and the
    median camera depth."""
    max_err2 = max_error_px * max_error_px
    JtJ = np.full((6, 6), np.nan)
    inlier_share = 0.0
    depth = math.nan
    if coarse_iterations == 0 or coarse_step % fine_step == 0:
        fine, coarse = _pixel_sets(pts, conf, K, fine_step, coarse_step if coarse_iterations > 0 else fine_step)
    else:  # the coarse grid is not part of the fine one: a pass each
        fine = _pixel_sets(pts, conf, K, fine_step, fine_step)[0]
        coarse = _pixel_sets(pts, conf, K, coarse_step, coarse_step)[0]
    for k in range(coarse_iterations + fine_iterations):
        P, n, sample, m = fine if k >= coarse_iterations else coarse
        last = k == coarse_iterations + fine_iterations - 1
        med, depth = _median_sample(P, sample, m, K, R, t, last)  # the depth of the pose the last step starts from
        c2 = SCALE_MAX_PX**2 if math.isnan(med) else min(max(ROBUST_SCALE**2 * med, SCALE_MIN_PX**2), SCALE_MAX_PX**2)
        JtJ, g, inlier, total = _normal_equations(P, n, K, R, t, c2, max_err2)
        if last:
            inlier_share = inlier / max(total, 1e-30)
        R, t = _step(JtJ, g, R, t)
    return R, t, JtJ, inlier_share, depth


def compile_kernels() -> None:
    """Compile the kernels for the types the solver passes (or load them from numba's cache, next to this file):
    the first compile takes ~15 s, which a service does at start rather than in its first pose."""
    pts, conf = np.zeros((4, 4, 3), np.float32), np.ones((4, 4), np.float32)
    refine(pts, conf, np.eye(3), np.eye(3), np.zeros(3), 1, 1, 1, 1, 8.0)
    count_weighted(pts, conf, 1)


if __name__ == "__main__":  # python -m spann3r.core.pose_kernel: fill the cache (Dockerfile)
    compile_kernels()

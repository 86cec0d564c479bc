"""The robust pose solve's Gauss-Newton refinement of one frame on a CPU, compiled (numba).

The same refinement as ``camera._gauss_newton`` (IRLS Gauss-Newton on the pixel reprojection error, Geman-McClure
loss scaled at ``ROBUST_SCALE`` x the median residual, weights log(confidence)), written as one loop over the
pixels per step instead of ~40 torch passes: on a CPU the passes are memory-bound and each op has a fixed cost, so
the loop is several times faster, and it runs without the GIL (the service's event loop keeps running beside the
model thread's solves). The torch version stays for accelerators, where batched passes are what is fast; a test
holds the two to the same poses.

Per frame: ``coarse_iterations`` steps on every ``coarse_step``-th row and column, then ``fine_iterations`` on every
``fine_step``-th, reading the pointmap and the weights (``weights``: log(confidence), one vectorised numpy pass) in
place, without copies. Per-pixel work is in float64, the sums too.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

ROBUST_SCALE = 3.0  # Geman-McClure scale, x the median residual (camera.ROBUST_SCALE: the same constant)
SCALE_MIN_PX, SCALE_MAX_PX = 0.5, 50.0  # bounds of the robust scale
SAMPLE_EVERY = 16  # the median residual (and depth) over every 16th pixel of a step's set, as the torch version


def weights(conf: np.ndarray) -> np.ndarray:
    """The pixels' weights log(conf) [H, W] float32: 0 at conf ≤ 1, non-finite (a pixel that does not count) where
    conf is. numpy's log is vectorised; the kernels' scalar one costs more than a pass."""
    with np.errstate(invalid="ignore"):
        return np.log(np.maximum(conf, np.float32(1)))


@njit(cache=True, nogil=True, inline="always")
def _counts(w: float, X: float, Y: float, Z: float) -> bool:
    """Whether a pixel counts: a positive finite weight and a finite point."""
    return w > 0.0 and w < math.inf and math.isfinite(X + Y + Z)


@njit(cache=True, nogil=True)
def count_weighted(pts: np.ndarray, w: np.ndarray, enough: int) -> int:
    """Pixels that count (confidence above 1, finite, and a finite point), of weights ``w`` (``weights``), up to
    ``enough``: the solver only asks whether there are that many, usually among the first rows."""
    H, W = w.shape
    n = 0
    for v in range(H):
        for u in range(W):
            if _counts(w[v, u], pts[v, u, 0], pts[v, u, 1], pts[v, u, 2]):
                n += 1
                if n >= enough:
                    return n
    return n


@njit(cache=True, nogil=True)
def _median_sample(pts, w, K, R, t, step: int, depth: bool) -> float:
    """Median squared pixel error (``depth``: median camera depth) over every SAMPLE_EVERY-th pixel of the set
    (every ``step``-th row and column) that counts and is in front; NaN if none. Lower median, as torch's."""
    H, W = w.shape
    fx, s, cx, fy, cy = K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2]
    rows, cols = (H + step - 1) // step, (W + step - 1) // step
    out = np.empty((rows * cols + SAMPLE_EVERY - 1) // SAMPLE_EVERY)
    m = 0
    for j in range(0, rows * cols, SAMPLE_EVERY):
        v, u = (j // cols) * step, (j % cols) * step
        X, Y, Z = pts[v, u, 0], pts[v, u, 1], pts[v, u, 2]
        if not _counts(w[v, u], X, Y, Z):
            continue
        z = R[2, 0] * X + R[2, 1] * Y + R[2, 2] * Z + t[2]
        if not z > 1e-9:
            continue
        if depth:
            out[m] = z
        else:
            ny0 = (v - cy) / fy
            ex = (R[0, 0] * X + R[0, 1] * Y + R[0, 2] * Z + t[0]) / z - (u - cx - s * ny0) / fx
            ey = (R[1, 0] * X + R[1, 1] * Y + R[1, 2] * Z + t[1]) / z - ny0
            rx, ry = fx * ex + s * ey, fy * ey
            out[m] = rx * rx + ry * ry
        m += 1
    if m == 0:
        return math.nan
    return np.sort(out[:m])[(m - 1) // 2]


# fast-math without "nnan" and "ninf", which would fold away the checks for non-finite points and weights
@njit(cache=True, nogil=True, fastmath={"contract", "arcp", "reassoc", "nsz"})
def _normal_equations(pts, weight, K, R, t, step: int, c2: float, max_err2: float):
    """One pass over every ``step``-th row and column: H [6, 6], g [6] of Σ irls |K₂ e|² in the left rotation ω
    and camera translation τ (P' = P + ω×P + τ), and the weight within ``max_err2`` and in total. The sums are
    scalars (a row's, then added up): an array of 27 accumulators is ~2x slower."""
    H_img, W_img = weight.shape
    fx, s, cx, fy, cy = K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2]
    ifx, ic2 = 1.0 / fx, 1.0 / c2
    r00, r01, r02, r10, r11, r12, r20, r21, r22 = R.ravel()
    t0, t1, t2 = t
    sums = np.zeros(29)  # H's upper triangle (21), g (6), inlier and total weight
    for v in range(0, H_img, step):
        ny0 = (v - cy) / fy
        cx_row = cx + s * ny0  # nx of pixel u: (u - cx_row) / fx
        h00 = h01 = h02 = h03 = h04 = h05 = h11 = h12 = h13 = h14 = h15 = 0.0
        h22 = h23 = h24 = h25 = h33 = h34 = h35 = h44 = h45 = h55 = 0.0
        g0 = g1 = g2 = g3 = g4 = g5 = inlier = total = 0.0
        for u in range(0, W_img, step):
            X, Y, Z = pts[v, u, 0], pts[v, u, 1], pts[v, u, 2]
            w = weight[v, u]
            if not _counts(w, X, Y, Z):
                continue
            total += w
            z = r20 * X + r21 * Y + r22 * Z + t2
            if not z > 1e-9:
                continue
            iz = 1.0 / z
            nx = (r00 * X + r01 * Y + r02 * Z + t0) * iz
            ny = (r10 * X + r11 * Y + r12 * Z + t1) * iz
            ex, ey = nx - (u - cx_row) * ifx, ny - ny0
            rx, ry = fx * ex + s * ey, fy * ey
            rho2 = rx * rx + ry * ry
            if rho2 < max_err2:
                inlier += w
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
        row = (h00, h01, h02, h03, h04, h05, h11, h12, h13, h14, h15, h22, h23, h24, h25, h33, h34, h35, h44, h45, h55)
        for k in range(21):
            sums[k] += row[k]
        for k, x in enumerate((g0, g1, g2, g3, g4, g5, inlier, total)):
            sums[21 + k] += x
    JtJ = np.empty((6, 6))
    k = 0
    for i in range(6):
        for j in range(i, 6):
            JtJ[i, j] = JtJ[j, i] = sums[k]
            k += 1
    return JtJ, sums[21:27].copy(), sums[27], sums[28]


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
    w: np.ndarray,
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
    grid, with weights w [H, W] (``weights``). Returns R, t, and for the validity check, from the last fine step (before
    its update): its H [6, 6], the share of the weight within ``max_error_px``, and the median camera depth."""
    max_err2 = max_error_px * max_error_px
    JtJ = np.full((6, 6), np.nan)
    inlier_share = 0.0
    depth = math.nan
    for k in range(coarse_iterations + fine_iterations):
        fine = k >= coarse_iterations
        step = fine_step if fine else coarse_step
        med = _median_sample(pts, w, K, R, t, step, False)
        c2 = SCALE_MAX_PX**2 if math.isnan(med) else min(max(ROBUST_SCALE**2 * med, SCALE_MIN_PX**2), SCALE_MAX_PX**2)
        JtJ, g, inlier, total = _normal_equations(pts, w, K, R, t, step, c2, max_err2)
        if fine and k == coarse_iterations + fine_iterations - 1:
            inlier_share = inlier / max(total, 1e-30)
            depth = _median_sample(pts, w, K, R, t, step, True)
        R, t = _step(JtJ, g, R, t)
    return R, t, JtJ, inlier_share, depth


def compile_kernels() -> None:
    """Compile the kernels for the types the solver passes (or load them from numba's cache, next to this file):
    the first compile takes ~15 s, which a service does at start rather than in its first pose."""
    pts, w = np.zeros((4, 4, 3), np.float32), weights(np.ones((4, 4), np.float32))
    refine(pts, w, np.eye(3), np.eye(3), np.zeros(3), 1, 1, 1, 1, 8.0)
    count_weighted(pts, w, 1)


if __name__ == "__main__":  # python -m spann3r.core.pose_kernel: fill the cache (Dockerfile)
    compile_kernels()

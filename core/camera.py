"""Camera from pointmaps: the official demo's estimators, and a batched robust pose solver for the service.

- Focal of the first frame (Weiszfeld re-weighting on x/z, y/z against centred pixel coordinates; principal
  point at the image centre, pixel grid without a half-pixel offset; clipped at 0).
- ``solve_pose``: a camera-to-world pose per frame as the official demo computes it: PnP-RANSAC (OpenCV defaults:
  100 iterations, 8 px, 0.99, iterative) of the frame's global pointmap against its pixel grid, then inverted.
  OpenCV leaves undefined values in its outputs when RANSAC fails; we return ``valid=False`` and a NaN pose
  instead. ``solvePnPRansac`` seeds its own RNG, so results are deterministic for a given input.
- ``solve_poses``: a whole batch at once in torch, on the pointmaps' device, any K (known intrinsics, see
  intrinsics.py), confidence-weighted, robust, warm-started from the stream's previous pose; PnP-RANSAC only as
  a fallback for frames that fail its validity check. ``method="pnp_ransac"`` gives the demo's estimator instead.
- ``PoseTrack`` / ``solve_tracks``: a stream's poses over time (each map warm-started from the stream's latest
  valid final pose; a lost track tries PnP-RANSAC only now and then), the one rule of offline ``reconstruct`` and
  the service.

The default for the service is ``solve_poses(method="robust")``: it uses the network's confidence (the demo's
RANSAC ignores it), is as accurate as PnP-RANSAC on rendered scenes with noise and 10-30 % gross outliers (tests
in tests/core/test_pose_solver.py), says when geometry is degenerate instead of returning a guess, takes known
intrinsics, and costs 1.2-2.2 ms of one CPU thread per pose warm-started (batch 8 to 1; 2.3-6.3 ms cold)
against 64-113 ms for PnP-RANSAC (bench/poses.py, idle 2-core machine). ``solve_pose`` /
``method="pnp_ransac"`` stay for fidelity to the official demo (offline ``reconstruct`` and comparisons with its
outputs).
"""

from __future__ import annotations

import functools
import inspect
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from . import pose_kernel
from .intrinsics import centred_intrinsics
from .pose_kernel import ROBUST_SCALE, SAMPLE_EVERY, SCALE_MAX_PX, SCALE_MIN_PX


@dataclass
class CameraPose:
    c2w: np.ndarray  # [4, 4] float64 camera-to-world (OpenCV axes: x right, y down, z forward); NaN if invalid
    valid: bool


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


def solve_pose(pts3d: np.ndarray, focal: float) -> CameraPose:
    """Camera-to-world pose of the camera that sees ``pts3d`` [H, W, 3] (global frame) through its pixel grid."""
    H, W, _ = pts3d.shape
    nan = np.full((4, 4), np.nan)
    if not np.isfinite(focal) or focal <= 0:
        return CameraPose(nan, False)
    obj = np.ascontiguousarray(pts3d.reshape(-1, 3), dtype=np.float32)
    if not np.isfinite(obj).all():
        return CameraPose(nan, False)
    K = centred_intrinsics(focal, H, W).astype(np.float32)
    try:
        ok, rvec, tvec, _ = cv2.solvePnPRansac(obj, pixel_grid(H, W), K, np.zeros(4, dtype=np.float32))
    except cv2.error:
        return CameraPose(nan, False)
    if not ok or rvec is None or not (np.isfinite(rvec).all() and np.isfinite(tvec).all()):
        return CameraPose(nan, False)
    R, _ = cv2.Rodrigues(rvec)
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, tvec.reshape(3)
    return CameraPose(np.linalg.inv(w2c), True)


# ----------------------------------------------------------------------------- batched robust poses
# A whole batch of frames at once, on the pointmaps' device. On an accelerator every step is torch passes (per-pixel
# work in float32, laid out component-major [B, C, N] so that every pass is contiguous; 6x6 and smaller systems in
# float64); on a CPU step 2 is ``pose_kernel.refine``, compiled, one loop over the pixels per step and frame:
#   1. candidates on every 8th row and column (224²: 784 pixels), the more confident 40 % of them: a weighted DLT
#      (needs depth relief), a weighted plane homography (the DLT is degenerate on a plane) and the caller's
#      ``init``; the one with the lowest MSAC cost (squared pixel error capped at ``max_error_px``) wins;
#   2. Gauss-Newton / IRLS on the pixel reprojection error, Geman-McClure loss scaled at 3x the median residual,
#      weights log(confidence): first on every 4th row and column (cheap), then on every 2nd (``fine_step``: a
#      quarter of the pixels at a third of the cost; on the tests' scenes its errors are ~25 % above those of
#      every pixel, about OpenCV's PnP-RANSAC's). In torch
#      the normal equations are assembled from one Gram matrix of per-pixel monomials (nx, ny, 1/z, ...), a single
#      GEMM per step;
#   3. a validity check on the fine grid, at the pose before the last (small) step: enough confident finite points,
#      well-conditioned normal equations, most of the confidence reprojecting within ``max_error_px``, a finite
#      pose. Frames that fail it with enough points get one more try
#      warm-started from OpenCV's PnP-RANSAC, and the same check decides.
# A frame with a finite ``init`` (a stream's previous pose) first skips step 1 and takes ``warm_iterations`` coarse
# steps from it: the linear starts and their scoring are a third of a cold solve, and a neighbouring frame's pose
# is already close. Only if that fails the check does the frame go the cold way (with ``init`` as a candidate).

POSE_METHODS = ("robust", "pnp_ransac")
CPU_CHUNK = 8  # frames per robust solve on a CPU


# Jacobians of the normalised projection (nx, ny) w.r.t. a left rotation ω and a camera-frame translation τ
# (P' = P + ω×P + τ), as combinations of the monomials φ = (1, nx, ny, nx², nx·ny, ny², 1/z, nx/z, ny/z):
#   d nx / d(ω, τ) = (-nx·ny, 1 + nx², -ny, 1/z, 0, -nx/z)
#   d ny / d(ω, τ) = (-(1 + ny²), nx·ny, nx, 0, 1/z, -ny/z)
#      1  nx  ny nx² nxny ny² 1/z nx/z ny/z
_JX = [
    [0, 0, 0, 0, -1, 0, 0, 0, 0],  # ωx
    [1, 0, 0, 1, 0, 0, 0, 0, 0],  # ωy
    [0, 0, -1, 0, 0, 0, 0, 0, 0],  # ωz
    [0, 0, 0, 0, 0, 0, 1, 0, 0],  # τx
    [0, 0, 0, 0, 0, 0, 0, 0, 0],  # τy
    [0, 0, 0, 0, 0, 0, 0, -1, 0],
]  # τz
_JY = [
    [-1, 0, 0, 0, 0, -1, 0, 0, 0],
    [0, 0, 0, 0, 1, 0, 0, 0, 0],
    [0, 1, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 1, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, -1],
]
_N_MONOMIALS = 9


def _normalised_pixels(K: torch.Tensor, h: int, w: int, step: int = 1) -> torch.Tensor:
    """K [B, 3, 3] (upper triangular) → [B, 2, n] float32 normalised coordinates of every ``step``-th row and
    column of the pixel grid (row-major, pixel (u, v) at column u, row v)."""
    B = K.shape[0]
    u = torch.arange(0, w, step, dtype=torch.float32, device=K.device)
    v = torch.arange(0, h, step, dtype=torch.float32, device=K.device)
    fx, s, cx, fy, cy = (K[:, i, j, None, None].float() for i, j in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2)))
    ny = (v[:, None] - cy) / fy  # [B, h', 1]
    nx = (u - cx - s * ny) / fx  # [B, h', w']
    return torch.stack((nx.reshape(B, -1), ny.expand_as(nx).reshape(B, -1)), 1)


def _weighted_frame(X: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted centroid [B, 3] and RMS radius [B] of points X [B, 3, N]."""
    ws = w.sum(1).clamp(min=1e-12)
    c = (X * w[:, None]).sum(2) / ws[:, None]
    s = ((w * (X - c[..., None]).square().sum(1)).sum(1) / ws).sqrt().clamp(min=1e-12)
    return c, s


def _finite_or_eye(M: torch.Tensor) -> torch.Tensor:
    """Batched square matrices with any non-finite matrix replaced by the identity (linalg would raise on it)."""
    eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
    return torch.where(M.flatten(1).isfinite().all(1)[:, None, None], M, eye)


def _smallest_eigvec(M: torch.Tensor) -> torch.Tensor:
    """[B, n, n] symmetric → [B, n] eigenvector of the smallest eigenvalue."""
    M = _finite_or_eye(M)
    M = M / M.diagonal(dim1=1, dim2=2).sum(-1).clamp(min=1e-300)[:, None, None]
    return torch.linalg.eigh(M).eigenvectors[..., 0]


def _nearest_rotation(A: torch.Tensor) -> torch.Tensor:
    """[B, 3, 3] → the closest rotation (det +1) in Frobenius norm."""
    U, _, Vh = torch.linalg.svd(_finite_or_eye(A))
    d = torch.linalg.det(U @ Vh).sign()
    U = torch.cat((U[..., :2], U[..., 2:] * d[:, None, None]), dim=-1)
    return U @ Vh


def _linear_system(feats: torch.Tensor, n: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted normal matrix [B, 3m, 3m] of the rows (f, 0, -nx f) and (0, f, -ny f), features f [B, m, N]."""
    nx, ny = n.unbind(1)
    weights = torch.stack((w, w * nx, w * ny, w * (nx * nx + ny * ny)), 1)  # [B, 4, N]
    A, Bx, By, C = ((feats[:, None] * weights[:, :, None]) @ feats.transpose(1, 2)[:, None]).unbind(1)  # 4 x [B, m, m]
    zero = torch.zeros_like(A)
    return torch.cat((torch.cat((A, zero, -Bx), 2), torch.cat((zero, A, -By), 2), torch.cat((-Bx, -By, C), 2)), 1)


def _dlt_pose(X: torch.Tensor, n: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted calibrated DLT: world-to-camera R [B, 3, 3], t [B, 3] from points X [B, 3, N] seen at normalised
    image coordinates n [B, 2, N]."""
    c, s = _weighted_frame(X, w)
    Xh = torch.cat(((X - c[..., None]) / s[:, None, None], torch.ones_like(X[:, :1])), 1)  # [B, 4, N]
    P = _smallest_eigvec(_linear_system(Xh, n, w)).reshape(-1, 3, 4)  # ~ mu [s R | R c + t]
    P = P * torch.linalg.det(P[..., :3]).sign()[:, None, None]  # mu > 0
    R = _nearest_rotation(P[..., :3])
    mu_s = torch.linalg.svdvals(_finite_or_eye(P[..., :3])).mean(-1).clamp(min=1e-300)
    t = P[..., 3] * s[:, None] / mu_s[:, None] - (R @ c[..., None])[..., 0]
    return R, t


def _homography_pose(X: torch.Tensor, n: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """R, t from the homography between the points' weighted best plane and their normalised image points."""
    c, s = _weighted_frame(X, w)
    Xc = X - c[..., None]
    E = torch.linalg.eigh(_finite_or_eye((Xc * w[:, None]) @ Xc.transpose(1, 2))).eigenvectors.flip(-1)
    E = torch.cat((E[..., :2], torch.linalg.cross(E[..., 0], E[..., 1])[..., None]), -1)  # plane axes, normal
    ab = E[..., :2].transpose(1, 2) @ Xc / s[:, None, None]  # [B, 2, N] plane coordinates
    ab1 = torch.cat((ab, torch.ones_like(ab[:, :1])), 1)
    Hm = _smallest_eigvec(_linear_system(ab1, n, w)).reshape(-1, 3, 3)  # ~ lam [R e1 s, R e2 s, R c + t]
    Hm = Hm * Hm[:, 2, 2].sign()[:, None, None]  # the centroid is in front: lam > 0
    lam = (Hm[..., 0].norm(dim=-1) + Hm[..., 1].norm(dim=-1)).clamp(min=1e-300) / 2
    r1, r2 = Hm[..., 0] / lam[:, None], Hm[..., 1] / lam[:, None]
    R = _nearest_rotation(torch.stack((r1, r2, torch.linalg.cross(r1, r2)), -1)) @ E.transpose(1, 2)
    t = Hm[..., 2] * s[:, None] / lam[:, None] - (R @ c[..., None])[..., 0]
    return R, t


def _so3_exp(omega: torch.Tensor) -> torch.Tensor:
    """Rotation vectors [B, 3] → rotation matrices [B, 3, 3] (Rodrigues, Taylor near zero)."""
    theta2 = omega.square().sum(-1)
    small = theta2 < 1e-12
    theta = torch.where(small, torch.ones_like(theta2), theta2).sqrt()
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp(min=1e-300))
    ox, oy, oz = omega.unbind(-1)
    zero = torch.zeros_like(ox)
    hat = torch.stack((zero, -oz, oy, oz, zero, -ox, -oy, ox, zero), -1).reshape(-1, 3, 3)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device)
    return eye + a[:, None, None] * hat + b[:, None, None] * (hat @ hat)


@dataclass
class _Residuals:
    rho2: torch.Tensor  # [B, N] squared pixel reprojection error
    in_front: torch.Tensor  # [B, N] bool
    depth: torch.Tensor  # [B, N] camera z
    gram: torch.Tensor  # [B, 11, 11] float64 Σ irls Φ Φᵀ, Φ = (φ, ex, ey)


def _residuals(
    X,
    n,
    w,
    R,
    t,
    K,
    scale_px: float | None,
    work: tuple[torch.Tensor, ...] | None = None,
) -> _Residuals:
    """Reprojection of X [B, 3, N] by (R, t) against n [B, 2, N] and the Gram matrix of the IRLS-weighted monomials.
    With ``scale_px`` None the robust scale is ``ROBUST_SCALE`` x the median residual (within [SCALE_MIN_PX,
    SCALE_MAX_PX]).
    ``work`` is scratch space from ``_workspace``, reused between steps: every op writes in place, as allocating
    and faulting in fresh pages costs as much as the arithmetic on a CPU."""
    phi, cam, tmp = _workspace(X) if work is None else work
    torch.baddbmm(t.to(X.dtype)[..., None], R.to(X.dtype), X, out=cam)  # [B, 3, N] camera coordinates
    z = cam[:, 2]
    in_front = z > 1e-9
    iz = torch.where(in_front, z, z.new_ones(()), out=tmp[:, 0]).reciprocal_()
    nx, ny = cam[:, 0].mul_(iz), cam[:, 1].mul_(iz)  # normalised projections, in place of x and y
    ex = torch.sub(nx, n[:, 0], out=tmp[:, 1])
    ey = torch.sub(ny, n[:, 1], out=tmp[:, 2])
    fx, s, fy = (K[:, i, j, None].to(X.dtype) for i, j in ((0, 0), (0, 1), (1, 1)))
    rho2 = torch.mul(ex, fx, out=tmp[:, 3]).addcmul_(ey, s).square_()  # |K₂ e|²: (fx ex + s ey)² + (fy ey)²
    rho2.addcmul_(torch.mul(ey, fy, out=phi[:, 10]), phi[:, 10])
    if scale_px is None:
        every = SAMPLE_EVERY
        sample = torch.where((w[:, ::every] > 0) & in_front[:, ::every], rho2[:, ::every], float("nan"))
        c2 = (ROBUST_SCALE**2 * sample.nanmedian(1).values).nan_to_num(SCALE_MAX_PX**2)
        c2 = c2.clamp(SCALE_MIN_PX**2, SCALE_MAX_PX**2)[:, None]
    else:
        c2 = torch.full_like(rho2[:, :1], scale_px**2)
    # Φ = sqrt(irls) (1, nx, ny, nx², nx ny, ny², 1/z, nx/z, ny/z, ex, ey): monomials already weighted
    # Geman-McClure: irls = w / (1 + ρ²/c²)², whose influence on far outliers falls as c⁴/ρ³ (Cauchy's only as
    # c²/ρ, enough for a large coherent bad region to drag the pose along a weakly constrained direction)
    sw = torch.div(rho2, c2, out=phi[:, 0]).add_(1).reciprocal_().mul_(w.sqrt()).masked_fill_(~in_front, 0)
    torch.mul(nx, sw, out=phi[:, 1])
    torch.mul(ny, sw, out=phi[:, 2])
    torch.mul(nx, phi[:, 1], out=phi[:, 3])
    torch.mul(nx, phi[:, 2], out=phi[:, 4])
    torch.mul(ny, phi[:, 2], out=phi[:, 5])
    torch.mul(iz, sw, out=phi[:, 6])
    torch.mul(nx, phi[:, 6], out=phi[:, 7])
    torch.mul(ny, phi[:, 6], out=phi[:, 8])
    torch.mul(ex, sw, out=phi[:, 9])
    torch.mul(ey, sw, out=phi[:, 10])
    gram = torch.bmm(phi, phi.transpose(1, 2)).double()  # Σ irls Φ Φᵀ
    return _Residuals(rho2, in_front, z, gram)


def _workspace(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scratch for ``_residuals``: Φ [B, 11, N], camera points [B, 3, N], temporaries [B, 4, N]."""
    B, _, N = X.shape
    phi, cam, tmp = (torch.empty(B, rows, N, dtype=X.dtype, device=X.device) for rows in (_N_MONOMIALS + 2, 3, 4))
    return phi, cam, tmp


@functools.lru_cache(maxsize=8)
def _jacobian_maps(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[14, 11]: d nx / d(ω, τ) and d ny / d(ω, τ) over the monomials (rows 0-11), then (ex, ey) (rows 12-13)."""
    J = torch.zeros(14, _N_MONOMIALS + 2, dtype=dtype)
    J[:12, :_N_MONOMIALS] = torch.tensor(_JX + _JY, dtype=dtype)
    J[12:, _N_MONOMIALS:] = torch.eye(2, dtype=dtype)
    return J.to(device)


def _normal_equations(gram: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gram matrix of (φ, ex, ey) [B, 11, 11] → H [B, 6, 6] and g [B, 6] of the pixel reprojection error
    Σ irls |K₂ e|², K₂ e = pixel residual: H = Σ_ab G_ab J_a S J_bᵀ, g = Σ_ab G_ab J_a s_b with G = K₂ᵀK₂.
    Both from one product J Γ Jᵀ (J: the two maps stacked, [12, 9] on the monomials, and the identity on (ex, ey)),
    a few ops where a four-operand einsum plans its contraction on every call."""
    B = gram.shape[0]
    J = _jacobian_maps(gram.dtype, gram.device)  # [14, 11]: block-diag(J_x; J_y, I₂)
    K2 = K[:, :2, :2]
    G = K2.transpose(1, 2) @ K2  # [B, 2, 2]
    M = J @ gram @ J[:12].T  # [B, 14, 12]: rows (J_x S, J_y S, sᵀ), columns J_xᵀ, J_yᵀ
    H = (M[:, :12].view(B, 2, 6, 2, 6) * G[:, :, None, :, None]).sum((1, 3))
    g = (M[:, 12:].view(B, 2, 2, 6) * G[..., None]).sum((1, 2))  # s_b = rows 12 + b, G symmetric
    return H, g


def _gauss_newton(X, n, w, R, t, K, iterations: int):
    """``iterations`` (≥ 1) IRLS Gauss-Newton steps (Geman-McClure). Returns R, t, and the residuals and H of the
    last step (taken before its update)."""
    work = _workspace(X)
    for _ in range(iterations):
        res = _residuals(X, n, w, R, t, K, scale_px=None, work=work)
        H, g = _normal_equations(res.gram, K)
        damp = 1e-9 * H.diagonal(dim1=1, dim2=2).sum(-1).clamp(min=1e-30)
        H_damped = _finite_or_eye(H + damp[:, None, None] * torch.eye(6, dtype=H.dtype, device=H.device))
        delta = torch.linalg.solve_ex(H_damped, -g.nan_to_num(0.0))[0].nan_to_num(0.0)
        dR = _so3_exp(delta[:, :3])
        R = dR @ R
        t = (dR @ t[..., None])[..., 0] + delta[:, 3:]
    return R, t, res, H


def _fit_stats(res: _Residuals, w: torch.Tensor, max_error_px: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The share of the confidence reprojecting within ``max_error_px`` [B] and the median camera depth [B] (over
    every SAMPLE_EVERY-th pixel; NaN if none), as ``pose_kernel.refine`` returns them."""
    inlier = (w * (res.in_front & (res.rho2 < max_error_px**2))).sum(1) / w.sum(1).clamp(min=1e-30)
    every = SAMPLE_EVERY
    d = torch.where(res.in_front[:, ::every] & (w[:, ::every] > 0), res.depth[:, ::every], float("nan"))
    return inlier.double(), d.nanmedian(1).values.double()


def _pose_validity(
    H: torch.Tensor, depth: torch.Tensor, inlier: torch.Tensor, min_inlier_weight: float, min_condition: float
) -> torch.Tensor:
    """[B] bool: normal equations H [B, 6, 6] well conditioned (translation in units of the median ``depth``) and
    at least ``min_inlier_weight`` of the confidence within the inlier bound (``inlier``, a share)."""
    d = depth.nan_to_num(1.0).abs().clamp(min=1e-12)
    D = torch.cat((torch.ones_like(d)[:, None].expand(-1, 3), d[:, None].expand(-1, 3)), 1)  # [B, 6]
    Hn = H * D[:, :, None] * D[:, None, :]
    finite = Hn.flatten(1).isfinite().all(1)
    eig = torch.linalg.eigvalsh(torch.where(finite[:, None, None], Hn, torch.zeros_like(Hn)))
    conditioned = finite & (eig[:, -1] > 0) & (eig[:, 0] > min_condition * eig[:, -1])
    return conditioned & (inlier >= min_inlier_weight)


def _as_batch(pts3d, conf, K, init):
    """Inputs → float32 pts [B, H, W, 3], conf [B, H, W], float64 K [B, 3, 3] and init [B, 4, 4] or None."""
    pts = torch.as_tensor(pts3d)
    device = pts.device
    pts = pts.float()
    conf = torch.as_tensor(conf, device=device).float()
    K = torch.as_tensor(K, device=device).double()
    if pts.ndim != 4 or pts.shape[-1] != 3 or conf.shape != pts.shape[:-1]:
        raise ValueError(
            f"expected pts3d [B, H, W, 3] and conf [B, H, W], got {list(pts.shape)} and {list(conf.shape)}"
        )
    K = K.expand(pts.shape[0], 3, 3) if K.shape == (3, 3) else K
    if K.shape != (pts.shape[0], 3, 3):
        raise ValueError(f"expected K [3, 3] or [B, 3, 3], got {list(K.shape)}")
    if init is not None:
        init = torch.as_tensor(init, device=device).double().expand(pts.shape[0], 4, 4)
    return pts, conf, K, init


def _ransac_c2w(obj: np.ndarray, px: np.ndarray, K: np.ndarray) -> np.ndarray | None:
    """OpenCV PnP-RANSAC (defaults, as ``solve_pose``) of world points obj [N, 3] seen at pixels px [N, 2] → c2w."""
    try:
        ok, rvec, tvec, _ = cv2.solvePnPRansac(obj, px, K.astype(np.float32), np.zeros(4, dtype=np.float32))
    except cv2.error:
        return None
    if not ok or rvec is None or not (np.isfinite(rvec).all() and np.isfinite(tvec).all()):
        return None
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = cv2.Rodrigues(rvec)[0], tvec.reshape(3)
    return np.linalg.inv(w2c)


def _ransac_batch(pts: torch.Tensor, keep: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame OpenCV PnP-RANSAC on the pixels ``keep`` [B, H, W] → c2w [B, 4, 4] float64 (NaN if failed),
    ok [B]."""
    B, H, W, _ = pts.shape
    grid = pixel_grid(H, W)
    pts_np, keep_np, K_np = pts.cpu().numpy(), keep.reshape(B, -1).cpu().numpy(), K.cpu().numpy()
    c2w = np.full((B, 4, 4), np.nan)
    for i in range(B):
        if keep_np[i].sum() < 6 or not np.isfinite(K_np[i]).all():
            continue
        obj = np.ascontiguousarray(pts_np[i].reshape(-1, 3)[keep_np[i]])
        got = _ransac_c2w(obj, np.ascontiguousarray(grid[keep_np[i]]), K_np[i])
        if got is not None:
            c2w[i] = got
    c2w_t = torch.from_numpy(c2w).to(pts.device)
    return c2w_t, c2w_t.flatten(1).isfinite().all(1)


def _confidence_weights(pts: torch.Tensor, conf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pointmaps [B, H, W, 3] with non-finite pixels zeroed, and weights log(conf) [B, H*W], 0 where not finite.
    A pixel is finite when its confidence and the sum of its coordinates are."""
    B = pts.shape[0]
    w = conf.reshape(B, -1).clamp(min=1).log_()
    # the usual case in one pass each (torch's isfinite is several passes): every value finite and no sum of three
    # coordinates able to overflow; aminmax propagates NaN
    lo, hi = torch.aminmax(pts)
    c_lo, c_hi = torch.aminmax(conf)
    if bool((lo > -1e38) & (hi < 1e38) & c_lo.isfinite() & c_hi.isfinite()):
        return pts, w
    finite = pts.sum(-1).isfinite().reshape(B, -1) & conf.reshape(B, -1).isfinite()  # [B, N]
    if not bool(finite.all()):
        pts = pts.nan_to_num(0.0, 0.0, 0.0)
    return pts, w.masked_fill_(~finite, 0.0)


def _best_start(Xs, ns, ws, width: int, K, init, max_error_px: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidate start (DLT, homography, ``init``) of least MSAC cost on the sample Xs [B, 3, n] (rows of
    ``width`` pixels); the linear starts use every other sample row and column, its more confident 40 %."""
    B = Xs.shape[0]
    Xl = Xs.view(B, 3, -1, width)[..., ::2, ::2].flatten(2).double()
    nl = ns.view(B, 2, -1, width)[..., ::2, ::2].flatten(2).double()
    wl = ws.view(B, -1, width)[..., ::2, ::2].flatten(1)
    cut = wl.kthvalue(max(1, int(0.6 * wl.shape[1])), dim=1).values  # gross outliers have low confidence
    wl = (wl * (wl >= cut[:, None]) * (wl > 0)).double()
    candidates = [_dlt_pose(Xl, nl, wl), _homography_pose(Xl, nl, wl)]
    if init is not None:
        R_init = _finite_or_eye(init)[:, :3, :3].transpose(1, 2)  # world-to-camera of a camera-to-world init
        candidates.append((R_init, -(R_init @ _finite_or_eye(init)[:, :3, 3:])[..., 0]))
    Rc, tc = torch.stack([c[0] for c in candidates], 1), torch.stack([c[1] for c in candidates], 1)  # [B, C, ...]
    cost = []
    for i in range(len(candidates)):  # MSAC: squared error capped at max_error_px, as RANSAC scores
        res = _residuals(Xs, ns, ws, Rc[:, i], tc[:, i], K, scale_px=max_error_px)
        cost.append((ws * res.rho2.clamp(max=max_error_px**2).masked_fill(~res.in_front, max_error_px**2)).sum(1))
    if init is not None:  # a non-finite init is no candidate (the frame is scored as if it had none)
        cost[2] = cost[2].masked_fill(~init.flatten(1).isfinite().all(1), float("inf"))
    best = torch.stack(cost, 1).nan_to_num(float("inf")).argmin(1)
    return Rc[torch.arange(B), best], tc[torch.arange(B), best]


def _coarse_sample(pts: torch.Tensor, w: torch.Tensor, K: torch.Tensor, step: int):
    """Every ``step``-th row and column: points Xs [B, 3, n], weights ws [B, n], normalised pixels ns [B, 2, n]."""
    B, H, W, _ = pts.shape
    Xs = pts[:, ::step, ::step].reshape(B, -1, 3).transpose(1, 2).contiguous()
    ws = w.view(B, H, W)[:, ::step, ::step].reshape(B, -1)
    return Xs, ws, _normalised_pixels(K, H, W, step)


def _refine_torch(pts, conf, K, R, t, step, coarse_iterations, fine_step, fine_iterations, max_error_px, enough):
    """``pose_kernel.refine`` for a batch, in torch passes on the maps' device. Also returns the frames' counts of
    pixels that count (whole: a pass counts them all at once, so ``enough`` is no shortcut here)."""
    B, H, W, _ = pts.shape
    pts, w = _confidence_weights(pts, conf)
    if coarse_iterations:
        Xs, ws, ns = _coarse_sample(pts, w, K, step)
        R, t, *_ = _gauss_newton(Xs, ns, ws, R, t, K, coarse_iterations)
    # [B, 3, N]: a view of every pixel (the GEMM reads it transposed, no copy), or the fine grid's copy
    X = pts[:, ::fine_step, ::fine_step].reshape(B, -1, 3).transpose(1, 2)
    wf = w.view(B, H, W)[:, ::fine_step, ::fine_step].reshape(B, -1)
    R, t, res, H_last = _gauss_newton(X, _normalised_pixels(K, H, W, fine_step), wf, R, t, K, fine_iterations)
    return R, t, H_last, *_fit_stats(res, wf, max_error_px), (w > 0).sum(1)


def _refine_compiled(pts, conf, K, R, t, step, coarse_iterations, fine_step, fine_iterations, max_error_px, enough):
    """``pose_kernel.refine`` frame by frame (maps on the CPU), with the same returns as ``_refine_torch`` (counts
    stop at ``enough``)."""
    # contiguous float32 maps and float64 cameras: one compiled specialisation of each kernel
    pts_np, conf_np = pts.float().contiguous().numpy(), conf.float().contiguous().numpy()
    K_np, R_np, t_np = (x.double().contiguous().numpy() for x in (K, R, t))
    out = []
    for i in range(len(pts_np)):
        got = pose_kernel.refine(
            pts_np[i],
            conf_np[i],
            K_np[i],
            R_np[i],
            t_np[i],
            step,
            coarse_iterations,
            fine_step,
            fine_iterations,
            max_error_px,
        )
        out.append((*got, pose_kernel.count_weighted(pts_np[i], conf_np[i], enough)))
    return tuple(torch.from_numpy(np.stack(x)) for x in zip(*out))


def _coarse_step(H: int, W: int) -> int:
    """The coarse steps' row and column step: ~3000 sampled pixels per frame (every 4th row and column at 224²)."""
    return max(1, round(math.sqrt(H * W / 3000)))


def _robust_solve(
    pts,
    conf,
    K,
    init,
    *,
    warm: bool,
    coarse_iterations,
    fine_iterations,
    fine_step,
    max_error_px,
    min_points,
    min_inlier_weight,
    min_condition,
    compiled: bool | None = None,
):
    """The robust batched solve; world-to-camera R [B, 3, 3], t [B, 3] (float64), valid [B], enough points [B].
    ``warm``: start from ``init`` (finite for every frame) instead of the best of the linear starts and it.
    ``compiled``: refine with ``pose_kernel`` (default for maps on the CPU) rather than torch passes."""
    H, W = pts.shape[1:3]
    compiled = pts.device.type == "cpu" if compiled is None else compiled
    K_ok = K.flatten(1).isfinite().all(1) & (K[:, 0, 0] > 0) & (K[:, 1, 1] > 0)
    K = torch.where(K_ok[:, None, None], K, torch.eye(3, dtype=K.dtype, device=K.device))

    step = _coarse_step(H, W)
    if warm:
        R = init[:, :3, :3].transpose(1, 2)  # world-to-camera of a camera-to-world init
        t = -(R @ init[:, :3, 3:])[..., 0]
    else:
        pts_w, w = _confidence_weights(pts, conf)
        Xs, ws, ns = _coarse_sample(pts_w, w, K, step)
        R, t = _best_start(Xs, ns, ws, len(range(0, W, step)), K, init, max_error_px)
    refine = _refine_compiled if compiled else _refine_torch
    R, t, H_last, inlier, depth, count = refine(
        pts, conf, K, R, t, step, coarse_iterations, fine_step, fine_iterations, max_error_px, min_points
    )
    enough = K_ok & (count >= min_points)
    valid = enough & _pose_validity(H_last, depth, inlier, min_inlier_weight, min_condition)
    valid &= R.flatten(1).isfinite().all(1) & t.isfinite().all(1)
    return R, t, valid, enough


def _frames(index: torch.Tensor, B: int, pts, conf, K, init):
    """The frames ``index`` of the solve's inputs (init may be None); all of them as they are, without a copy."""
    if len(index) == B:
        return pts, conf, K, init
    return pts[index], conf[index], K[index], None if init is None else init[index]


def _chunked(frames: tuple, settings: dict):
    """``_robust_solve`` over the batch ``frames`` (pts, conf, K, init); on a CPU in chunks of ``CPU_CHUNK``
    frames, which keep the per-pixel work (~20 MB) in cache; a GPU takes the batch at once."""
    pts, conf, K, init = frames
    chunk = CPU_CHUNK if pts.device.type == "cpu" else pts.shape[0]
    parts = [  # (slices are views: no copy of the maps)
        _robust_solve(
            pts[i : i + chunk],
            conf[i : i + chunk],
            K[i : i + chunk],
            None if init is None else init[i : i + chunk],
            **settings,
        )
        for i in range(0, pts.shape[0], chunk)
    ]
    R, t, valid, enough = (torch.cat(x) for x in zip(*parts))
    return R, t, valid, enough


def _to_c2w(R: torch.Tensor, t: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """World-to-camera R, t → camera-to-world [B, 4, 4] float64, NaN where not valid."""
    c2w = torch.eye(4, dtype=torch.float64, device=R.device).repeat(R.shape[0], 1, 1)
    c2w[:, :3, :3] = R.transpose(1, 2)
    c2w[:, :3, 3] = -(R.transpose(1, 2) @ t[..., None])[..., 0]
    return torch.where(valid[:, None, None], c2w, torch.full_like(c2w, float("nan")))


def _host_pose_validity(
    H: np.ndarray, depth: float, inlier: float, min_inlier_weight: float, min_condition: float
) -> bool:
    """``_pose_validity`` of one frame, in numpy (``_solve_warm_host``)."""
    d = 1.0 if math.isnan(depth) else min(abs(depth), sys.float_info.max)  # torch's nan_to_num(1.0), scalar
    d = max(d, 1e-12)
    D = np.array([1.0, 1.0, 1.0, d, d, d])
    Hn = H * D[:, None] * D[None, :]
    if not np.isfinite(Hn).all():
        return False
    eig = np.linalg.eigvalsh(Hn)
    return bool(eig[-1] > 0 and eig[0] > min_condition * eig[-1] and inlier >= min_inlier_weight)


def _solve_warm_host(
    pts: np.ndarray,
    conf: np.ndarray,
    K: np.ndarray,
    init: np.ndarray,
    *,
    warm_iterations: int,
    fine_iterations: int,
    fine_step: int,
    max_error_px: float,
    min_points: int,
    min_inlier_weight: float,
    min_condition: float,
    **_: Any,
) -> tuple[CameraPose, bool]:
    """The warm robust solve of one map on the host (pts [H, W, 3] float32, conf [H, W] float32, K [3, 3], a finite
    camera-to-world init [4, 4]), as ``solve_poses`` solves it (``_robust_solve(warm=True)``, compiled refinement)
    without building a batch: in numpy and the compiled kernels, no torch op. Returns the pose and whether the map
    had enough points (a map with too few is settled: invalid, tried no other way)."""
    K_ok = bool(np.isfinite(K).all() and K[0, 0] > 0 and K[1, 1] > 0)
    K = K if K_ok else np.eye(3)
    R = np.ascontiguousarray(init[:3, :3].T)  # world-to-camera of a camera-to-world init
    t = -(R @ init[:3, 3])
    step = _coarse_step(*conf.shape)
    R, t, H, inlier, depth = pose_kernel.refine(
        pts, conf, K, R, t, step, warm_iterations, fine_step, fine_iterations, max_error_px
    )
    enough = K_ok and pose_kernel.count_weighted(pts, conf, min_points) >= min_points
    valid = enough and _host_pose_validity(H, depth, inlier, min_inlier_weight, min_condition)
    valid = valid and bool(np.isfinite(R).all() and np.isfinite(t).all())
    c2w = np.full((4, 4), np.nan)
    if valid:
        c2w[3] = (0.0, 0.0, 0.0, 1.0)
        c2w[:3, :3] = R.T
        c2w[:3, 3] = -(R.T @ t)
    return CameraPose(c2w, valid), enough


def solve_poses(
    pts3d: np.ndarray | torch.Tensor,
    conf: np.ndarray | torch.Tensor,
    K: np.ndarray | torch.Tensor,
    init: np.ndarray | torch.Tensor | None = None,
    *,
    method: str = "robust",
    fallback: bool | np.ndarray | torch.Tensor = True,
    coarse_iterations: int = 4,
    warm_iterations: int = 2,
    fine_iterations: int = 1,
    fine_step: int = 2,
    max_error_px: float = 8.0,
    min_points: int = 64,
    min_inlier_weight: float = 0.5,
    min_condition: float = 1e-9,
):
    """Camera-to-world poses of a batch of frames, each seeing its global pointmap through its pixel grid.

    pts3d [B, H, W, 3] (world = first camera, OpenCV axes), conf [B, H, W] (≥ 1; weight log(conf), so pixels at
    the minimum count for nothing; non-finite pixels are ignored), K [3, 3] or [B, 3, 3] (pixels of the H×W grid,
    pixel (u, v) at column u, row v, as ``pixel_grid``), init [4, 4] or [B, 4, 4] camera-to-world (e.g. the
    stream's previous pose) or None. ``method``: ``"robust"`` (default; see the section comment) or
    ``"pnp_ransac"`` (per frame, OpenCV, every finite point, confidence ignored: the official demo's estimator).
    ``fallback``: retry frames that fail the check (with enough points) from PnP-RANSAC (a bool, or one per
    frame). Tuning:
    ``coarse_iterations`` steps on every 4th row and column (``warm_iterations`` from a finite ``init``, tried
    first), then ``fine_iterations`` (≥ 1) on every ``fine_step``-th row and column; valid
    needs ``min_points`` pixels with conf > 1, at least ``min_inlier_weight`` of the confidence within
    ``max_error_px`` and the normal equations' smallest / largest eigenvalue above ``min_condition``.

    Returns (c2w [B, 4, 4] float64, NaN where not valid; valid [B] bool): torch tensors on pts3d's device, or
    numpy arrays when pts3d is not a tensor.
    """
    if method not in POSE_METHODS:
        raise ValueError(f"unknown pose method {method!r} (choose from {', '.join(POSE_METHODS)})")
    if coarse_iterations < 0 or warm_iterations < 0 or fine_iterations < 1 or fine_step < 1:
        raise ValueError(
            "need coarse_iterations >= 0, warm_iterations >= 0, fine_iterations >= 1 and fine_step >= 1, "
            f"got {coarse_iterations}, {warm_iterations}, {fine_iterations}, {fine_step}"
        )
    as_numpy = not isinstance(pts3d, torch.Tensor)
    pts, conf_t, K_t, init_t = _as_batch(pts3d, conf, K, init)
    if method == "pnp_ransac":
        c2w, valid = _ransac_batch(pts, pts.isfinite().all(-1), K_t)
    else:
        settings: dict[str, Any] = dict(
            fine_iterations=fine_iterations,
            fine_step=fine_step,
            max_error_px=max_error_px,
            min_points=min_points,
            min_inlier_weight=min_inlier_weight,
            min_condition=min_condition,
        )
        cold = dict(settings, warm=False, coarse_iterations=coarse_iterations)
        B = pts.shape[0]
        R = torch.full((B, 3, 3), float("nan"), dtype=torch.float64, device=pts.device)
        t = torch.full((B, 3), float("nan"), dtype=torch.float64, device=pts.device)
        valid = torch.zeros(B, dtype=torch.bool, device=pts.device)
        enough = torch.ones(B, dtype=torch.bool, device=pts.device)
        todo = torch.ones(B, dtype=torch.bool, device=pts.device)  # frames still to solve the cold way
        if init_t is not None:
            w = init_t.flatten(1).isfinite().all(1).nonzero()[:, 0]
            if len(w):
                warm = dict(settings, warm=True, coarse_iterations=warm_iterations)
                R[w], t[w], valid[w], enough[w] = _chunked(_frames(w, B, pts, conf_t, K_t, init_t), warm)
                todo[w] = enough[w] & ~valid[w]
        c = todo.nonzero()[:, 0]
        if len(c):
            R[c], t[c], valid[c], enough[c] = _chunked(_frames(c, B, pts, conf_t, K_t, init_t), cold)
        retry = enough & ~valid & torch.as_tensor(fallback, dtype=torch.bool, device=pts.device)
        if bool(retry.any()):
            i = retry.nonzero()[:, 0]
            keep = pts[i].isfinite().all(-1) & (conf_t[i] > 1)
            c2w_r, ok = _ransac_batch(pts[i], keep, K_t[i])
            if bool(ok.any()):
                i, c2w_r = i[ok], c2w_r[ok]
                R2, t2, valid2, _ = _robust_solve(pts[i], conf_t[i], K_t[i], c2w_r, **cold)
                R[i], t[i], valid[i] = R2, t2, valid2
        c2w = _to_c2w(R, t, valid)
    if as_numpy:
        return c2w.cpu().numpy(), valid.cpu().numpy()
    return c2w, valid


# ----------------------------------------------------------------------------- a stream's poses over time
LOST_AFTER = 3  # finals in a row without a valid pose: the track is lost
LOST_RANSAC_EVERY = 10  # while lost, one final in this many (and its step's preview) gets the PnP-RANSAC fallback


@dataclass
class PoseTrack:
    """A stream's camera over time: its intrinsics at the model resolution, the pose of its latest final that
    had a valid one, which warm-starts the solves of its next maps (``solve_poses(init=)``), and how many finals
    in a row had none. A lost track (a covered lens, a model that gives no geometry) tries the PnP-RANSAC fallback
    only now and then: it costs ~60-100 ms of CPU a map, for nothing while the maps stay bad. The offline
    reconstruction and the service both go through ``solve_tracks``, so a stream's poses do not depend on where
    it ran or on which other streams shared its solves."""

    K: np.ndarray  # [3, 3]
    last: np.ndarray | None = None  # [4, 4] camera-to-world of the latest final with a valid pose
    misses: int = 0  # finals in a row without a valid pose

    @property
    def fallback(self) -> bool:
        """Whether this track's next maps may use the PnP-RANSAC fallback."""
        return self.misses < LOST_AFTER or self.misses % LOST_RANSAC_EVERY == 0

    def state(self) -> dict:
        """Everything but K, as plain JSON values (a snapshot record keeps it)."""
        return {"last": None if self.last is None else self.last.tolist(), "misses": self.misses}

    @classmethod
    def from_state(cls, K: np.ndarray, state: dict | None) -> PoseTrack:
        if state is None:
            return cls(K)
        return cls(K, None if state["last"] is None else np.array(state["last"], np.float64), int(state["misses"]))


@dataclass(frozen=True)
class TrackMap:
    pts3d: np.ndarray | torch.Tensor  # [H, W, 3]: host, or a tensor on any device (the engine's: no copy)
    conf: np.ndarray | torch.Tensor  # [H, W]
    final: bool  # the stream's next final (its pose moves the track on); a preview's does not


def _stacked(maps: Sequence[np.ndarray | torch.Tensor], device: torch.device | str) -> torch.Tensor:
    """Maps [H, W, ...] → [N, H, W, ...] on ``device``: host arrays go up in one copy, tensors move only if
    elsewhere."""
    if all(isinstance(m, np.ndarray) for m in maps):
        return torch.from_numpy(np.stack(maps)).to(device)
    return torch.stack([torch.as_tensor(m).to(device) for m in maps])


def _host_map(m: np.ndarray | torch.Tensor) -> np.ndarray:
    """A map on the host as the compiled kernels take it: contiguous float32 (no copy when it already is)."""
    a = m.detach().numpy() if isinstance(m, torch.Tensor) else m
    return np.ascontiguousarray(a, dtype=np.float32)


def solve_tracks(
    jobs: Sequence[tuple[PoseTrack, Sequence[TrackMap], str]], device: torch.device | str = "cpu"
) -> list[list[CameraPose]]:
    """Poses of the maps of several streams (track, maps, pose method each), in one batched ``solve_poses`` call
    per method on ``device`` (the engine's: maps already there stay, host maps go up once, two poses a map come
    back), each map with its stream's K and warm-started from its stream's latest final pose; then each track
    moves on to its new final's pose when valid. On a CPU, a warm-started robust solve runs map by map on the host
    maps (``_solve_warm_host``: the batch would only be split into frames again by the compiled refinement, and
    building it costs more than the solve's own glue); the maps it does not settle go to the batched solve."""
    on_cpu = torch.device(device).type == "cpu"
    poses: list[list[CameraPose]] = [[] for _ in jobs]
    for method in dict.fromkeys(m for _, maps, m in jobs if maps):
        mine = [(i, track, m) for i, (track, maps, meth) in enumerate(jobs) if meth == method for m in maps]
        got: dict[int, CameraPose] = {}
        if on_cpu and method == "robust":
            for k, (_, track, m) in enumerate(mine):
                if track.last is not None and np.isfinite(track.last).all():
                    pose, enough = _solve_warm_host(
                        _host_map(m.pts3d), _host_map(m.conf), track.K, track.last, **_SOLVE_DEFAULTS
                    )
                    if pose.valid or not enough:  # settled as solve_poses would settle it
                        got[k] = pose
        rest = [k for k in range(len(mine)) if k not in got]
        if rest:
            nan = np.full((4, 4), np.nan)
            todo = [mine[k] for k in rest]
            c2w_t, valid_t = solve_poses(
                _stacked([m.pts3d for _, _, m in todo], device),
                _stacked([m.conf for _, _, m in todo], device),
                np.stack([track.K for _, track, _ in todo]),
                np.stack([nan if track.last is None else track.last for _, track, _ in todo]),
                method=method,
                fallback=np.array([track.fallback for _, track, _ in todo]),
            )
            c2w, valid = c2w_t.cpu().numpy(), valid_t.cpu().numpy()
            got.update((k, CameraPose(c2w[j], bool(valid[j]))) for j, k in enumerate(rest))
        for k, (i, _, _) in enumerate(mine):
            poses[i].append(got[k])
    for (track, maps, _), got_poses in zip(jobs, poses):
        for m, pose in zip(maps, got_poses):
            if m.final:
                track.misses = 0 if pose.valid else track.misses + 1
                if pose.valid:
                    track.last = pose.c2w
    return poses


# solve_poses's tuning, as its signature gives it (one place to change it): the host warm solves use the same
_SOLVE_DEFAULTS = {
    name: p.default for name, p in inspect.signature(solve_poses).parameters.items() if p.kind is p.KEYWORD_ONLY
}

"""Batched robust camera poses (``solve_poses``) on rendered scenes, side by side with OpenCV's PnP-RANSAC."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from spann3r.core.camera import solve_poses

ROOM_LO, ROOM_HI = np.array([-2.0, -1.2, -2.5]), np.array([2.0, 1.2, 2.5])  # an axis-aligned room, metres


# ----------------------------------------------------------------------------- scenes
def look_at(eye: np.ndarray, target: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """Camera-to-world [4, 4] (OpenCV axes) at ``eye`` looking at ``target``, rolled by ``roll`` radians."""
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, [0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c, s = math.cos(roll), math.sin(roll)
    x, y = c * x + s * y, -s * x + c * y
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = np.stack((x, y, z), 1), eye
    return c2w


def render_room(K: np.ndarray, c2w: np.ndarray, h: int, w: int, u=None, v=None) -> np.ndarray:
    """World points [h, w, 3] the camera (K at pixel (u, v) = (column, row), no half-pixel) sees inside the room;
    ``u, v`` [h, w] override the pixel positions (any real coordinates)."""
    if u is None:
        v, u = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    rays_cam = np.linalg.solve(K, np.stack((u, v, np.ones_like(u)), 0).reshape(3, -1))  # z = 1
    d = c2w[:3, :3] @ rays_cam  # [3, N] world direction per unit depth
    eye = c2w[:3, 3:]
    with np.errstate(divide="ignore"):
        bound = np.where(d > 0, ROOM_HI[:, None], ROOM_LO[:, None])
        t_axis = np.where(d != 0, (bound - eye) / d, np.inf)
    depth = t_axis.min(0)  # the wall each ray leaves the room through
    return (eye + d * depth).T.reshape(h, w, 3)


def random_camera(rng: np.random.Generator) -> np.ndarray:
    """A camera inside the room looking roughly at a corner, so that it sees two walls and the floor or ceiling."""
    eye = rng.uniform(ROOM_LO * 0.5, ROOM_HI * 0.5)
    corner = np.where(rng.random(3) < 0.5, ROOM_LO, ROOM_HI) * rng.uniform(0.6, 0.9, 3)
    return look_at(eye, corner, roll=rng.uniform(-0.3, 0.3))


def network_like(
    pts: np.ndarray, c2w: np.ndarray, rng: np.random.Generator, noise: float = 0.005, outliers: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Exact world points → (noisy points, confidence) as a network would give: isotropic noise of ``noise`` x depth,
    and a fraction ``outliers`` of pixels thrown up to 30 % of their depth away with lower confidence."""
    depth = np.linalg.norm(pts - c2w[:3, 3], axis=-1, keepdims=True)
    pts = pts + rng.normal(0, noise, pts.shape) * depth
    conf = 1 + np.exp(rng.normal(1.5, 0.5, pts.shape[:2]))
    bad = rng.random(pts.shape[:2]) < outliers
    pts[bad] += rng.uniform(-0.3, 0.3, (bad.sum(), 3)) * depth[bad]
    conf[bad] = 1 + np.exp(rng.normal(0.0, 0.5, bad.sum()))
    return pts.astype(np.float32), conf.astype(np.float32)


def pose_errors(c2w: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation error (degrees) and camera-centre error (metres), [B] each."""
    rel = np.einsum("bji,bjk->bik", c2w[:, :3, :3], truth[:, :3, :3])
    angle = np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    return angle, np.linalg.norm(c2w[:, :3, 3] - truth[:, :3, 3], axis=-1)


def scene_batch(
    batch: int, seed: int, noise: float = 0.005, outliers: float = 0.0, size: int = 224, focal: float = 200.0
):
    """``batch`` rendered frames: (pts [B, size, size, 3] float32, conf [B, size, size], K [3, 3], c2w [B, 4, 4])."""
    rng = np.random.default_rng(seed)
    K = np.array([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1]])
    truth = np.stack([random_camera(rng) for _ in range(batch)])
    frames = [network_like(render_room(K, c2w, size, size), c2w, rng, noise, outliers) for c2w in truth]
    return np.stack([f[0] for f in frames]), np.stack([f[1] for f in frames]), K, truth


def opencv_errors(pts, conf, K, truth):
    c2w, valid = solve_poses(pts, conf, K, method="pnp_ransac")
    assert valid.all()
    return pose_errors(c2w, truth)


# ----------------------------------------------------------------------------- accuracy
def test_exact_pointmaps_give_the_exact_pose():
    pts, conf, K, truth = scene_batch(4, seed=0, noise=0.0)
    c2w, valid = solve_poses(pts, conf, K)
    assert isinstance(c2w, np.ndarray) and c2w.shape == (4, 4, 4) and c2w.dtype == np.float64
    assert valid.dtype == bool and valid.all()
    rot, trans = pose_errors(c2w, truth)
    assert rot.max() < 1e-3 and trans.max() < 1e-4  # degrees, metres: float32 pointmaps


@pytest.mark.parametrize("outliers", [0.0, 0.1, 0.3])
def test_as_accurate_as_opencv_ransac_on_noisy_pointmaps_with_outliers(outliers):
    """0.5 % depth noise and gross outliers with lower confidence; the same scenes through OpenCV's PnP-RANSAC."""
    pts, conf, K, truth = scene_batch(6, seed=1, noise=0.005, outliers=outliers)
    c2w, valid = solve_poses(pts, conf, K, fallback=False)
    assert valid.all()
    rot, trans = pose_errors(c2w, truth)
    cv_rot, cv_trans = opencv_errors(pts, conf, K, truth)
    assert rot.mean() <= 1.5 * cv_rot.mean() + 0.005, (rot, cv_rot)
    assert trans.mean() <= 1.5 * cv_trans.mean() + 2e-4, (trans, cv_trans)
    assert rot.max() < 0.15 and trans.max() < 0.01  # degrees, metres (cameras 1-3 m from the walls)


def test_a_single_plane_is_solved_too():
    """Facing one wall, the DLT is degenerate: the homography start takes over."""
    rng = np.random.default_rng(5)
    K = np.array([[200.0, 0, 112], [0, 200.0, 112], [0, 0, 1]])
    truth = np.stack(
        [
            look_at(np.array([0.3, -0.2, 1.5]), np.array([0.5, 0.1, 2.5]), roll=0.2),
            look_at(np.array([-0.5, 0.3, 1.3]), np.array([-0.8, 0.2, 2.5]), roll=-0.1),
        ]
    )
    exact = [render_room(K, c2w, 224, 224) for c2w in truth]
    assert np.allclose(np.stack(exact)[..., 2], 2.5)  # really one plane
    frames = [network_like(pts, c2w, rng) for pts, c2w in zip(exact, truth)]
    pts, conf = np.stack([f[0] for f in frames]), np.stack([f[1] for f in frames])
    c2w, valid = solve_poses(pts, conf, K, fallback=False)
    rot, trans = pose_errors(c2w, truth)
    cv_rot, cv_trans = opencv_errors(pts, conf, K, truth)
    assert valid.all() and rot.max() < 0.2 and trans.max() < 0.01
    assert rot.mean() <= 1.5 * cv_rot.mean() + 0.005 and trans.mean() <= 1.5 * cv_trans.mean() + 2e-4


def test_batch_equals_frame_by_frame_with_per_frame_intrinsics():
    pts, conf, K, _ = scene_batch(3, seed=2, outliers=0.1)
    Ks = np.stack([K, K, K])
    Ks[1, 0, 0] *= 1.1  # a different camera for frame 1: its pose changes, the others must not
    c2w, valid = solve_poses(pts, conf, Ks)
    for i in range(3):
        one, ok = solve_poses(pts[i : i + 1], conf[i : i + 1], Ks[i])
        assert ok[0] == valid[i]
        np.testing.assert_allclose(one[0], c2w[i], atol=1e-5)
    ref, _ = solve_poses(pts, conf, K)
    np.testing.assert_allclose(c2w[[0, 2]], ref[[0, 2]], atol=1e-5)
    assert np.abs(c2w[1] - ref[1]).max() > 1e-3


def test_warm_start_gives_the_same_answer():
    pts, conf, K, truth = scene_batch(4, seed=3, outliers=0.2)
    cold, valid = solve_poses(pts, conf, K)
    assert valid.all()
    near = truth.copy()
    near[:, :3, 3] += 0.02  # the stream's previous pose: close, not equal
    for init in (near, cold, np.eye(4), np.full((4, 4), np.nan)):  # far-off or failed inits lose to the linear starts
        warm, ok = solve_poses(pts, conf, K, init=init)
        assert ok.all()
        # the same minimum: IRLS stops after a fixed few steps, so within a tenth of the error to the truth (~1 mm)
        np.testing.assert_allclose(warm, cold, atol=1e-4)


def nudged(c2w: np.ndarray, rng: np.random.Generator, degrees: float, metres: float) -> np.ndarray:
    """Poses moved by a random rotation of ``degrees`` and a random shift of ``metres``, as between two frames."""
    out = c2w.copy()
    for i in range(len(out)):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        hat = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        a = math.radians(degrees)
        out[i, :3, :3] = out[i, :3, :3] @ (np.eye(3) + math.sin(a) * hat + (1 - math.cos(a)) * hat @ hat)
        shift = rng.normal(size=3)
        out[i, :3, 3] += metres * shift / np.linalg.norm(shift)
    return out


@pytest.mark.parametrize("outliers", [0.0, 0.3])
def test_warm_start_from_the_previous_frame_is_as_accurate_and_skips_the_linear_starts(outliers, monkeypatch):
    """The service warm-starts each map from its stream's previous pose (a few degrees and centimetres away):
    that path skips the linear starts and must be as accurate as the cold one, and as OpenCV's PnP-RANSAC."""
    import spann3r.core.camera as camera

    pts, conf, K, truth = scene_batch(6, seed=11, noise=0.005, outliers=outliers)
    cold, valid = solve_poses(pts, conf, K, fallback=False)
    assert valid.all()
    starts: list[int] = []
    best_start = camera._best_start
    monkeypatch.setattr(camera, "_best_start", lambda *a, **k: starts.append(1) or best_start(*a, **k))
    init = nudged(truth, np.random.default_rng(0), degrees=3.0, metres=0.05)
    warm, ok = solve_poses(pts, conf, K, init=init, fallback=False)
    assert ok.all() and starts == []  # every frame took the warm path
    rot, trans = pose_errors(warm, truth)
    cold_rot, cold_trans = pose_errors(cold, truth)
    cv_rot, cv_trans = opencv_errors(pts, conf, K, truth)
    assert rot.mean() <= 1.5 * cold_rot.mean() + 0.005 and trans.mean() <= 1.5 * cold_trans.mean() + 2e-4
    assert rot.mean() <= 1.5 * cv_rot.mean() + 0.005 and trans.mean() <= 1.5 * cv_trans.mean() + 2e-4
    assert rot.max() < 0.15 and trans.max() < 0.01


def test_a_wrong_warm_start_falls_back_to_the_cold_solve():
    """An init far from the truth (tracking lost, a jump) fails the check after its few steps; the frame is solved
    again the cold way, with the init only as one candidate among the linear starts."""
    pts, conf, K, truth = scene_batch(4, seed=12, outliers=0.1)
    cold, valid = solve_poses(pts, conf, K, fallback=False)
    assert valid.all()
    far = nudged(truth, np.random.default_rng(1), degrees=70.0, metres=1.0)
    warm, ok = solve_poses(pts, conf, K, init=far, fallback=False)
    assert ok.all()
    np.testing.assert_allclose(warm, cold, atol=1e-4)


def test_a_lost_track_tries_the_ransac_fallback_only_now_and_then(monkeypatch):
    """Maps without geometry (a covered lens, an untrained model) fail every solve; PnP-RANSAC costs ~60-100 ms a
    map for nothing then, so a lost track tries it only on one final in ``LOST_RANSAC_EVERY``. A good map finds
    the camera again at once (the cold solve needs no RANSAC) and the track is no longer lost."""
    import spann3r.core.camera as camera
    from spann3r.core.camera import LOST_AFTER, LOST_RANSAC_EVERY, PoseTrack, TrackMap, solve_tracks

    calls: list[int] = []
    ransac = camera._ransac_batch
    monkeypatch.setattr(camera, "_ransac_batch", lambda p, keep, K: calls.append(len(p)) or ransac(p, keep, K))
    pts, conf, K, truth = scene_batch(1, seed=13)
    noise = np.random.default_rng(0).uniform(-1, 1, pts.shape[1:]).astype(np.float32) + np.float32([0, 0, 3])
    track = PoseTrack(K)
    tried = []
    for _ in range(2 * LOST_RANSAC_EVERY + 1):
        before = len(calls)
        ((pose,),) = solve_tracks([(track, [TrackMap(noise, conf[0], final=True)], "robust")])
        assert not pose.valid
        tried.append(len(calls) > before)
    assert tried == [i < LOST_AFTER or i % LOST_RANSAC_EVERY == 0 for i in range(len(tried))]
    assert track.misses == len(tried) and track.last is None
    ((pose,),) = solve_tracks([(track, [TrackMap(pts[0], conf[0], final=True)], "robust")])
    assert pose.valid and track.misses == 0
    rot, trans = pose_errors(pose.c2w[None], truth)
    assert rot.max() < 0.15 and trans.max() < 0.01


def test_torch_in_torch_out():
    pts, conf, K, _ = scene_batch(2, seed=4)
    c2w, valid = solve_poses(torch.from_numpy(pts), torch.from_numpy(conf), torch.from_numpy(K))
    assert isinstance(c2w, torch.Tensor) and c2w.dtype == torch.float64 and valid.dtype == torch.bool
    np.testing.assert_allclose(c2w.numpy(), solve_poses(pts, conf, K)[0], atol=1e-9)


@pytest.mark.parametrize("fine_step", [1, 2, 3])
@pytest.mark.parametrize("warm", [True, False])
def test_the_compiled_refinement_equals_the_torch_one(fine_step, warm):
    """On a CPU the Gauss-Newton steps run compiled (``pose_kernel``); accelerators run the torch passes. Both are
    one algorithm: the same poses, validity and point counts, with non-finite pixels, outliers, points behind the
    camera and a frame that fails the check (too few confident points) in the batch. The coarse step (4 at 224²)
    is a multiple of fine steps 1 and 2 (both sets packed in one pass) and not of 3 (a pass each)."""
    from spann3r.core import camera

    pts, conf, K, truth = scene_batch(4, seed=6, outliers=0.2)
    pts[0, :40] = np.nan  # non-finite points and confidences are ignored
    conf[1, 100:, :30] = np.inf
    centre = truth[2, :3, 3].astype(np.float32)
    pts[2, :20] = 2 * centre - pts[2, :20]  # mirrored through the camera: behind it, no pull on the pose
    conf[3] = 1.0  # no confident pixel: not enough points
    init = nudged(truth, np.random.default_rng(1), degrees=1.0, metres=0.02)
    args = (torch.from_numpy(pts), torch.from_numpy(conf), torch.from_numpy(K).expand(4, 3, 3), torch.from_numpy(init))
    settings = dict(
        warm=warm, coarse_iterations=2 if warm else 4, fine_iterations=1, fine_step=fine_step, max_error_px=8.0,
        min_points=64, min_inlier_weight=0.5, min_condition=1e-9,
    )  # fmt: skip
    R_c, t_c, valid_c, enough_c = camera._robust_solve(*args, **settings, compiled=True)
    R_t, t_t, valid_t, enough_t = camera._robust_solve(*args, **settings, compiled=False)
    assert valid_c.tolist() == valid_t.tolist() == [True, True, True, False]
    assert enough_c.tolist() == enough_t.tolist() == [True, True, True, False]
    # float32 per-pixel passes (torch) against float64 (compiled): ~1e-7 apart on these scenes
    np.testing.assert_allclose(R_c[:3].numpy(), R_t[:3].numpy(), atol=1e-5)
    np.testing.assert_allclose(t_c[:3].numpy(), t_t[:3].numpy(), atol=1e-5)


@pytest.mark.parametrize("compiled", [True, False])
def test_points_behind_the_camera_count_for_nothing(compiled):
    """A network can put points behind the camera. They pull on no step, whatever their coordinates: the poses
    equal those of the same map without them (here a block at camera depth -1 on its pixels' normalised
    coordinates, where an unguarded projection would read them as lying exactly on their rays)."""
    from spann3r.core import camera

    pts, conf, K, truth = scene_batch(2, seed=8, outliers=0.1)
    init = nudged(truth, np.random.default_rng(4), degrees=2.0, metres=0.05)
    v, u = np.mgrid[60:120, 40:140]
    m = np.stack([u, v, np.ones_like(u)], -1).astype(np.float64) @ np.linalg.inv(K).T  # (mx, my, 1)
    cam = m * np.array([1.0, 1.0, -1.0])  # camera depth -1
    without = conf.copy()
    without[:, 60:120, 40:140] = 1.0  # the same pixels, counting for nothing
    for b in range(2):
        w2c = np.linalg.inv(truth[b])
        pts[b, 60:120, 40:140] = (cam - w2c[:3, 3]) @ w2c[:3, :3]  # world points of those camera points
    settings = dict(
        warm=True, coarse_iterations=2, fine_iterations=1, fine_step=2, max_error_px=8.0, min_points=64,
        min_inlier_weight=0.5, min_condition=1e-9, compiled=compiled,
    )  # fmt: skip
    Kb = torch.from_numpy(K).expand(2, 3, 3)
    got = camera._robust_solve(torch.from_numpy(pts), torch.from_numpy(conf), Kb, torch.from_numpy(init), **settings)
    ref = camera._robust_solve(torch.from_numpy(pts), torch.from_numpy(without), Kb, torch.from_numpy(init), **settings)
    assert got[2].tolist() == ref[2].tolist() == [True, True]
    np.testing.assert_allclose(got[0].numpy(), ref[0].numpy(), atol=1e-9)
    np.testing.assert_allclose(got[1].numpy(), ref[1].numpy(), atol=1e-9)


def test_warm_solves_of_host_maps_equal_the_batched_solve(monkeypatch):
    """On a CPU, ``solve_tracks`` solves a warm-started robust map on its own (``_solve_warm_host``: numpy and the
    compiled kernels, no batch built) and leaves to the batched ``solve_poses`` only the maps the warm solve does not
    settle. Poses and validity are those of the batched solve, on good maps and on each way a map can fail: a
    warm start too far off (solved cold then), too few confident points, NaN points, a mirrored pointmap (no
    camera: RANSAC tried and refused), intrinsics that are not a camera."""
    from spann3r.core import camera
    from spann3r.core.camera import PoseTrack, TrackMap, solve_tracks

    pts, conf, K, truth = scene_batch(7, seed=14, outliers=0.2)
    init = nudged(truth, np.random.default_rng(2), degrees=1.0, metres=0.02)
    init[1] = nudged(truth[1:2], np.random.default_rng(3), degrees=70.0, metres=1.0)[0]  # far: cold solve
    conf[2] = 1.0  # nothing confident: too few points
    pts[3] = np.nan
    pts[4, ..., 0] *= -1  # mirrored
    Ks = np.stack([K] * 7)
    Ks[5, 0, 0] = np.nan
    expected, expected_valid = solve_poses(pts, conf, Ks, init)
    assert expected_valid.tolist() == [True, True, False, False, False, False, True]

    host_solves: list[bool] = []
    warm_host = camera._solve_warm_host
    monkeypatch.setattr(camera, "_solve_warm_host", lambda *a, **k: host_solves.append(True) or warm_host(*a, **k))
    batched: list[int] = []
    batch_solve = camera.solve_poses
    monkeypatch.setattr(camera, "solve_poses", lambda p, *a, **k: batched.append(len(p)) or batch_solve(p, *a, **k))
    tracks = [PoseTrack(Ks[i], last=init[i]) for i in range(7)]
    got = solve_tracks([(tracks[i], [TrackMap(pts[i], conf[i], final=False)], "robust") for i in range(7)])
    assert len(host_solves) == 7
    assert batched == [2]  # the far start and the mirrored map: not settled by the warm solve alone
    assert [p.valid for (p,) in got] == expected_valid.tolist()
    np.testing.assert_allclose(np.stack([p.c2w for (p,) in got]), expected, atol=1e-9)


def test_pnp_ransac_method_is_the_official_estimator():
    from spann3r.core.camera import solve_pose
    from spann3r.core.intrinsics import centred_intrinsics

    pts, conf, _, _ = scene_batch(2, seed=6, outliers=0.1)
    c2w, valid = solve_poses(pts, conf, centred_intrinsics(200.0, 224, 224), method="pnp_ransac")
    for i in range(2):
        pose = solve_pose(pts[i], 200.0)
        assert valid[i] == pose.valid
        np.testing.assert_array_equal(c2w[i], pose.c2w)


def test_ransac_fallback_rescues_a_coherent_bad_region():
    """A third of each pointmap displaced by a metre with *higher* confidence (a ghost copy): the linear starts mix
    both structures, the robust solve says so (invalid), and PnP-RANSAC's start brings it to the majority."""
    pts, conf, K, truth = scene_batch(4, seed=11)
    pts[:, :80] += np.array([1.0, 0.2, 0.0], np.float32)
    conf[:, :80] *= 1.5
    _, valid = solve_poses(pts, conf, K, fallback=False)
    assert not valid.any()
    c2w, valid = solve_poses(pts, conf, K)
    rot, trans = pose_errors(c2w, truth)
    assert valid.all() and rot.max() < 0.2 and trans.max() < 5e-3


def test_reference_camera_set_like_the_official_estimator(golden_A):
    """The reference's exact-geometry frames (rendered at 298x224, focal estimated): as close to the truth as the
    demo's PnP-RANSAC; the synthetic-weight outputs (focal 0, meaningless geometry) are invalid either way."""
    from spann3r.core.camera import solve_pose
    from spann3r.core.intrinsics import centred_intrinsics

    pts, focal = golden_A["camgt_pts3d"].astype(np.float32), float(golden_A["camgt_focal"])
    c2w, valid = solve_poses(pts, np.full(pts.shape[:3], 2.0, np.float32), centred_intrinsics(focal, 224, 224))
    assert valid.all()
    rot, trans = pose_errors(c2w, golden_A["camgt_true_c2w"])
    demo_rot, demo_trans = pose_errors(np.stack([solve_pose(p, focal).c2w for p in pts]), golden_A["camgt_true_c2w"])
    assert rot.max() <= 1.1 * demo_rot.max() + 1e-3 and trans.max() <= 1.1 * demo_trans.max() + 1e-4
    synthetic = golden_A["final_pts3d"][:3].astype(np.float32)
    for f in (0.0, 200.0):
        conf = np.full(synthetic.shape[:3], 1.5, np.float32)
        _, valid = solve_poses(synthetic, conf, centred_intrinsics(f, 224, 224))
        assert not valid.any()


# ----------------------------------------------------------------------------- degenerate input
def test_degenerate_frames_are_flagged_and_do_not_disturb_the_others():
    pts, conf, K, truth = scene_batch(6, seed=7, outliers=0.1)
    rng = np.random.default_rng(0)
    # 1: every point on one 3D line
    s = rng.uniform(1, 3, (224, 224, 1))
    pts[1] = (np.array([0.1, 0.2, 0.5]) + s * np.array([0.3, -0.1, 1.0])).astype(np.float32)
    # 2: no structure and every confidence at the minimum
    pts[2] = rng.normal(0, 1, pts[2].shape)
    conf[2] = 1.0
    # 3: all NaN; 4: a few NaN pixels only (ignored: still a good pose)
    pts[3] = np.nan
    pts[4, :5] = np.nan
    conf[4, 100:110, 100:110] = np.nan
    # 5: structure but a wrong sign on one axis (a mirrored pointmap): no camera reprojects it
    pts[5, ..., 0] *= -1
    c2w, valid = solve_poses(pts, conf, K)  # with the RANSAC fallback: it must not rescue any of them
    assert valid.tolist() == [True, False, False, False, True, False]
    assert np.isnan(c2w[~valid]).all()
    rot, trans = pose_errors(c2w[valid], truth[valid])
    assert rot.max() < 0.15 and trans.max() < 0.01


def test_bad_intrinsics_are_flagged():
    pts, conf, K, _ = scene_batch(3, seed=8)
    Ks = np.stack([K, K, K])
    Ks[1, 0, 0] = 0.0
    Ks[2, 1, 2] = np.nan
    _, valid = solve_poses(pts, conf, Ks)
    assert valid.tolist() == [True, False, False]


def test_bad_arguments():
    pts, conf, K, _ = scene_batch(1, seed=9)
    with pytest.raises(ValueError, match="pose method"):
        solve_poses(pts, conf, K, method="magic")
    with pytest.raises(ValueError, match="conf"):
        solve_poses(pts, conf[:, :10], K)
    with pytest.raises(ValueError, match="K"):
        solve_poses(pts, conf, np.eye(4))


def test_the_compiled_kernels_need_no_scipy(tmp_path):
    """numba's linear algebra and matrix products call SciPy, which the service does not depend on: the kernels
    compile (into an empty cache) and solve in a process where SciPy cannot be imported."""
    import subprocess
    import sys

    script = """
import sys
sys.modules["scipy"] = None  # import scipy raises ImportError
import numpy as np
from spann3r.core import pose_kernel
from spann3r.core.camera import solve_poses
pose_kernel.compile_kernels()
pts = np.random.default_rng(0).normal(size=(1, 16, 16, 3)).astype(np.float32) + np.float32([0, 0, 4])
c2w, valid = solve_poses(pts, np.full((1, 16, 16), 2.0, np.float32), np.eye(3), np.eye(4), fallback=False)
print("solved", c2w.shape)
"""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "solved (1, 4, 4)" in out.stdout
    assert any(tmp_path.rglob("*.nbi"))  # it compiled into the empty cache, not from the tree's

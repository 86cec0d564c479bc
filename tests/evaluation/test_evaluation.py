"""``spann3r.core.evaluation`` on rendered datasets with known geometry: loaders (layouts, sampling, crop,
intrinsics, pose conventions), the official alignment, ICP, and the metrics (zero error for exact predictions,
the known error for known perturbations)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rgbd_scenes import distance_to_room, room_normals

from spann3r.core.evaluation import (
    DATASETS,
    EvalError,
    align_to_gt,
    crop_resize_rgbd,
    evaluate_scene,
    intrinsics_matrix,
    load_prediction,
    lower_median,
    read_nrgbd_poses,
    select_scenes,
)
from spann3r.core.preprocess import crop_resize


@pytest.fixture(scope="module")
def chess_views(seven_scenes):
    root, _ = seven_scenes
    return DATASETS["7scenes"].load_views(root, "chess/seq-01", 20)


def exact_prediction(views, scale: float = 1.0, z_shift: float = 0.0) -> np.ndarray:
    """What a perfect model outputs, up to scale and depth shift: every view's ground truth in the camera of
    views[0]. [N, H, W, 3]; invalid pixels get garbage (the evaluation masks them)."""
    w2c = np.linalg.inv(views[0].c2w.astype(np.float64))
    pts = np.stack([v.pts3d for v in views]).astype(np.float64) @ w2c[:3, :3].T + w2c[:3, 3]
    pts = pts * scale
    pts[..., 2] += z_shift
    pts[~np.stack([v.valid for v in views])] = 1e3
    return pts.astype(np.float32)


# ----------------------------------------------------------------------------- loaders
def test_layouts_and_official_sampling(seven_scenes, nrgbd):
    root7, poses7 = seven_scenes
    assert DATASETS["7scenes"].list_scenes(root7) == ["chess/seq-01", "chess/seq-02", "office/seq-03"]
    assert DATASETS["7scenes"].kf_every == 20 and DATASETS["nrgbd"].kf_every == 40
    views = DATASETS["7scenes"].load_views(root7, "office/seq-03", 20)
    assert [v.name for v in views] == ["frame-000000.color.png", "frame-000020.color.png", "frame-000040.color.png"]
    for v, c2w in zip(views, poses7["office/seq-03"]):
        np.testing.assert_allclose(v.c2w, c2w, atol=1e-6)
        assert v.frame.img.shape == (3, 224, 224) and v.pts3d.shape == (224, 224, 3)
    assert not views[0].valid[108:115, 108:115].any() and views[0].valid.mean() > 0.99  # 65535 → invalid
    rootn, posesn = nrgbd
    assert DATASETS["nrgbd"].list_scenes(rootn) == ["kitchen", "whiteroom"]
    nviews = DATASETS["nrgbd"].load_views(rootn, "kitchen", 40)
    assert [v.name for v in nviews] == ["img0.png", "img40.png", "img80.png"]
    for v, c2w in zip(nviews, posesn["kitchen"]):  # OpenGL poses on disk, OpenCV after loading
        np.testing.assert_allclose(v.c2w, c2w, atol=1e-6)


def test_nan_pose_becomes_identity(nrgbd):
    root, _ = nrgbd
    poses = read_nrgbd_poses(root / "kitchen" / "poses.txt")
    assert len(poses) == 81
    np.testing.assert_array_equal(poses[1], np.diag([1, -1, -1, 1]).astype(np.float32))  # identity, then GL → CV


@pytest.mark.parametrize("dataset,scene", [("7scenes", "chess/seq-02"), ("nrgbd", "whiteroom")])
def test_ground_truth_points_lie_on_the_rendered_room(seven_scenes, nrgbd, dataset, scene):
    """Back-projection with the cropped/rescaled intrinsics and the poses lands on the true surfaces (a wrong
    crop offset, focal or axis convention moves points by decimetres)."""
    root = (seven_scenes if dataset == "7scenes" else nrgbd)[0]
    for v in DATASETS[dataset].load_views(root, scene, DATASETS[dataset].kf_every):
        d = np.abs(distance_to_room(v.pts3d[v.valid]))
        assert v.valid.mean() > 0.99
        # nearest-neighbour depth resampling (as the official loader) is up to ~1.5 source pixels off the ray
        assert np.median(d) < 1e-2 and np.percentile(d, 99) < 5e-2


def test_crop_resize_matches_the_model_preprocessing():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 5, (480, 640)).astype(np.float32)
    out_rgb, out_depth, K = crop_resize_rgbd(rgb, depth, intrinsics_matrix(525, 525, 320, 240))
    assert np.array_equal(out_rgb, crop_resize(rgb))
    s = 224 / 480 + 1e-8
    assert K[0, 0] == pytest.approx(525 * s) and K[1, 1] == pytest.approx(525 * s)
    # 298×224 after scaling, columns 37..260 kept: the centre stays the centre of the crop
    assert K[0, 2] == pytest.approx(320 * s + 0.5 * s - 0.5 * (640 * s - 298) - 0.5 - 37, abs=1e-4)
    assert K[1, 2] == pytest.approx(111.5 + 0.5 * s + 240 * s - 112, abs=1e-4)
    assert set(np.unique(out_depth)) <= set(np.unique(depth))  # nearest neighbour: no new values
    with pytest.raises(EvalError, match="principal point"):
        crop_resize_rgbd(rgb, depth, intrinsics_matrix(525, 525, 100, 240))


# ----------------------------------------------------------------------------- alignment and metrics
@pytest.mark.parametrize("n", [1, 2, 7, 10])
def test_lower_median_is_torch_median(n):
    x = np.random.default_rng(n).normal(size=(n, 3)).astype(np.float32)
    np.testing.assert_array_equal(lower_median(x, axis=0), torch.from_numpy(x).median(dim=0).values.numpy())


def test_alignment_undoes_scale_and_depth_shift(chess_views):
    pred = exact_prediction(chess_views, scale=0.37, z_shift=-1.3)
    valid = np.stack([v.valid for v in chess_views])
    pr, gt = align_to_gt(pred, np.stack([v.pts3d for v in chess_views]), valid, chess_views[0].c2w)
    np.testing.assert_allclose(pr, np.stack([v.pts3d for v in chess_views])[valid], atol=1e-5)
    np.testing.assert_allclose(gt, pr, atol=1e-5)


def test_exact_prediction_gives_zero_error(chess_views):
    m = evaluate_scene(exact_prediction(chess_views, scale=2.5, z_shift=0.7), chess_views, 0.1, "7scenes", "chess")
    assert max(m.acc, m.comp, m.acc_med, m.comp_med) < 1e-5
    assert m.nc_acc > 0.9999 and m.nc_comp > 0.9999 and m.chamfer < 1e-5
    assert m.points == sum(int(v.valid.sum()) for v in chess_views)


def test_displacement_along_normals_gives_its_size(chess_views):
    """Every predicted point moved by ±d along its surface normal: it is at distance d from its own ground-truth
    point and no closer to the rest of its plane, so the medians of accuracy and completion are d. The means
    come out a little lower: near edges a point can be closer to the other wall, and the loader's ground truth
    (nearest-neighbour depth, as the official one) lies a few mm off the planes."""
    d = 0.01
    rng = np.random.default_rng(1)
    world = []
    for v in chess_views:
        signs = rng.choice([-1.0, 1.0], size=v.valid.shape)[..., None]
        world.append(v.pts3d + d * signs * room_normals(v.pts3d))
    w2c = np.linalg.inv(chess_views[0].c2w.astype(np.float64))
    pred = (np.stack(world) @ w2c[:3, :3].T + w2c[:3, 3]).astype(np.float32)
    m = evaluate_scene(pred, chess_views, 0.1)
    assert m.acc_med == pytest.approx(d, rel=0.02) and m.comp_med == pytest.approx(d, rel=0.02)
    for value in (m.acc, m.comp, m.chamfer):
        assert value == pytest.approx(d, rel=0.1)
    assert m.nc < 0.99  # the noisy surface's estimated normals tilt


def test_icp_reduces_a_small_rigid_misplacement(chess_views):
    """1.5° and 3.6 cm off (the median alignment cannot remove it): ICP with the official threshold and default
    criteria brings it within a few millimetres (point-to-point ICP slides slowly along planes, and the
    default relative-change criteria stop it there)."""
    pred = exact_prediction(chess_views).astype(np.float64)
    a = np.deg2rad(1.5)
    R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    pred = (pred @ R.T + np.array([0.03, -0.02, 0.0])).astype(np.float32)
    without = evaluate_scene(pred, chess_views, 0.1, icp=False)
    refined = evaluate_scene(pred, chess_views, 0.1)
    assert without.acc > 0.03 and without.comp > 0.03
    assert refined.acc < without.acc / 5 and refined.comp < without.comp / 5 and refined.chamfer < 0.01
    assert not np.allclose(refined.extra["icp_transform"], np.eye(4), atol=1e-3)


def test_unordered_predictions_follow_their_order(chess_views, tmp_path):
    """An unordered run processes the views in ``order``: its frames follow that order, in the camera of
    views[order[0]]."""
    order = [2, 0, 1]
    ordered = [chess_views[i] for i in order]
    path = tmp_path / "p.npz"
    np.savez(
        path,
        pts3d=exact_prediction(ordered, scale=3.0),
        order=np.array(order),
        frame_names=np.array([v.name for v in ordered]),
    )
    pred, views = load_prediction(path, chess_views)
    assert [v.name for v in views] == [v.name for v in ordered]
    assert evaluate_scene(pred, views, 0.1).chamfer < 1e-5
    np.savez(path, pts3d=exact_prediction(ordered, scale=3.0))  # the same frames without their order
    pred, views = load_prediction(path, chess_views)
    assert evaluate_scene(pred, views, 0.1).chamfer > 0.05
    np.savez(path, pts3d=exact_prediction(ordered)[:2])
    with pytest.raises(EvalError, match="2 predicted frames"):
        load_prediction(path, chess_views)


def test_select_scenes():
    scenes = ["chess/seq-01", "chess/seq-02", "office/seq-03"]
    assert select_scenes(scenes, None) == scenes
    assert select_scenes(scenes, "chess/*") == scenes[:2]
    assert select_scenes(scenes, "office/seq-03,chess/seq-01") == ["office/seq-03", "chess/seq-01"]
    with pytest.raises(EvalError, match="no scene matches"):
        select_scenes(scenes, "kitchen")

"""Preprocessing (bit-exact to the official inputs, any size and orientation) and the camera estimators."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest
from PIL import Image

from spann3r.core.camera import estimate_focal, pixel_grid, solve_pose
from spann3r.core.preprocess import ImageError, crop_resize, decode_image, load_frame, prepare


@pytest.mark.parametrize("set_name", ["A", "B", "D"])
def test_every_golden_input_is_bit_identical(golden_dir, set_name):
    golden = np.load(golden_dir / f"golden_{set_name}.npz")
    files = [golden_dir / f"frames_{set_name}" / name for name in golden["frame_files"]]
    got = [hashlib.sha256(load_frame(f).img.numpy().astype("<f4").tobytes()).hexdigest() for f in files]
    assert got == golden["inputs_img_sha256"].tolist()


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("h,w", [(480, 640), (640, 480), (481, 641), (224, 224), (100, 3000), (3000, 100), (225, 227)])
def test_any_size_and_orientation_gives_224(h, w):
    f = prepare(_image(h, w))
    assert f.img.shape == (3, 224, 224) and f.colors.shape == (224, 224, 3)
    assert float(f.img.min()) >= -1 and float(f.img.max()) <= 1


def test_odd_sizes_drop_the_last_row_and_column():
    img = _image(481, 641)
    np.testing.assert_array_equal(crop_resize(img), crop_resize(img[:480, :640]))


@pytest.mark.parametrize("w, h", [(398, 224), (224, 398), (224, 224), (225, 225), (399, 225), (640, 480), (226, 300)])
def test_images_at_the_model_size_skip_the_resampler_with_the_same_pixels(w, h, monkeypatch):
    """An image whose short side is already 224 (the live page uploads them) is not resampled: Pillow would only
    copy it. The pixels are those of Pillow's LANCZOS path; an image that needs resampling still takes it."""
    from PIL import Image

    img = np.random.default_rng(w * h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    even = img[: h // 2 * 2, : w // 2 * 2]
    ew, eh = even.shape[1], even.shape[0]
    s = max(224 / ew, 224 / eh) + 1e-8
    size = (int(ew * s), int(eh * s))
    full = np.asarray(Image.fromarray(even).resize(size, Image.Resampling.LANCZOS))
    top, left = int(np.round((size[1] - 224) / 2)), int(np.round((size[0] - 224) / 2))
    resamples: list[tuple[int, int]] = []
    resize = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda im, sz, *a, **k: resamples.append(sz) or resize(im, sz, *a, **k))
    np.testing.assert_array_equal(crop_resize(img), full[top : top + 224, left : left + 224])
    assert resamples == ([] if size == (ew, eh) else [size])


def test_portrait_crops_rows_around_the_centre():
    img = _image(640, 480, seed=3)
    # 480x640 portrait → 224 x 298 (floor), then rows 37..260 (round((298-224)/2) = 37)
    expected = np.asarray(Image.fromarray(img).resize((224, 298), Image.LANCZOS))[37:261]
    np.testing.assert_array_equal(crop_resize(img), expected)


@pytest.mark.parametrize("data", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_undecodable_bytes(data):
    with pytest.raises(ImageError):
        decode_image(data)


def test_tiny_and_huge_images_are_refused():
    with pytest.raises(ImageError, match="too small"):
        prepare(np.zeros((1, 5, 3), np.uint8))
    with pytest.raises(ImageError, match="too large"):
        crop_resize(np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (9000, 9000, 3)))
    with pytest.raises(ImageError, match="RGB"):
        prepare(np.zeros((10, 10), np.uint8))


def test_decode_matches_file_read(golden_dir, tmp_path):
    path = golden_dir / "frames_A" / "frame_000.png"
    np.testing.assert_array_equal(prepare(decode_image(path.read_bytes())).img.numpy(), load_frame(path).img.numpy())


# ----------------------------------------------------------------------------- camera
def test_focal_on_exact_geometry_equals_official(golden_A):
    """The reference's exact-geometry camera set: demo.py's estimator gave 242.395 (truth 242.125 / 242.667)."""
    assert estimate_focal(golden_A["camgt_pts3d"][0]) == pytest.approx(float(golden_A["camgt_focal"]), rel=1e-6)


def test_poses_on_exact_geometry(golden_A):
    focal = float(golden_A["camgt_focal"])
    for i, pts in enumerate(golden_A["camgt_pts3d"]):
        pose = solve_pose(pts, focal)
        assert pose.valid
        # equal to the official estimator (stored as float32): 1e-5 m is ~100x float32 rounding at these sizes
        np.testing.assert_allclose(pose.c2w, golden_A["camgt_poses_c2w"][i], atol=1e-5)
        # and close to the truth: the reference measured 4.5 mm at most on A (focal error from the 298x224 resize)
        err = np.linalg.norm(pose.c2w[:3, 3] - golden_A["camgt_true_c2w"][i][:3, 3])
        assert err < 6e-3
        rot_err = np.linalg.norm(pose.c2w[:3, :3] - golden_A["camgt_true_c2w"][i][:3, :3])
        assert rot_err < 5e-3


def test_pose_is_deterministic(golden_A):
    pts, focal = golden_A["camgt_pts3d"][5], float(golden_A["camgt_focal"])
    np.testing.assert_array_equal(solve_pose(pts, focal).c2w, solve_pose(pts, focal).c2w)


def test_failed_pnp_is_flagged_not_garbage(golden_A):
    """Synthetic-weight pointmaps are degenerate (focal clipped to 0): invalid, NaN pose, like the reference."""
    focal = estimate_focal(golden_A["final_pts3d"][0])
    assert focal == float(golden_A["cam_focal"]) == 0.0
    for pts in golden_A["final_pts3d"][:3]:
        pose = solve_pose(pts, focal)
        assert not pose.valid and np.isnan(pose.c2w).all()
    bad = golden_A["camgt_pts3d"][0].copy()
    bad[0, 0] = np.nan
    assert not solve_pose(bad, 240.0).valid


def test_known_camera_recovered():
    """A pointmap rendered from a known pinhole camera and pose gives back both."""
    rng = np.random.default_rng(7)
    f, size = 300.0, 224
    uv = pixel_grid(size, size).astype(np.float64) - size / 2
    depth = rng.uniform(2, 6, len(uv))
    cam = np.concatenate([uv / f * depth[:, None], depth[:, None]], 1)  # camera coordinates
    rvec = np.array([0.1, -0.2, 0.05])
    R, _ = cv2.Rodrigues(rvec)
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = R, [0.3, -0.1, 0.5]
    world = cam @ R.T + c2w[:3, 3]
    assert estimate_focal(cam.reshape(size, size, 3)) == pytest.approx(f, rel=1e-4)
    pose = solve_pose(world.reshape(size, size, 3).astype(np.float32), f)
    assert pose.valid
    np.testing.assert_allclose(pose.c2w, c2w, atol=1e-3)

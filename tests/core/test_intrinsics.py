"""Known intrinsics through preprocessing: parsing, the mapping to the 224² model grid (checked against
``crop_resize`` itself on rendered images), and poses solved with the mapped K."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from test_pose_solver import look_at, pose_errors, render_room  # tests/core is on sys.path (rootdir-less prepend)

from spann3r.core.camera import solve_poses
from spann3r.core.intrinsics import (
    Intrinsics,
    IntrinsicsError,
    crop_resize_geometry,
    focal_intrinsics,
    model_intrinsics,
    parse_intrinsics,
)
from spann3r.core.preprocess import crop_resize

# (width, height, fx, fy, cx, cy): landscape, portrait, odd sizes, non-square pixels, off-centre principal points
CAMERAS = [
    (640, 480, 520.0, 500.0, 331.0, 229.5),
    (480, 640, 500.0, 530.0, 228.0, 335.0),
    (641, 481, 610.0, 600.0, 300.0, 250.0),
    (1280, 720, 900.0, 960.0, 655.0, 350.0),
    (720, 1280, 1000.0, 950.0, 350.0, 620.0),
]


# ----------------------------------------------------------------------------- parsing
def test_parse():
    assert parse_intrinsics("500,510,320,240") == Intrinsics(500, 510, 320, 240)
    assert parse_intrinsics(" 500.5, 5.1e2 ,-3, 240 ") == Intrinsics(500.5, 510, -3, 240)
    np.testing.assert_array_equal(Intrinsics(1, 2, 3, 4).matrix(), [[1, 0, 3], [0, 2, 4], [0, 0, 1]])


@pytest.mark.parametrize(
    "text,match",
    [
        ("", "four numbers"),
        ("500,500,320", "four numbers"),
        ("500,500,320,240,1", "four numbers"),
        ("a,b,c,d", "four numbers"),
        ("500,,320,240", "four numbers"),
        ("nan,500,320,240", "finite"),
        ("500,inf,320,240", "finite"),
        ("0,500,320,240", "positive"),
        ("500,-1,320,240", "positive"),
    ],
)
def test_parse_errors_are_one_line_value_errors(text, match):
    with pytest.raises(IntrinsicsError, match=match) as err:
        parse_intrinsics(text)
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)


def test_focal_intrinsics_is_the_demo_convention():
    np.testing.assert_array_equal(focal_intrinsics(250.0), [[250, 0, 112], [0, 250, 112], [0, 0, 1]])


# ----------------------------------------------------------------------------- the mapping, against crop_resize
def blob_image(width: int, height: int, centres: np.ndarray, sigma: float) -> np.ndarray:
    """RGB uint8 [height, width, 3]: grey background, a bright Gaussian blob centred on each (u, v) pixel coordinate."""
    img = np.full((height, width), 40.0)
    r = int(4 * sigma) + 2
    for u, v in centres:
        u0, v0 = round(u), round(v)
        ys, xs = np.mgrid[v0 - r : v0 + r + 1, u0 - r : u0 + r + 1]
        patch = 200 * np.exp(-((xs - u) ** 2 + (ys - v) ** 2) / (2 * sigma**2))
        img[v0 - r : v0 + r + 1, u0 - r : u0 + r + 1] += patch
    return np.repeat(np.clip(np.round(img), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def blob_centre(img: np.ndarray, u: float, v: float, r: int = 6) -> tuple[float, float]:
    """Intensity-weighted centroid (above the background) of the blob near (u, v) in a grey image."""
    u0, v0 = round(u), round(v)
    ys, xs = np.mgrid[v0 - r : v0 + r + 1, u0 - r : u0 + r + 1]
    wgt = np.clip(img[v0 - r : v0 + r + 1, u0 - r : u0 + r + 1, 0].astype(np.float64) - 40, 0, None)
    return float((wgt * xs).sum() / wgt.sum()), float((wgt * ys).sum() / wgt.sum())


@pytest.mark.parametrize("width,height,fx,fy,cx,cy", CAMERAS)
def test_mapped_K_projects_where_crop_resize_puts_the_pixels(width, height, fx, fy, cx, cy):
    """3D points projected by the original K and drawn as blobs, then preprocessed: the blobs land where the mapped
    K projects the same points, to a few hundredths of a pixel (a half-pixel slip would be 0.3 px or more)."""
    intr = Intrinsics(fx, fy, cx, cy)
    K = model_intrinsics(intr, width, height)
    g = crop_resize_geometry(width, height)
    rng = np.random.default_rng(width + height)
    # points in front of the camera whose model pixels fall on a 5x5 grid inside the 224² crop, at random depths
    mu, mv = np.meshgrid(np.linspace(25, 198, 5), np.linspace(25, 198, 5))
    mu, mv = mu.ravel() + rng.uniform(-3, 3, 25), mv.ravel() + rng.uniform(-3, 3, 25)
    depth = rng.uniform(1, 5, 25)
    pts = np.linalg.solve(K, np.stack((mu, mv, np.ones(25)))).T * depth[:, None]  # camera frame
    uv = pts @ intr.matrix().T
    uv = uv[:, :2] / uv[:, 2:]  # original pixels
    img = crop_resize(blob_image(width, height, uv, sigma=2.0 / g.scale_x))
    found = np.array([blob_centre(img, u, v) for u, v in zip(mu, mv)])
    np.testing.assert_allclose(found, np.stack((mu, mv), 1), atol=0.06)


# ----------------------------------------------------------------------------- poses with the mapped K
def resize_like_preprocessing(pts: np.ndarray, size: int = 224) -> np.ndarray:
    """A float pointmap [H, W, 3] through the steps of ``crop_resize`` (even crop, Pillow LANCZOS, centre crop)."""
    H, W = pts.shape[:2]
    pts = pts[: 2 * (H // 2), : 2 * (W // 2)]
    H, W = pts.shape[:2]
    s = max(size / W, size / H) + 1e-8
    new_w, new_h = math.floor(W * s), math.floor(H * s)
    left, top = int(np.round((new_w - size) / 2)), int(np.round((new_h - size) / 2))
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(pts[..., c], dtype=np.float32)).resize((new_w, new_h), Image.LANCZOS)
        )
        for c in range(3)
    ]
    return np.stack(channels, -1)[top : top + size, left : left + size]


@pytest.mark.parametrize("width,height,fx,fy,cx,cy", CAMERAS[:2] + CAMERAS[3:4])
def test_poses_from_original_resolution_pointmaps_with_the_mapped_K(width, height, fx, fy, cx, cy):
    intr = Intrinsics(fx, fy, cx, cy)
    truth = np.stack(
        [
            look_at(np.array([0.4, -0.3, 0.2]), np.array([1.8, 1.0, 2.3]), roll=0.15),
            look_at(np.array([-0.6, 0.2, -0.5]), np.array([-1.8, -1.1, -2.2]), roll=-0.2),
        ]
    )
    model_pts = np.stack([resize_like_preprocessing(render_room(intr.matrix(), c2w, height, width)) for c2w in truth])
    K = model_intrinsics(intr, width, height)

    # the resized pointmap's camera-frame points project onto their own model pixels through the mapped K
    cam = np.einsum("ij,bhwj->bhwi", np.linalg.inv(truth[0])[:3, :3], model_pts[:1]) + np.linalg.inv(truth[0])[:3, 3]
    uv = cam @ K.T
    uv = uv[..., :2] / uv[..., 2:]
    v, u = np.mgrid[0:224, 0:224]
    err = np.linalg.norm(uv[0] - np.stack((u, v), -1), axis=-1)[4:-4, 4:-4]  # Lanczos clips its support at edges
    assert np.median(err) < 0.02 and np.quantile(err, 0.99) < 0.2

    conf = np.full(model_pts.shape[:3], 3.0, np.float32)
    c2w, valid = solve_poses(model_pts.astype(np.float32), conf, K, fallback=False)
    assert valid.all()
    rot, trans = pose_errors(c2w, truth)
    assert rot.max() < 0.02 and trans.max() < 2e-3  # degrees, metres

    # a K that ignores the original camera (square pixels, centred) is measurably worse: the mapping matters
    naive = focal_intrinsics(float(np.sqrt(K[0, 0] * K[1, 1])))
    c2w_naive, _ = solve_poses(model_pts.astype(np.float32), conf, naive, fallback=False)
    rot_naive, trans_naive = pose_errors(c2w_naive, truth)
    assert rot_naive.max() > 5 * rot.max() and trans_naive.max() > 5 * trans.max()

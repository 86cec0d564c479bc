"""``spann3r reconstruct`` end to end on the tiny preset, and every bad input as a one-line error."""

from __future__ import annotations

import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from spann3r.core.export import fuse, read_ply


def run_cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "spann3r.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for f in fragments:
        assert f in errors[0], errors[0]


@pytest.fixture(scope="module")
def frames_dir(golden_dir):
    return golden_dir / "frames_A"


@pytest.fixture(scope="module")
def tiny_run(frames_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rec")
    proc = run_cli(
        "reconstruct",
        frames_dir,
        "--weights",
        "synthetic",
        "--model",
        "tiny",
        "--out",
        out / "a.npz",
        "--ply",
        out / "a.ply",
        "--conf-thresh",
        "0.5",
    )
    assert proc.returncode == 0, proc.stderr
    return dict(np.load(out / "a.npz")), (out / "a.ply").read_bytes(), proc


def test_npz_layout(tiny_run):
    z, _, _ = tiny_run
    n = 8
    expect = {
        "pts3d": (np.float32, (n, 224, 224, 3)),
        "conf": (np.float32, (n, 224, 224)),
        "colors": (np.uint8, (n, 224, 224, 3)),
        "poses": (np.float32, (n, 4, 4)),
        "pose_valid": (bool, (n,)),
        "focal": (np.float32, ()),
        "skipped": (bool, (n,)),
        "mem_tokens": (np.int32, (n,)),
    }
    for key, (dtype, shape) in expect.items():
        assert z[key].dtype == dtype and z[key].shape == shape, key
    assert z["skipped"][-1]  # the last frame is never written to memory
    assert (np.diff(z["mem_tokens"][:-1]) >= 0).all() and z["mem_tokens"][0] == 196


def test_ply_holds_the_confidence_filtered_cloud(tiny_run):
    z, ply, _ = tiny_run
    xyz, rgb = read_ply(ply)
    exp_xyz, exp_rgb = fuse(z["pts3d"], z["conf"], z["colors"], 0.5)
    np.testing.assert_array_equal(xyz, exp_xyz)
    np.testing.assert_array_equal(rgb, exp_rgb)
    assert 0 < len(xyz) < z["conf"].size


def test_synthetic_weights_are_announced(tiny_run):
    assert "UNTRAINED" in tiny_run[2].stderr


def test_video_input_and_kf_every(frames_dir, tmp_path, tiny_run):
    video = tmp_path / "a.avi"
    files = sorted(frames_dir.glob("*.png"))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    for f in files:
        writer.write(cv2.imread(str(f)))
    writer.release()
    proc = run_cli(
        "reconstruct",
        video,
        "--weights",
        "synthetic",
        "--model",
        "tiny",
        "--out",
        tmp_path / "v.npz",
        "--kf-every",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    z = np.load(tmp_path / "v.npz")
    assert z["pts3d"].shape[0] == 4
    assert list(z["frame_names"]) == [f"a.avi#{i}" for i in (0, 2, 4, 6)]


def test_same_input_same_output(frames_dir, tmp_path, tiny_run):
    folder = tmp_path / "copy"
    shutil.copytree(frames_dir, folder)
    proc = run_cli("reconstruct", folder, "--weights", "synthetic", "--model", "tiny", "--out", tmp_path / "b.npz")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "b.npz")["pts3d"], tiny_run[0]["pts3d"])


def test_unreadable_image(frames_dir, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(frames_dir, folder)
    (folder / "frame_003.png").write_bytes(b"this is not a png")
    assert_one_line_error(
        run_cli("reconstruct", folder, "--weights", "synthetic", "--model", "tiny", "--out", tmp_path / "x.npz"),
        "frame_003.png",
    )


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(
        run_cli("reconstruct", tmp_path / "empty", "--weights", "synthetic", "--out", tmp_path / "x.npz"), "no images"
    )


def test_single_image_folder(frames_dir, tmp_path):
    (tmp_path / "one").mkdir()
    shutil.copy(frames_dir / "frame_000.png", tmp_path / "one")
    assert_one_line_error(
        run_cli(
            "reconstruct", tmp_path / "one", "--weights", "synthetic", "--model", "tiny", "--out", tmp_path / "x.npz"
        ),
        "at least two frames",
    )


def test_video_that_cannot_be_opened(tmp_path):
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"\0\1\2 not a video" * 100)
    assert_one_line_error(
        run_cli("reconstruct", bad, "--weights", "synthetic", "--out", tmp_path / "x.npz"), "clip.mp4"
    )


def test_missing_input(tmp_path):
    assert_one_line_error(
        run_cli("reconstruct", tmp_path / "nope", "--weights", "synthetic", "--out", tmp_path / "x.npz"), "not found"
    )


def test_checkpoint_with_wrong_keys(frames_dir, tmp_path):
    import torch

    ckpt = tmp_path / "wrong.pth"
    torch.save({"model": {"some.other.weight": torch.zeros(2, 2)}}, ckpt)
    assert_one_line_error(
        run_cli("reconstruct", frames_dir, "--weights", ckpt, "--model", "tiny", "--out", tmp_path / "x.npz"),
        "missing keys",
        "unexpected keys",
    )


def test_no_weights_says_where_to_get_them(frames_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "spann3r.cli", "reconstruct", str(frames_dir), "--out", str(tmp_path / "x.npz")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert_one_line_error(proc, "spann3r.pth", "--weights synthetic")


def test_missing_output_folder(frames_dir, tmp_path):
    assert_one_line_error(
        run_cli("reconstruct", frames_dir, "--weights", "synthetic", "--out", tmp_path / "no" / "such" / "x.npz"),
        "does not exist",
    )


@pytest.mark.parametrize("value", ["500,500,320", "a,b,c,d", "0,500,320,240", "500,500,nan,240"])
def test_bad_intrinsics(frames_dir, tmp_path, value):
    proc = run_cli(
        "reconstruct",
        frames_dir,
        "--weights",
        "synthetic",
        "--model",
        "tiny",
        "--out",
        tmp_path / "o.npz",
        f"--intrinsics={value}",
    )
    assert proc.returncode == 2 and "--intrinsics" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.npz").exists()


def test_known_intrinsics_set_the_focal(frames_dir, tmp_path):
    """The camera's intrinsics (pixels of the 640x480 inputs) reach the npz mapped to the 224² model image."""
    from spann3r.core.intrinsics import Intrinsics, model_intrinsics

    proc = run_cli(
        "reconstruct",
        frames_dir,
        "--weights",
        "synthetic",
        "--model",
        "tiny",
        "--out",
        tmp_path / "o.npz",
        "--intrinsics",
        "520,500,330.5,241",
    )
    assert proc.returncode == 0, proc.stderr
    K = model_intrinsics(Intrinsics(520, 500, 330.5, 241), 640, 480)
    assert float(np.load(tmp_path / "o.npz")["focal"]) == pytest.approx(K[0, 0], rel=1e-6)
    assert K[0, 0] == pytest.approx(520 * 298 / 640)  # scaled as the resize scales x (640 → 298 px), not estimated


def test_intrinsics_do_not_apply_to_unordered_collections(frames_dir, tmp_path):
    proc = run_cli(
        "reconstruct",
        frames_dir,
        "--unordered",
        "--weights",
        "synthetic",
        "--model",
        "tiny",
        "--out",
        tmp_path / "o.npz",
        "--intrinsics",
        "520,500,330,241",
    )
    assert_one_line_error(proc, "--unordered")

"""``spann3r reconstruct INPUT --unordered`` (tiny model): output file, refusal above --max-frames."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from spann3r.cli.main import main
from spann3r.core.preprocess import load_frame
from spann3r.core.unordered import reconstruct_unordered


def test_writes_the_ordered_layout_plus_order(golden_dir, tmp_path, tiny_model):
    folder = tmp_path / "frames"
    folder.mkdir()
    for path in sorted((golden_dir / "frames_D").glob("*.png"))[:4]:
        shutil.copy(path, folder)
    out = tmp_path / "u.npz"
    ply = tmp_path / "u.ply"
    assert (
        main(
            [
                "reconstruct",
                str(folder),
                "--unordered",
                "--weights",
                "synthetic",
                "--model",
                "tiny",
                "--out",
                str(out),
                "--ply",
                str(ply),
            ]
        )
        == 0
    )
    data = np.load(out)
    files = sorted(p.name for p in folder.glob("*.png"))
    assert data["input_names"].tolist() == files
    order = data["order"].tolist()
    assert sorted(order) == list(range(4)) and data["frame_names"].tolist() == [files[i] for i in order]
    assert data["pts3d"].shape == (4, 224, 224, 3) and data["pair_conf"].shape == (4, 4)
    assert tuple(data["initial_pair"]) == tuple(order[:2])
    # the same as the core API on the same images
    direct = reconstruct_unordered(tiny_model, [(p.name, load_frame(p)) for p in sorted(folder.glob("*.png"))])
    assert direct.order.tolist() == order
    np.testing.assert_allclose(data["pts3d"], direct.reconstruction.pts3d, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(data["pair_conf"], direct.pair_conf, atol=1e-6)
    assert ply.stat().st_size > 1000


def test_refuses_above_max_frames_before_loading_the_model(golden_dir, tmp_path, capsys):
    out = tmp_path / "u.npz"
    t0 = time.perf_counter()
    code = main(
        ["reconstruct", str(golden_dir / "frames_B"), "--unordered", "--weights", "synthetic", "--out", str(out)]
    )  # 46 images, default limit, the full-size model never built
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert time.perf_counter() - t0 < 20
    assert "46 images" in err and "--max-frames" in err and "2070 ordered pairs" in err
    code = main(
        [
            "reconstruct",
            str(golden_dir / "frames_D"),
            "--unordered",
            "--max-frames",
            "5",
            "--weights",
            "synthetic",
            "--model",
            "tiny",
            "--out",
            str(out),
        ]
    )
    assert code == 2 and "6 images" in capsys.readouterr().err


@pytest.mark.parametrize("limit", ["1", "0"])
def test_max_frames_must_allow_a_pair(golden_dir, tmp_path, capsys, limit):
    code = main(
        [
            "reconstruct",
            str(golden_dir / "frames_D"),
            "--unordered",
            "--max-frames",
            limit,
            "--weights",
            "synthetic",
            "--model",
            "tiny",
            "--out",
            str(tmp_path / "u.npz"),
        ]
    )
    assert code == 2 and "at least 2" in capsys.readouterr().err


def test_single_image_is_refused(golden_dir, tmp_path, capsys):
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(golden_dir / "frames_D" / "frame_000.png", folder)
    code = main(
        [
            "reconstruct",
            str(folder),
            "--unordered",
            "--weights",
            "synthetic",
            "--model",
            "tiny",
            "--out",
            str(tmp_path / "u.npz"),
        ]
    )
    assert code == 2 and "at least two images" in capsys.readouterr().err

"""``spann3r eval`` on the rendered datasets: evaluating prediction files (exact → zero error) and running the
(tiny) model on every scene, streaming and unordered, with a round trip through the saved predictions."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from spann3r.cli.main import main
from spann3r.core.evaluation import DATASETS, prediction_file


def read_csv(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def write_exact_predictions(root, folder, dataset: str, scale: float) -> list[str]:
    """Each scene's ground truth in its first camera, scaled: what a perfect model would write."""
    layout = DATASETS[dataset]
    scenes = layout.list_scenes(root)
    folder.mkdir(exist_ok=True)
    for scene in scenes:
        views = layout.load_views(root, scene, layout.kf_every)
        w2c = np.linalg.inv(views[0].c2w.astype(np.float64))
        pts = np.stack([v.pts3d for v in views]).astype(np.float64) @ w2c[:3, :3].T + w2c[:3, 3]
        np.savez(
            prediction_file(folder, scene),
            pts3d=(scale * pts).astype(np.float32),
            frame_names=np.array([v.name for v in views]),
        )
    return scenes


def test_exact_predictions_give_zero_error_per_scene_and_mean(seven_scenes, tmp_path, capsys):
    root, _ = seven_scenes
    scenes = write_exact_predictions(root, tmp_path / "pred", "7scenes", scale=0.4)
    out = tmp_path / "m.csv"
    assert main(["eval", "7scenes", str(root), "--predictions", str(tmp_path / "pred"), "--csv", str(out)]) == 0
    table = capsys.readouterr().out
    rows = read_csv(out)
    assert [r["scene"] for r in rows] == [*scenes, "mean"]
    for r in rows:
        assert float(r["acc"]) < 1e-5 and float(r["comp"]) < 1e-5 and float(r["chamfer"]) < 1e-5
        assert float(r["nc"]) > 0.9999
    assert int(rows[-1]["frames"]) == 9 and "chess/seq-02" in table and "mean" in table and "0.0255" in table


def test_missing_prediction_file_is_a_user_error(seven_scenes, tmp_path, capsys):
    root, _ = seven_scenes
    (tmp_path / "empty").mkdir()
    code = main(
        ["eval", "7scenes", str(root), "--predictions", str(tmp_path / "empty"), "--csv", str(tmp_path / "m.csv")]
    )
    assert code == 2 and "prediction file not found" in capsys.readouterr().err


@pytest.mark.parametrize("dataset,extra", [("nrgbd", []), ("7scenes", ["--unordered", "--scenes", "office/*"])])
def test_model_run_and_prediction_round_trip(seven_scenes, nrgbd, tmp_path, capsys, dataset, extra):
    root = (seven_scenes if dataset == "7scenes" else nrgbd)[0]
    first, second = tmp_path / "run.csv", tmp_path / "again.csv"
    assert (
        main(
            [
                "eval",
                dataset,
                str(root),
                "--weights",
                "synthetic",
                "--model",
                "tiny",
                "--csv",
                str(first),
                "--save-predictions",
                str(tmp_path / "pred"),
                *extra,
            ]
        )
        == 0
    )
    run_rows = read_csv(first)
    for r in run_rows:  # an untrained model: finite, clearly non-zero errors
        assert 0 < float(r["acc"]) < np.inf and 0 < float(r["comp"]) < np.inf and 0 <= float(r["nc"]) <= 1
    saved = sorted(p.name for p in (tmp_path / "pred").iterdir())
    assert saved == sorted(f"{r['scene'].replace('/', '_')}.npz" for r in run_rows[:-1])
    if "--unordered" in extra:
        assert all("order" in np.load(tmp_path / "pred" / name) for name in saved)
    scenes = ["--scenes", "office/*"] if "--unordered" in extra else []
    assert (
        main(["eval", dataset, str(root), "--predictions", str(tmp_path / "pred"), "--csv", str(second), *scenes]) == 0
    )
    for a, b in zip(run_rows, read_csv(second)):
        assert a["scene"] == b["scene"]
        for key in ("acc", "comp", "nc_acc", "nc_comp", "chamfer"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-6)
    capsys.readouterr()

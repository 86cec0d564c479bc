"""``spann3r eval``: the paper's reconstruction metrics on 7-Scenes / Neural-RGBD (official layouts and sampling).

Predictions come from running the model on every scene (``--weights``, streaming or ``--unordered``), or from
npz files already written (``--predictions DIR``, one ``<scene id, '/' → '_'>.npz`` per scene, the layout of
``spann3r reconstruct``). One row per scene plus the mean: a table on stdout and a CSV.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ..core.errors import USER_ERRORS as CORE_USER_ERRORS
from ..core.evaluation import (
    DATASETS,
    PAPER_CHAMFER,
    EvalError,
    evaluate_scene,
    format_table,
    load_prediction,
    mean_row,
    metrics_row,
    prediction_file,
    require_open3d,
    select_scenes,
    write_csv,
)
from ..core.reconstruct import reconstruct
from ..core.unordered import reconstruct_unordered
from .errors import UserError
from .options import add_model_args
from .reconstruct import load_engine

log = logging.getLogger(__name__)

USER_ERRORS = CORE_USER_ERRORS  # printed as one line by main


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(
        name,
        help=help_text,
        description="Evaluate reconstructions as the official Spann3R evaluation does: the dataset's frame "
        "sampling, median scale/shift alignment to the ground truth, ICP refinement, then accuracy, "
        "completion and normal consistency (mean and median) and their chamfer mean. Paper values "
        "(Spann3R v1.01, chamfer mean): "
        + ", ".join(f"{k} {v}" for k, v in PAPER_CHAMFER.items())
        + ". Needs the 'eval' extra (Open3D).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("dataset", choices=sorted(DATASETS), help="dataset layout")
    p.add_argument("root", help="dataset root (e.g. ./data/7scenes, ./data/neural_rgbd)")
    add_model_args(p)
    p.add_argument(
        "--predictions",
        default=None,
        help="evaluate these prediction npz files (DIR/<scene>.npz, '/' in scene ids as '_') "
        "instead of running the model",
    )
    p.add_argument("--save-predictions", default=None, help="write the model's predictions here (same naming)")
    p.add_argument(
        "--unordered",
        action="store_true",
        help="reconstruct each scene as an unordered collection (the official --offline)",
    )
    p.add_argument(
        "--kf-every",
        type=int,
        default=None,
        help="frame sampling (default: the official one, 20 for 7scenes, 40 for nrgbd)",
    )
    p.add_argument("--scenes", default=None, help="comma-separated scene ids or patterns (e.g. 'chess/*')")
    p.add_argument(
        "--icp-threshold",
        type=float,
        default=None,
        help="ICP correspondence distance in metres (default: the official 0.1)",
    )
    p.add_argument("--csv", default=None, help="CSV output (default: eval_<dataset>.csv)")
    p.set_defaults(func=run)


def _predict(engine, views, unordered: bool):
    """Run the model on one scene → (pts3d [N, H, W, 3] in processing order, views in that order, seconds)."""
    frames = [(v.name, v.frame) for v in views]
    t0 = time.perf_counter()
    if unordered:
        result = reconstruct_unordered(engine, frames, with_poses=False)
        rec, ordered = result.reconstruction, [views[i] for i in result.order]
        save = result.save_npz
    else:
        # the views hold 224×224 crops already; prepare() passes them through unchanged
        rec = reconstruct(engine, [(v.name, v.frame.colors) for v in views], with_poses=False)
        ordered, save = views, rec.save_npz
    return rec.pts3d, ordered, time.perf_counter() - t0, save


def run(args) -> int:

    layout = DATASETS[args.dataset]
    root = Path(args.root)
    if not root.is_dir():
        raise UserError(f"dataset root not found: {root}")
    kf_every = args.kf_every or layout.kf_every
    if kf_every < 1:
        raise UserError(f"--kf-every must be >= 1, got {kf_every}")
    icp_threshold = args.icp_threshold if args.icp_threshold is not None else layout.icp_threshold
    try:
        scenes = select_scenes(layout.list_scenes(root), args.scenes)
    except EvalError as exc:
        raise UserError(str(exc)) from None
    if not scenes:
        raise UserError(f"no {args.dataset} scenes under {root} (see 'spann3r eval --help' for the layout)")
    try:
        require_open3d()  # fail before any model work if the extra is missing
    except EvalError as exc:
        raise UserError(str(exc)) from None

    engine = None
    if args.predictions is None:
        engine, _ = load_engine(args)
    save_dir = Path(args.save_predictions) if args.save_predictions else None
    if save_dir:
        save_dir.mkdir(parents=True, exist_ok=True)

    rows = []
    for scene in scenes:
        try:
            views = layout.load_views(root, scene, kf_every)
            if len(views) < 2:
                raise EvalError(f"{scene}: {len(views)} frame(s) after sampling every {kf_every}; need at least 2")
            if engine is None:
                pred, ordered = load_prediction(prediction_file(Path(args.predictions), scene), views)
                seconds = None
            else:
                pred, ordered, seconds, save = _predict(engine, views, args.unordered)
                if save_dir:
                    save(prediction_file(save_dir, scene))
            metrics = evaluate_scene(pred, ordered, icp_threshold, args.dataset, scene)
        except EvalError as exc:
            raise UserError(str(exc)) from None
        row = metrics_row(metrics)
        rows.append(row)
        timing = f", {len(views) / seconds:.2f} frames/s" if seconds else ""
        log.info(
            "%s: %d frames, acc %.4f, comp %.4f, chamfer %.4f%s",
            scene,
            len(views),
            row["acc"],
            row["comp"],
            row["chamfer"],
            timing,
        )
    rows.append(mean_row(rows, args.dataset))
    print(format_table(rows))
    paper = PAPER_CHAMFER.get(args.dataset)
    if paper is not None:
        print(f"paper (Spann3R v1.01, official checkpoint): chamfer mean {paper}")
    csv_path = Path(args.csv or f"eval_{args.dataset}.csv")
    write_csv(rows, csv_path)
    log.info("wrote %s", csv_path)
    return 0

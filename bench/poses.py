"""Camera-pose benchmark: batched robust ``solve_poses``, cold and warm-started (from a pose 2° and 3 cm off, as a
stream's previous frame), against OpenCV's PnP-RANSAC (the official demo's estimator).

    python bench/poses.py                       # one CPU thread, batches 1,8,32, 0 % and 30 % outliers
    python bench/poses.py --threads 2 --batches 8 --device cuda

Scenes are rendered rooms (tests/core/test_pose_solver.py): 224² pointmaps back-projected from a known camera,
0.5 % depth noise (isotropic), optional gross outliers with lower confidence. Times are the minimum over
``--repeats`` runs of wall time (and of this process's CPU time, which is steadier on a shared machine); ms per pose
is a batch's time over its size. Errors: rotation in degrees, camera centre in metres (cameras 1-3 m from walls).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from spann3r.core.camera import solve_poses

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "core"))
from test_pose_solver import nudged, pose_errors, scene_batch  # the rendered scenes of the tests


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """(min wall s, min process CPU s, last result) over ``repeats`` calls."""
    wall = cpu = float("inf")
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall, cpu = min(wall, time.perf_counter() - w0), min(cpu, time.process_time() - c0)
    return wall, cpu, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--outliers", default="0,0.3", help="fractions of gross outliers, comma-separated")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cv-repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    print(f"threads={args.threads} device={args.device} torch={torch.__version__} opencv={cv2.__version__}")
    print(
        f"{'batch':>5} {'outl':>5} | {'ours ms/pose':>12} {'(cpu)':>6} {'rot°':>7} {'t m':>8} {'valid':>5} | "
        f"{'warm ms/pose':>12} {'rot°':>7} {'t m':>8} | "
        f"{'ransac ms/pose':>14} {'rot°':>7} {'t m':>8} | speed-up"
    )
    for outliers in (float(x) for x in args.outliers.split(",")):
        for batch in (int(b) for b in args.batches.split(",")):
            pts, conf, K, truth = scene_batch(batch, seed=batch, noise=0.005, outliers=outliers)
            pts_t = torch.from_numpy(pts).to(args.device)
            conf_t = torch.from_numpy(conf).to(args.device)
            K_t = torch.from_numpy(K).to(args.device)
            solve_poses(pts_t, conf_t, K_t)  # warm-up
            wall, cpu, (c2w, valid) = timed(lambda p=pts_t, c=conf_t, k=K_t: solve_poses(p, c, k), args.repeats)
            rot, trans = pose_errors(c2w.cpu().numpy(), truth)
            # warm: from the previous frame's pose, as a stream solves (here the truth moved by 2° and 3 cm)
            init = torch.from_numpy(nudged(truth, np.random.default_rng(batch), 2.0, 0.03)).to(args.device)
            solve_poses(pts_t, conf_t, K_t, init=init)
            w_wall, _, (w_c2w, _) = timed(
                lambda p=pts_t, c=conf_t, k=K_t, i=init: solve_poses(p, c, k, init=i), args.repeats
            )
            w_rot, w_trans = pose_errors(w_c2w.cpu().numpy(), truth)
            cv_wall, _, (cv_c2w, _) = timed(
                lambda p=pts, c=conf, k=K: solve_poses(p, c, k, method="pnp_ransac"), args.cv_repeats
            )
            cv_rot, cv_trans = pose_errors(cv_c2w, truth)
            print(
                f"{batch:>5} {outliers:>5.2f} | {wall / batch * 1e3:>12.2f} {cpu / batch * 1e3:>6.2f} "
                f"{rot.mean():>7.4f} {trans.mean():>8.5f} {int(valid.sum()):>2}/{batch:<2} | "
                f"{w_wall / batch * 1e3:>12.2f} {w_rot.mean():>7.4f} {w_trans.mean():>8.5f} | "
                f"{cv_wall / batch * 1e3:>14.1f} {cv_rot.mean():>7.4f} {cv_trans.mean():>8.5f} | "
                f"{cv_wall / wall:>6.1f}x"
            )


if __name__ == "__main__":
    main()

"""``spann3r reconstruct``: a folder of images or a video → OUT.npz (and optionally a PLY)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=None,
                   help="'synthetic' (untrained demo), a path to spann3r.pth / .safetensors, or hf:OWNER/REPO/FILE")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--model", default="official", choices=["official", "tiny"],
                   help="model size preset (tiny: same code, small widths; for tests and demos)")


def register(sub) -> None:
    p = sub.add_parser("reconstruct", help="reconstruct an image folder or a video offline",
                       description="Stream the frames of INPUT through Spann3R and write the global pointmaps, "
                                   "confidences, colours and camera poses to OUT.npz.")
    p.add_argument("input", help="folder of images (sorted by name) or a video file")
    add_model_args(p)
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--kf-every", type=int, default=1,
                   help="keep every N-th frame (default 1: every frame; the official demo uses 10)")
    p.add_argument("--ply", default=None, help="also write the fused, confidence-filtered point cloud here")
    p.add_argument("--conf-thresh", type=float, default=1e-3,
                   help="PLY filter on (conf-1)/conf, as the official demo (default 1e-3)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    from .reconstruct_unordered import DEFAULT_MAX_FRAMES, MAX_FRAMES_HELP

    p.add_argument("--unordered", action="store_true",
                   help="INPUT is an unordered collection: choose the order (best pair, then greedy next-best view), "
                        "as the official offline mode; adds 'order' and 'pair_conf' to OUT.npz")
    p.add_argument("--max-frames", type=int, default=DEFAULT_MAX_FRAMES, help=MAX_FRAMES_HELP)
    p.set_defaults(func=run)


def resolve_weights(weights: str | None) -> str:
    from ..core.weights import OFFICIAL_CHECKPOINT_HELP, WeightsError

    if weights is None:
        default = Path("checkpoints/spann3r.pth")
        if default.is_file():
            return str(default)
        raise WeightsError(f"no --weights given and no {default}. {OFFICIAL_CHECKPOINT_HELP}")
    return weights


def load_engine(args):
    import torch

    from ..core.config import ModelConfig
    from ..core.engine import Engine
    from ..core.weights import build_model

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    weights = resolve_weights(args.weights)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        from .cli import UserError

        raise UserError(f"--device {args.device}: CUDA is not available on this machine")
    model, info = build_model(weights, ModelConfig.preset(args.model), device)
    return Engine(model), info


def run(args) -> int:
    from tqdm import tqdm

    from ..core.export import fuse, write_ply
    from ..core.reconstruct import reconstruct
    from ..core.sources import count_frames, iter_frames

    if getattr(args, "unordered", False):
        from .reconstruct_unordered import run_unordered

        return run_unordered(args)
    out = Path(args.out)
    if not out.parent.exists():
        from .cli import UserError

        raise UserError(f"output folder does not exist: {out.parent}")
    # open the input before loading the model: a bad input fails in milliseconds, not after the weights load
    frames = iter_frames(args.input, args.kf_every)
    first = next(frames)
    total = count_frames(args.input, args.kf_every)
    engine, _ = load_engine(args)

    def all_frames():
        yield first
        yield from frames

    t0 = time.perf_counter()
    with tqdm(total=total, unit="frame", desc="reconstruct", disable=None) as bar:
        rec = reconstruct(engine, all_frames(), preview=False, progress=bar.update)
    dt = time.perf_counter() - t0
    rec.save_npz(out)
    log.info("%d frames in %.1f s (%.2f s/frame); focal %.2f; %d/%d poses valid; wrote %s",
             len(rec.names), dt, dt / len(rec.names), rec.focal, rec.pose_valid.sum(), len(rec.names), out)
    if args.ply:
        xyz, rgb = fuse(rec.pts3d, rec.conf, rec.colors, args.conf_thresh)
        write_ply(args.ply, xyz, rgb)
        log.info("wrote %d points to %s", len(xyz), args.ply)
    return 0

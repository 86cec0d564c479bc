"""``spann3r reconstruct INPUT --unordered``: the collection's order is chosen by the model (offline mode).

Same output file as the ordered mode (frames in the chosen order, ``frame_names`` in that order), plus
``order`` (input indices), ``input_names``, ``pair_conf`` (the N×N pair-score matrix), ``initial_pair`` and
the next-best-view scores. The cost grows as N²; collections above ``--max-frames`` are refused.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

# bench/results/unordered_scaling.md, full-size model on a 2-core x86-64 CPU: 5.7 CPU-seconds per pair decode
# and per step decode (1 thread), so about 3 s each with both cores free. 20 images are 380 pair decodes and
# 172 step decodes: about half an hour there (an hour on one core; a GPU is orders of magnitude faster).
SECONDS_PER_PAIR = 3.0
SECONDS_PER_STEP = 3.0
DEFAULT_MAX_FRAMES = 20

MAX_FRAMES_HELP = (
    f"refuse collections of more images than this (default {DEFAULT_MAX_FRAMES}). --unordered decodes every "
    "ordered pair of images: N(N-1) pair decodes plus (N-1)(N-2)/2 next-best-view decodes, about 3 s each with "
    f"the full model on a 2-core CPU, so {DEFAULT_MAX_FRAMES} images take about half an hour, 32 about 75 min "
    "and 50 about 3 h (measured: bench/results/unordered_scaling.md). Raise it on a GPU"
)


def estimate_seconds(n: int) -> float:
    """Full-size model on a 2-core CPU (see the constants above)."""
    from ..core.unordered import pair_count, step_decode_count

    return SECONDS_PER_PAIR * pair_count(n) + SECONDS_PER_STEP * step_decode_count(n)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def collect_frames(args) -> list:
    """Read and prepare the input (224×224 model inputs; refused early above --max-frames images)."""
    from ..core.preprocess import prepare
    from ..core.sources import count_frames, iter_frames
    from ..core.unordered import pair_count
    from .cli import UserError

    if args.max_frames < 2:
        raise UserError(f"--max-frames must be at least 2, got {args.max_frames}")
    frames_iter = iter_frames(args.input, args.kf_every)
    first = next(frames_iter)  # a bad input fails here, before anything is counted or loaded
    total = count_frames(args.input, args.kf_every)

    def refuse(n: int, exact: bool):
        many = f"{n}" if exact else f"more than {args.max_frames}"
        cost = (f"{pair_count(n)} ordered pairs, about {_duration(estimate_seconds(n))} with the full model on a "
                "2-core CPU" if exact else "a number of pair decodes growing as N^2")
        raise UserError(
            f"{many} images in {args.input}, above --max-frames {args.max_frames}: the unordered mode decodes "
            f"every ordered pair of images ({cost}). Raise --max-frames, keep fewer frames with --kf-every, "
            "or reconstruct them in order (without --unordered)")

    if total is not None and total > args.max_frames and Path(args.input).is_dir():
        refuse(total, exact=True)
    frames = [(first[0], prepare(first[1]))]
    for name, rgb in frames_iter:
        frames.append((name, prepare(rgb)))  # keep only the 224×224 crop, not the full-resolution image
        if len(frames) > args.max_frames:
            refuse(len(frames), exact=False)
    if len(frames) < 2:
        raise UserError(f"an unordered collection needs at least two images, {args.input} has {len(frames)}")
    return frames


def run_unordered(args) -> int:
    from tqdm import tqdm

    from ..core.export import fuse, write_ply
    from ..core.unordered import UnorderedError, pair_count, reconstruct_unordered, step_decode_count
    from .cli import UserError
    from .cmd_reconstruct import load_engine

    out = Path(args.out)
    if not out.parent.exists():
        raise UserError(f"output folder does not exist: {out.parent}")
    frames = collect_frames(args)
    n = len(frames)
    engine, _ = load_engine(args)
    log.info("%d images: %d ordered pairs, then %d next-best-view decodes", n, pair_count(n), step_decode_count(n))

    bars: dict[str, tqdm] = {}
    labels = {"encode": ("encode", "image"), "pairs": ("pairs", "pair"), "views": ("order", "decode")}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            desc, unit = labels[stage]
            bar = bars[stage] = tqdm(total=total, desc=desc, unit=unit, disable=None)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    t0 = time.perf_counter()
    try:
        result = reconstruct_unordered(engine, frames, progress=progress)
    except UnorderedError as exc:
        raise UserError(str(exc)) from None
    finally:
        for bar in bars.values():
            bar.close()
    dt = time.perf_counter() - t0
    result.save_npz(out)
    rec = result.reconstruction
    log.info("%d images in %.1f s; initial pair %s, order %s; focal %.2f; %d/%d poses valid; wrote %s",
             n, dt, result.initial_pair, result.order.tolist(), rec.focal, rec.pose_valid.sum(), n, out)
    if args.ply:
        xyz, rgb = fuse(rec.pts3d, rec.conf, rec.colors, args.conf_thresh)
        write_ply(args.ply, xyz, rgb)
        log.info("wrote %d points to %s", len(xyz), args.ply)
    return 0

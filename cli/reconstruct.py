"""``spann3r reconstruct``: a folder of images or a video → OUT.npz (and optionally a PLY)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tqdm import tqdm

from ..core.camera import POSE_METHODS
from ..core.errors import USER_ERRORS as CORE_USER_ERRORS
from ..core.export import fuse, write_ply
from ..core.preprocess import prepare
from ..core.reconstruct import reconstruct
from ..core.records import Reconstruction
from ..core.sources import count_frames, iter_frames
from ..core.unordered import (
    DEFAULT_MAX_FRAMES,
    MAX_FRAMES_HELP,
    UnorderedError,
    estimate_seconds,
    format_duration,
    pair_count,
    reconstruct_unordered,
    step_decode_count,
)
from ..core.weights import load_engine as load_engine_from
from .errors import UserError
from .options import add_camera_args, add_model_args

log = logging.getLogger(__name__)

USER_ERRORS = CORE_USER_ERRORS  # printed as one line by main


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(
        name,
        help=help_text,
        description="Stream the frames of INPUT through Spann3R and write the global pointmaps, "
        "confidences, colours and camera poses to OUT.npz.",
    )
    p.add_argument("input", help="folder of images (sorted by name) or a video file")
    add_model_args(p)
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument(
        "--kf-every",
        type=int,
        default=1,
        help="keep every N-th frame (default 1: every frame; the official demo uses 10)",
    )
    p.add_argument("--ply", default=None, help="also write the fused, confidence-filtered point cloud here")
    p.add_argument(
        "--mcap",
        default=None,
        metavar="OUT.mcap",
        help="also write ROS 2 messages (points, poses, TF, camera info, images) to an MCAP file "
        "(the 'robotics' extra; docs/robotics.md)",
    )
    p.add_argument(
        "--conf-thresh",
        type=float,
        default=1e-3,
        help="point filter of the PLY and MCAP outputs on (conf-1)/conf, as the official demo (default 1e-3)",
    )
    add_camera_args(p, POSE_METHODS)
    p.add_argument(
        "--unordered",
        action="store_true",
        help="INPUT is an unordered collection: choose the order (best pair, then greedy next-best view), "
        "as the official offline mode; adds 'order' and 'pair_conf' to OUT.npz",
    )
    p.add_argument("--max-frames", type=int, default=DEFAULT_MAX_FRAMES, help=MAX_FRAMES_HELP)
    p.set_defaults(func=run)


def write_other_outputs(args, rec: Reconstruction) -> None:
    """The outputs besides OUT.npz that the flags ask for (--ply, --mcap)."""
    if args.ply:
        xyz, rgb = fuse(rec.pts3d, rec.conf, rec.colors, args.conf_thresh)
        write_ply(args.ply, xyz, rgb)
        log.info("wrote %d points to %s", len(xyz), args.ply)
    if args.mcap:
        from ..core.ros_export import write_mcap  # the robotics extra

        write_mcap(args.mcap, rec.arrays(), conf_thresh=args.conf_thresh)
        log.info("wrote %d frames as ROS 2 messages to %s", len(rec.names), args.mcap)


def load_engine(args):
    """The engine for the model flags (``add_model_args``)."""
    return load_engine_from(args.weights, args.device, args.model, args.threads, args.precision)


def run(args) -> int:
    if args.unordered:
        return run_unordered(args)
    out = Path(args.out)
    if not out.parent.exists():
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
        rec = reconstruct(
            engine,
            all_frames(),
            preview=False,
            progress=bar.update,
            intrinsics=args.intrinsics,
            pose_method=args.pose_method,
        )
    dt = time.perf_counter() - t0
    rec.save_npz(out)
    log.info(
        "%d frames in %.1f s (%.2f s/frame); focal %.2f; %d/%d poses valid; wrote %s",
        len(rec.names),
        dt,
        dt / len(rec.names),
        rec.focal,
        rec.pose_valid.sum(),
        len(rec.names),
        out,
    )
    write_other_outputs(args, rec)
    return 0


# ----------------------------------------------------------------------------- --unordered


def collect_unordered_frames(args) -> list:
    """Read and prepare the input (224×224 model inputs; refused early above --max-frames images)."""
    if args.max_frames < 2:
        raise UserError(f"--max-frames must be at least 2, got {args.max_frames}")
    frames_iter = iter_frames(args.input, args.kf_every)
    first = next(frames_iter)  # a bad input fails here, before anything is counted or loaded
    total = count_frames(args.input, args.kf_every)

    def refuse(n: int, exact: bool):
        many = f"{n}" if exact else f"more than {args.max_frames}"
        cost = (
            f"{pair_count(n)} ordered pairs, about {format_duration(estimate_seconds(n))} with the full model on a "
            "2-core CPU"
            if exact
            else "a number of pair decodes growing as N^2"
        )
        raise UserError(
            f"{many} images in {args.input}, above --max-frames {args.max_frames}: the unordered mode decodes "
            f"every ordered pair of images ({cost}). Raise --max-frames, keep fewer frames with --kf-every, "
            "or reconstruct them in order (without --unordered)"
        )

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
    out = Path(args.out)
    if args.intrinsics is not None or args.pose_method != "robust":
        raise UserError("--intrinsics and --pose-method apply to an ordered sequence, not to --unordered")
    if not out.parent.exists():
        raise UserError(f"output folder does not exist: {out.parent}")
    frames = collect_unordered_frames(args)
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
    log.info(
        "%d images in %.1f s; initial pair %s, order %s; focal %.2f; %d/%d poses valid; wrote %s",
        n,
        dt,
        result.initial_pair,
        result.order.tolist(),
        rec.focal,
        rec.pose_valid.sum(),
        n,
        out,
    )
    write_other_outputs(args, rec)
    return 0

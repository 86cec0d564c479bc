"""Options shared by several commands (torch-free: ``stream`` uses them too)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..core.intrinsics import Intrinsics, IntrinsicsError, parse_intrinsics


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights",
        default=None,
        help="'synthetic' (untrained demo), a path to spann3r.pth / .safetensors, or hf:OWNER/REPO/FILE",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument(
        "--model",
        default="official",
        choices=["official", "tiny"],
        help="model size preset (tiny: same code, small widths; for tests and demos)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="fp32: exact (bit-identical to the official code on the CPU); bf16/fp16: faster on GPUs, DPT heads "
        "in float32 (docs/precision.md); auto: fp32 on the CPU, bf16 on a GPU",
    )


def intrinsics_arg(text: str) -> Intrinsics:
    try:
        return parse_intrinsics(text)
    except IntrinsicsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_camera_args(p: argparse.ArgumentParser, pose_methods: Sequence[str]) -> None:
    """--intrinsics and --pose-method (the choices are core.camera's; passed in so that the client's command
    needs no torch)."""
    p.add_argument(
        "--intrinsics",
        type=intrinsics_arg,
        default=None,
        metavar="FX,FY,CX,CY",
        help="the camera's intrinsics in pixels of the input images: used for poses, the focal and "
        "exports instead of the focal estimated from the first frame",
    )
    p.add_argument(
        "--pose-method",
        default="robust",
        choices=pose_methods,
        help="robust: batched confidence-weighted solve (default, fast); pnp_ransac: the official "
        "demo's OpenCV PnP-RANSAC",
    )

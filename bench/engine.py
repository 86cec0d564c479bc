"""Engine benchmark: streaming-step latency and batched-step throughput, FLOPs per frame and fraction of peak.

    python bench/engine.py                          # full-size model, CPU fp32, batches 1,4,16
    python bench/engine.py --device cuda --dtypes float32,bfloat16,float16
    python bench/engine.py --model tiny --batches 1,4

Synthetic weights (timing does not depend on the values). Prints one line per measurement and, with --json,
writes them to a file (bench/results/ keeps the recorded runs). Ratios taken in one run are what to compare on
noisy machines; absolute times mean something on a dedicated GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from spann3r.core.config import ModelConfig
from spann3r.core.engine import Engine
from spann3r.core.preprocess import PreparedFrame, prepare
from spann3r.core.weights import build_model

FRAMES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "spann3r" / "frames_B"

# dense peak TFLOP/s of known accelerators (fp32 non-tensor / bf16 / fp16 tensor core)
GPU_PEAKS = {
    "H100": {"float32": 67.0, "bfloat16": 989.0, "float16": 989.0},
    "H200": {"float32": 67.0, "bfloat16": 989.0, "float16": 989.0},
    "A100": {"float32": 19.5, "bfloat16": 312.0, "float16": 312.0},
}


def load_frames(n: int) -> list[PreparedFrame]:
    files = sorted(FRAMES.glob("*.png"))
    if files:
        import cv2

        rgb = [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files[:n]]
    else:  # no reference folder: textured noise frames
        rng = np.random.default_rng(0)
        rgb = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(n)]
    return [prepare(x) for x in rgb]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(engine: Engine, frames: list[PreparedFrame]) -> float:
    """FLOPs of one streaming step (encode 1 frame, memory read, decode, keys, head 1, value) with previews off."""
    from torch.utils.flop_counter import FlopCounterMode

    s = engine.new_stream(preview=False)
    engine.step([(s, frames[0])])
    engine.step([(s, frames[1])])
    with FlopCounterMode(display=False) as counter:
        engine.step([(s, frames[2])])
    return float(counter.get_total_flops())


def time_stream(engine: Engine, frames: list[PreparedFrame], preview: bool, warmup: int = 2) -> list[float]:
    s = engine.new_stream(preview=preview)
    times = []
    for i, f in enumerate(frames):
        sync(engine.device)
        t = time.perf_counter()
        engine.step([(s, f)])
        sync(engine.device)
        if i >= warmup:  # step 0 has no memory read; skip the first steps
            times.append(time.perf_counter() - t)
    return times


def time_batched(engine: Engine, frames: list[PreparedFrame], batch: int, steps: int) -> float:
    """Frames per second of the batched step with ``batch`` independent streams, after one warm-up step."""
    streams = [engine.new_stream(preview=False) for _ in range(batch)]
    for k in range(2):  # every stream past its first frame and first decode step
        engine.step([(s, frames[(k + j) % len(frames)]) for j, s in enumerate(streams)])
    sync(engine.device)
    t = time.perf_counter()
    for k in range(steps):
        engine.step([(s, frames[(k + 2 + j) % len(frames)]) for j, s in enumerate(streams)])
    sync(engine.device)
    return batch * steps / (time.perf_counter() - t)


def peak_tflops(device: torch.device, dtype: str, override: float | None) -> float | None:
    if override:
        return override
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAKS.items():
            if key in name:
                return peaks[dtype]
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="official", choices=["official", "tiny"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--dtypes", default=None, help="comma list; default float32 on CPU, float32,bfloat16,float16 on CUDA"
    )
    ap.add_argument("--frames", type=int, default=8, help="frames per latency run")
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--batch-steps", type=int, default=2)
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak for the fraction-of-peak column")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    dtypes = (args.dtypes or ("float32,bfloat16,float16" if device.type == "cuda" else "float32")).split(",")
    cfg = ModelConfig.preset(args.model)
    frames = load_frames(max(args.frames, 3))
    info = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": args.model,
        "results": [],
    }
    print(f"# {info['device']} | torch {info['torch']} | {info['threads']} threads | model {args.model}")
    model, _ = build_model("synthetic", cfg, device)
    for dtype in dtypes:
        m = model.to(getattr(torch, dtype))
        engine = Engine(m)
        flops = step_flops(engine, frames)
        with_preview = statistics.median(time_stream(engine, frames[: args.frames], preview=True))
        lat = statistics.median(time_stream(engine, frames[: args.frames], preview=False))
        peak = peak_tflops(device, dtype, args.peak_tflops)
        row = {
            "dtype": dtype,
            "gflop_per_frame": flops / 1e9,
            "step_ms": lat * 1e3,
            "step_ms_with_preview": with_preview * 1e3,
            "preview_cost_ratio": with_preview / lat,
            "achieved_tflops": flops / lat / 1e12,
            "fraction_of_peak": (flops / lat / 1e12 / peak) if peak else None,
        }
        for b in map(int, args.batches.split(",")):
            row[f"fps_batch{b}"] = time_batched(engine, frames, b, args.batch_steps)
        info["results"].append(row)
        frac = f"{row['fraction_of_peak']:.1%}" if peak else "n/a (pass --peak-tflops)"
        print(
            f"{dtype:9s} {row['gflop_per_frame']:.1f} GFLOP/frame | step {lat * 1e3:.1f} ms "
            f"(with preview {with_preview * 1e3:.1f} ms, x{row['preview_cost_ratio']:.2f}) | "
            f"{row['achieved_tflops'] * 1e3:.1f} GFLOP/s, {frac} of peak | "
            + " ".join(f"b{b}: {row[f'fps_batch{b}']:.2f} fps" for b in map(int, args.batches.split(",")))
        )
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

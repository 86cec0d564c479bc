"""Fidelity of the fast precision modes: golden sets A and B streamed through the full-size model in bf16 / fp16
(autocast blocks, fused attention, DPT heads in float32) against the official fp32 outputs.

Prints, per set and precision: final pts3d / conf error as a fraction of the scene scale (max and p99, the
reference README's scale and bulk measures), how many memory decisions (skip / prune / counters) differ from the
reference, and seconds per frame. On a CPU without bf16 matrix units these modes are slower than fp32: they exist
for GPUs; this measures what they cost in fidelity.

    python bench/precision.py --sets A B --precisions bf16 fp16 --json bench/results/precision_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from spann3r.core.engine import Engine, Session
from spann3r.core.preprocess import load_frame
from spann3r.core.weights import build_model

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "spann3r"
DECISION_KEYS = ("skipped", "pruned", "mem_tokens", "wm", "lm")


def stream(engine: Engine, folder: Path) -> tuple[list, list]:
    session = Session(engine, preview=False)
    finals, traces = [], []
    for path in sorted(folder.glob("*.png")):
        result = session.push(load_frame(path))
        if result.final is not None:
            finals.append(result.final)
        if result.memory is not None:
            traces.append(result.memory)
    finals.append(session.finish())
    return finals, traces


def errors(ours: np.ndarray, golden: np.ndarray) -> dict[str, float]:
    """|Δ| as a fraction of max|golden|: max and p99 (the README's scale and bulk checks use 1e-3 and 1e-5)."""
    ours, golden = np.asarray(ours, np.float64), np.asarray(golden, np.float64)
    d, scale = np.abs(ours - golden), np.abs(golden).max()
    return {"max_of_scale": float(d.max() / scale), "p99_of_scale": float(np.percentile(d, 99) / scale)}


def golden_finals(g: dict, key: str, finals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Set A holds full-resolution finals; set B a grid (stride 4, offset 2) of every frame's."""
    if f"final_{key}" in g:
        return finals, g[f"final_{key}"]
    s, o = int(g["grid_stride"]), int(g["grid_offset"])
    return finals[:, o::s, o::s], g[f"grid_{key}"]


def measure(model, name: str, precision: str) -> dict:
    g = dict(np.load(GOLDEN / f"golden_{name}.npz"))
    engine = Engine(model, precision=precision)
    t0 = time.perf_counter()
    finals, traces = stream(engine, GOLDEN / f"frames_{name}")
    seconds = time.perf_counter() - t0
    out: dict = {"set": name, "precision": precision, "frames": len(finals), "s_per_frame": seconds / len(finals)}
    for key in ("pts3d", "conf"):
        ours, ref = golden_finals(g, key, np.stack([getattr(f, key) for f in finals]))
        out[key] = errors(ours, ref)
    out["decisions_differing"] = {
        k: int(sum(getattr(t, k) != v for t, v in zip(traces, g[f"trace_{k}"]))) for k in DECISION_KEYS
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=["A", "B"], choices=["A", "B"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = build_model("synthetic")
    rows = []
    for name in args.sets:
        for precision in args.precisions:
            row = measure(model, name, precision)
            rows.append(row)
            print(
                f"set {name} {precision:5s} {row['frames']:3d} frames {row['s_per_frame']:6.2f} s/frame | pts3d "
                f"max {row['pts3d']['max_of_scale']:.2e} p99 {row['pts3d']['p99_of_scale']:.2e} of scale | conf max "
                f"{row['conf']['max_of_scale']:.2e} p99 {row['conf']['p99_of_scale']:.2e} | decisions differing "
                f"{row['decisions_differing']}",
                flush=True,
            )
    report = {
        "device": f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads",
        "load_average": os.getloadavg(),
        "rows": rows,
    }
    print(f"load average {report['load_average']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

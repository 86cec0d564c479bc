"""Cost of the unordered mode against the collection size N (``spann3r reconstruct --unordered``).

For each N, reconstructs N deterministic random 640×480 images (the cost does not depend on the content)
and records wall and CPU time of the three stages: encoding (N images), pair scoring (N(N−1) ordered pairs)
and ordering (step 0 + (N−1)(N−2)/2 candidate decodes, N−1 memory writes). Then fits the per-unit costs
(seconds per encode, per pair decode, per step decode) by least squares and extrapolates the total time.

    python bench/unordered_scaling.py --model tiny --sizes 4 8 12 16 24 32
    python bench/unordered_scaling.py --model official --sizes 3 4 6
    python bench/unordered_scaling.py --model tiny --batch-sweep 1 2 4 8 --sizes 12
    python bench/unordered_scaling.py --model official --units 1 2 4 --repeats 3

Writes JSON lines (one per run) to --out; bench/results/unordered_scaling.md summarises them.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time

import numpy as np
import torch


def random_frames(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [(f"img{i:03d}.png", rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) for i in range(n)]


class StageClock:
    """Progress callback that stamps the wall and CPU time at which each stage finishes."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.c0 = time.process_time()
        self.marks: dict[str, tuple[float, float]] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if done == total:
            self.marks[stage] = (time.perf_counter() - self.t0, time.process_time() - self.c0)


def run_once(engine, n: int, pair_batch: int, candidate_batch: int) -> dict:
    from spann3r.core.unordered import pair_count, reconstruct_unordered, step_decode_count

    frames = random_frames(n)
    clock = StageClock()
    result = reconstruct_unordered(
        engine, frames, pair_batch=pair_batch, candidate_batch=candidate_batch, progress=clock, with_poses=False
    )
    wall_total = time.perf_counter() - clock.t0
    cpu_total = time.process_time() - clock.c0
    enc_w, enc_c = clock.marks["encode"]
    pair_w, pair_c = clock.marks["pairs"]
    view_w, view_c = clock.marks["views"]
    return {
        "n": n,
        "pairs": pair_count(n),
        "step_decodes": step_decode_count(n),
        "pair_batch": pair_batch,
        "candidate_batch": candidate_batch,
        "wall": {"encode": enc_w, "pairs": pair_w - enc_w, "order": view_w - pair_w, "total": wall_total},
        "cpu": {"encode": enc_c, "pairs": pair_c - enc_c, "order": view_c - pair_c, "total": cpu_total},
        "order": result.order.tolist(),
    }


def unit_costs(engine, batches: list[int], repeats: int) -> dict:
    """Seconds per unit of work, the minimum over ``repeats`` timings (robust to other load on a shared machine),
    wall and CPU time:
    per image encoded (batch 4), per pair decode + heads and per candidate decode + heads at each batch size,
    and per memory write (keys, value encoder, write)."""
    from spann3r.core.memory import SpatialMemory
    from spann3r.core.preprocess import prepare
    from spann3r.core.unordered import complete_pair_list, decode_candidates, encode_all, score_pairs

    model = engine.model
    n = max(max(batches) + 1, 4)
    imgs = torch.stack([prepare(rgb).img for _, rgb in random_frames(n)])

    cpu_mins: dict[str, float] = {}

    def best_of(fn, name: str = "") -> float:
        """Minimum wall time of ``repeats`` calls; the minimum CPU time goes to ``cpu_mins[name]``."""
        walls, cpus = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        cpu_mins[name] = min(cpus)
        return min(walls)

    out = {}
    with torch.inference_mode():
        enc, pos = encode_all(model, imgs, 4)
        out["encode_s"] = best_of(lambda: encode_all(model, imgs[:4], 4), "encode_s") / 4
        pairs = complete_pair_list(n)
        for b in batches:
            pair_run = functools.partial(score_pairs, model, enc, pos, pairs[:b], b)
            out[f"pair_s@{b}"] = best_of(pair_run, f"pair_s@{b}") / b
            step_run = functools.partial(decode_candidates, model, enc[0], pos[0], enc, pos, list(range(1, b + 1)), b)
            out[f"step_decode_s@{b}"] = best_of(step_run, f"step_decode_s@{b}") / b
        memory = SpatialMemory(model.norm_q, model.norm_k, model.norm_v, model.cfg.num_patches)
        dec1, dec2 = model.decode(enc[:1], pos[:1], enc[1:2], pos[1:2])
        pts = model.head(1, model.hooked(dec1)).pts3d

        def write():
            k1 = model.keys(1, enc[:1], dec1[-1])
            model.keys(2, enc[1:2], dec2[-1])
            memory.write(k1[0], model.encode_value(pts)[0] + k1[0])

        out["write_s"] = best_of(write, "write_s")
    divisor = {"encode_s": 4, "write_s": 1}
    cpu = {k: v / divisor.get(k, int(k.split("@")[-1]) if "@" in k else 1) for k, v in cpu_mins.items()}
    return {"wall_min": out, "cpu_min": cpu}


def fit_unit_costs(runs: list[dict], clock: str = "wall") -> dict:
    """Least-squares seconds per encode, per pair decode and per step decode (+ per frame write)."""
    enc = np.array([[r["n"]] for r in runs], float), np.array([r[clock]["encode"] for r in runs])
    pairs = np.array([[r["pairs"]] for r in runs], float), np.array([r[clock]["pairs"] for r in runs])
    order = (
        np.array([[r["step_decodes"], r["n"] - 1] for r in runs], float),
        np.array([r[clock]["order"] for r in runs]),
    )

    def fit(system):
        return np.linalg.lstsq(system[0], system[1], rcond=None)[0]

    per_step, per_write = fit(order)
    return {
        "encode_s": float(fit(enc)[0]),
        "pair_s": float(fit(pairs)[0]),
        "step_decode_s": float(per_step),
        "write_s": float(per_write),
    }


def predict_total(unit: dict, n: int) -> float:
    steps = 1 + (n - 1) * (n - 2) // 2
    return (
        unit["encode_s"] * n + unit["pair_s"] * n * (n - 1) + unit["step_decode_s"] * steps + unit["write_s"] * (n - 1)
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["tiny", "official"], default="tiny")
    ap.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 12, 16])
    ap.add_argument("--pair-batch", type=int, default=4)
    ap.add_argument("--candidate-batch", type=int, default=4)
    ap.add_argument(
        "--batch-sweep",
        type=int,
        nargs="*",
        default=None,
        help="instead of the size series: run each batch size (pairs and candidates) at --sizes[0]",
    )
    ap.add_argument(
        "--units",
        type=int,
        nargs="*",
        default=None,
        help="instead of whole runs: per-unit costs (min of --repeats) at these batch sizes",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="append JSON lines here (default: stdout only)")
    ap.add_argument("--extrapolate", type=int, nargs="*", default=[10, 20, 30, 40, 50, 100])
    args = ap.parse_args(argv)

    from spann3r.core.config import ModelConfig
    from spann3r.core.engine import Engine
    from spann3r.core.weights import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = build_model("synthetic", ModelConfig.preset(args.model))
    engine = Engine(model)
    meta = {
        "model": args.model,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg()[0],
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    if args.units:
        r = {"units": unit_costs(engine, args.units, args.repeats), **meta, "load_avg_end": os.getloadavg()[0]}
        line = json.dumps(r)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
        return 0
    if args.batch_sweep:
        configs = [(args.sizes[0], b, b) for b in args.batch_sweep]
    else:
        configs = [(n, args.pair_batch, args.candidate_batch) for n in args.sizes]
    runs = []
    for n, pb, cb in configs:
        r = run_once(engine, n, pb, cb)
        r.update(meta, load_avg_end=os.getloadavg()[0])
        runs.append(r)
        line = json.dumps(r)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
    if not args.batch_sweep and len(runs) >= 2:
        for clock in ("wall", "cpu"):
            unit = fit_unit_costs(runs, clock)
            print(f"{clock} per-unit costs (s): " + ", ".join(f"{k} {v:.3f}" for k, v in unit.items()))
            print(
                f"{clock} extrapolated total (s): "
                + ", ".join(f"N={n}: {predict_total(unit, n):.0f}" for n in args.extrapolate)
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What durable sessions cost per frame (server/snapshots.py): the model-thread copy of a stream's state
(``core.snapshot.capture_stream``: everything small, plus the memory rows written since the last copy, all of them
after a prune) and, off the model thread, the bytes of one commit (stream head + rows + record + the export
buffer's finals since the last commit, all of them after the buffer decimates) and the time to serialise and write
them to a folder store (with fsync).

A stream of N synthetic-weight frames (the test set's frames, cycled) through ``Engine.step``, persisted after every
frame (persist_every=1, the most it can cost; with K the copies cost about the same each and the commits come K
times less often). The export buffer is fed every final's whole pointmap, an upper bound of what a session keeps.

    python bench/persistence.py --model tiny --frames 40
    python bench/persistence.py --model official --frames 12
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: ``import spann3r``

from spann3r.core.config import ModelConfig
from spann3r.core.engine import Engine
from spann3r.core.preprocess import prepare, read_image
from spann3r.core.snapshot import capture_stream
from spann3r.core.weights import build_model
from spann3r.server.exports import ExportBuffer
from spann3r.server.snapshots import HEAD, RECORD, _npz, export_segment
from spann3r.server.store import FolderStore


def frames(n: int) -> list:
    folder = Path(__file__).resolve().parents[2] / "shared" / "reference" / "spann3r" / "frames_A"  # golden set A
    paths = sorted(folder.glob("*.png")) or sorted(folder.glob("*.jpg"))
    if not paths:
        rng = np.random.default_rng(0)
        return [prepare(rng.integers(0, 255, (240, 320, 3), np.uint8)) for _ in range(n)]
    return [prepare(read_image(paths[i % len(paths)])) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["tiny", "official"], default="tiny")
    ap.add_argument("--frames", type=int, default=40)
    args = ap.parse_args()
    model, _ = build_model("synthetic", ModelConfig.tiny() if args.model == "tiny" else None)
    engine = Engine(model)
    state = engine.new_stream(preview=False)
    export = ExportBuffer(4_000_000)
    store = FolderStore(Path(tempfile.mkdtemp(prefix="persist-bench-")))
    sid = "0" * 32
    step_ms, copy_ms, write_ms, nbytes, rows_bytes, full = [], [], [], [], [], 0
    since, committed_rows = None, set()
    exported, decimation, export_full, export_bytes = 0, None, 0, []
    for i, frame in enumerate(frames(args.frames)):
        t0 = time.perf_counter()
        res = engine.step([(state, frame)])[0]
        t1 = time.perf_counter()
        cap = capture_stream(state, since)
        t2 = time.perf_counter()
        since = cap.position
        if res.final is not None:
            xyz = res.final.pts3d.reshape(-1, 3)
            export.add(res.final.index, xyz, res.final.colors.reshape(-1, 3), np.eye(4), True)
        name = f"rows.{i}"
        rows = {name} if cap.start == 0 else committed_rows | {name}
        full += cap.start == 0
        t3 = time.perf_counter()
        blob_rows = cap.rows_bytes()
        upto = max(0, i)  # the finals of the frames before the one just pushed
        segment = export_segment(export, 0 if export.decimation != decimation else exported, upto)
        export_full += export.decimation != decimation
        exported, decimation = upto, export.decimation
        put = {name: blob_rows, f"export.{i}": _npz(segment), HEAD: cap.head_bytes(), RECORD: b"{}" * 256}
        nbytes.append(store.commit(sid, put, committed_rows - rows))
        t4 = time.perf_counter()
        committed_rows = rows
        export_bytes.append(len(put[f"export.{i}"]))
        step_ms.append((t1 - t0) * 1e3)
        copy_ms.append((t2 - t1) * 1e3)
        write_ms.append((t4 - t3) * 1e3)
        rows_bytes.append(len(blob_rows))
    med = statistics.median
    print(
        f"model={args.model} frames={args.frames} device=cpu threads={torch.get_num_threads()} "
        f"load={os.getloadavg()[0]:.1f}"
    )
    print(f"step ms (median)                    {med(step_ms):9.2f}")
    print(f"model-thread copy ms (median / max) {med(copy_ms):9.3f} / {max(copy_ms):.3f}")
    print(f"commit ms, off the model thread     {med(write_ms):9.2f} (median)")
    print(f"bytes per commit (median / last)    {med(nbytes):9.0f} / {nbytes[-1]}")
    print(f"  of which memory rows (median)     {med(rows_bytes):9.0f}   full copies: {full}")
    print(f"  of which export segment (median)  {med(export_bytes):9.0f}   full rewrites: {export_full}")
    print(f"whole export buffer at the end      {len(_npz(export.arrays())):9d}")


if __name__ == "__main__":
    main()

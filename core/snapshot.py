"""Stream snapshots: a stream's whole state (spatial memory + the one-frame lag) as bytes.

safetensors container (no pickle: a snapshot from disk or from a client can hold no code), metadata as JSON.
Restoring into an engine with the same model and memory configuration continues the stream with the same
results as if it had never stopped.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .memory import SpatialMemory

if TYPE_CHECKING:
    from .engine import Engine, StreamState

STREAM_FORMAT = "spann3r-stream/1"


def dump_stream(state: StreamState) -> bytes:
    mem = state.memory
    tensors = {f"memory.{k}": v for k, v in mem.state_tensors().items()}
    meta = {
        "format": STREAM_FORMAT,
        "frames": state.frames,
        "preview": state.preview,
        "finished": state.finished,
        "memory": {"n": mem.n, "wm": mem.wm, "lm": mem.lm, "P": mem.P, "dim": mem.dim, "config": mem.cfg.to_dict()},
    }
    if state.prev_tokens is not None:
        tensors["prev_tokens"] = state.prev_tokens
        tensors["prev_colors"] = torch.from_numpy(np.ascontiguousarray(state.prev_colors))
    if state.query is not None:
        tensors["query"] = state.query
    if state.pending_head2 is not None:
        for i, t in enumerate(state.pending_head2):
            tensors[f"pending_head2.{i}"] = t
    if state.last_preview is not None:
        p = state.last_preview
        meta["last_preview_index"] = p.index
        tensors["last_preview.pts3d"] = torch.from_numpy(p.pts3d)
        tensors["last_preview.conf"] = torch.from_numpy(p.conf)
        tensors["last_preview.colors"] = torch.from_numpy(np.ascontiguousarray(p.colors))
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}  # no shared storage
    return st_save(tensors, metadata={"stream": json.dumps(meta)})


def load_stream(engine: Engine, data: bytes) -> StreamState:
    from .engine import FrameOutput

    try:
        tensors = st_load(bytes(data))
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(json.loads(data[8 : 8 + header_len])["__metadata__"]["stream"])
    except Exception as exc:
        raise ValueError(f"not a Spann3R stream snapshot: {exc.__class__.__name__}: {exc}") from None
    if meta.get("format") != STREAM_FORMAT:
        raise ValueError(f"unsupported stream snapshot format {meta.get('format')!r}")
    state = engine.new_stream(preview=meta["preview"])
    mem: SpatialMemory = state.memory
    m = meta["memory"]
    if m["P"] != mem.P or m["dim"] != mem.dim:
        raise ValueError(f"snapshot is for {m['P']} tokens x {m['dim']} channels; this model has {mem.P} x {mem.dim}")
    mem.load_tensors(
        {k[len("memory.") :]: v for k, v in tensors.items() if k.startswith("memory.")},
        m["n"],
        m["wm"],
        m["lm"],
        m["config"],
    )
    dev, dt = engine.device, mem.dtype
    state.frames, state.finished = meta["frames"], meta["finished"]
    if "prev_tokens" in tensors:
        state.prev_tokens = tensors["prev_tokens"].to(dev, dt)
        state.prev_colors = tensors["prev_colors"].numpy()
    if "query" in tensors:
        state.query = tensors["query"].to(dev, dt)
    pending = sorted((k for k in tensors if k.startswith("pending_head2.")), key=lambda k: int(k.split(".")[1]))
    if pending:
        state.pending_head2 = [tensors[k].to(dev, dt) for k in pending]
    if "last_preview_index" in meta:
        state.last_preview = FrameOutput(
            meta["last_preview_index"],
            "preview",
            tensors["last_preview.pts3d"].numpy(),
            tensors["last_preview.conf"].numpy(),
            tensors["last_preview.colors"].numpy(),
        )
    return state

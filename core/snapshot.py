"""Stream snapshots: a stream's whole state (spatial memory + the one-frame lag) as bytes.

safetensors container (no pickle: a snapshot from disk or from a client can hold no code), metadata as JSON.
Restoring into an engine with the same model and memory configuration continues the stream with the same
results as if it had never stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .memory import SpatialMemory

if TYPE_CHECKING:
    from .engine import Engine, StreamState

STREAM_FORMAT = "spann3r-stream/1"


ROW_BUFFERS = ("key_unit", "key_norm", "value_norm")  # the memory's large buffers: rows only appended between layouts


def _state(state: StreamState) -> tuple[dict[str, torch.Tensor], dict]:
    """The stream's tensors (on their device, not copied) and metadata."""
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
        tensors["last_preview.pts3d"] = p.pts3d_device
        tensors["last_preview.conf"] = p.conf_device
        tensors["last_preview.colors"] = torch.from_numpy(np.ascontiguousarray(p.colors))
    return tensors, meta


def _host_copies(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}  # no shared storage


def dump_stream(state: StreamState) -> bytes:
    tensors, meta = _state(state)
    return st_save(_host_copies(tensors), metadata={"stream": json.dumps(meta)})


@dataclass
class StreamCapture:
    """A stream's state copied to the host (on the model thread, before its next step), for serialising elsewhere:
    everything in full except the memory's large rows, which it holds from row ``start`` on (the rows before are
    in earlier captures of the same ``layout``)."""

    meta: dict
    tensors: dict[str, torch.Tensor]
    rows: dict[str, torch.Tensor]
    start: int
    layout: int
    n: int

    @property
    def position(self) -> tuple[int, int]:
        """Pass to the next ``capture_stream`` to capture only what it adds."""
        return self.layout, self.n

    def head_bytes(self) -> bytes:
        return st_save(self.tensors, metadata={"stream": json.dumps(self.meta)})

    def rows_bytes(self) -> bytes:
        return st_save(self.rows, metadata={"start": str(self.start)})


def capture_stream(state: StreamState, since: tuple[int, int] | None = None) -> StreamCapture:
    """The stream's state; with ``since`` (an earlier capture's ``position``) only the memory rows added since, as
    long as no row moved (a prune or a load changes the layout: then all rows)."""
    mem = state.memory
    start = since[1] if since is not None and since[0] == mem.layout and since[1] <= mem.n else 0
    tensors, meta = _state(state)
    for name in ROW_BUFFERS:
        del tensors[f"memory.{name}"]
    return StreamCapture(meta, _host_copies(tensors), _host_copies(mem.rows(start)), start, mem.layout, mem.n)


def load_stream_parts(engine: Engine, head: bytes, rows: list[bytes]) -> StreamState:
    """The stream of a head (``StreamCapture.head_bytes``) and its row segments (``rows_bytes``), in order: the
    first starts at row 0, each next where the one before ended."""
    tensors, meta = _parse(head)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in ROW_BUFFERS}
    end = 0
    for data in rows:
        seg, seg_meta = st_load(bytes(data)), _metadata(data)
        if int(seg_meta["start"]) != end:
            raise ValueError(
                f"memory row segments do not follow each other: one starts at {seg_meta['start']}, "
                f"the rows so far end at {end}"
            )
        for name in ROW_BUFFERS:
            parts[name].append(seg[name])
        end += seg[ROW_BUFFERS[0]].shape[0]
    if end != meta["memory"]["n"]:
        raise ValueError(f"memory row segments hold {end} rows, the stream has {meta['memory']['n']}")
    if rows:
        tensors.update({f"memory.{name}": torch.cat(ts) for name, ts in parts.items()})
    else:
        width = meta["memory"]["dim"]
        tensors.update({f"memory.{name}": torch.zeros(0, width) for name in ROW_BUFFERS})
    return _restore(engine, tensors, meta)


def _metadata(data: bytes) -> dict:
    header_len = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + header_len])["__metadata__"]


def _parse(data: bytes) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        tensors = st_load(bytes(data))
        meta = json.loads(_metadata(data)["stream"])
    except Exception as exc:
        raise ValueError(f"not a Spann3R stream snapshot: {exc.__class__.__name__}: {exc}") from None
    if meta.get("format") != STREAM_FORMAT:
        raise ValueError(f"unsupported stream snapshot format {meta.get('format')!r}")
    return tensors, meta


def load_stream(engine: Engine, data: bytes) -> StreamState:
    return _restore(engine, *_parse(data))


def _restore(engine: Engine, tensors: dict[str, torch.Tensor], meta: dict) -> StreamState:
    from .engine import FrameOutput

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
            tensors["last_preview.pts3d"].to(dev),
            tensors["last_preview.conf"].to(dev),
            tensors["last_preview.colors"].numpy(),
        )
    return state

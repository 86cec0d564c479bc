"""Streaming engine: one ``StreamState`` per stream (its spatial memory and the one-frame lag), and a batched
step that advances many independent streams in one forward pass.

Order of one step for a stream whose previous frame is i and new frame is i+1 (the official forward):
encode frame i+1 → read memory with K2 of the previous step (step 0: no read, view 1 = E_i) → decode
(view 1 = fused, view 2 = E_{i+1}) → DPT head 1 (final of frame i) and, when wanted, head 2 (preview of frame
i+1) → ``memorize``: keys K1 = head1([E_i | dec1]), K2 = head2([E_{i+1} | dec2]), value of head 1's pointmap,
write K1, V + K1 with the similarity check (the unordered mode's steps end with the same call).

Batched: encoder, decoders, key heads, DPT heads and the value encoder run once over all streams; memory
read, skip and prune are decided per stream (the official similarity max spans the whole batch, which would
let one stream's frame decide for another).

A preview costs a whole DPT head. Streams can turn previews off; the last frame's final output *is* its
preview, so the engine keeps the hooked decoder tokens of the latest step and runs head 2 only in ``finish``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from .config import MemoryConfig
from .memory import SpatialMemory, WriteDecision
from .model import Spann3R
from .preprocess import PreparedFrame

log = logging.getLogger(__name__)


def memorize(
    model: Spann3R,
    memories: list[SpatialMemory],
    e1: torch.Tensor,
    dec1: torch.Tensor,
    e2: torch.Tensor,
    dec2: torch.Tensor,
    pts1: torch.Tensor,
) -> tuple[list[WriteDecision], torch.Tensor]:
    """The memory update of one decode step for B streams, stream b writing into ``memories[b]``.

    e1, e2 [B, P, C] encoder tokens of view 1 and view 2; dec1, dec2 [B, P, C_dec] their final decoder tokens;
    pts1 [B, H, W, 3] head 1's pointmap. Keys K1 = head1([e1 | dec1]) and K2 = head2([e2 | dec2]), value V of
    pts1, then each memory writes (K1, V + K1) with its similarity check. Returns the write decisions and
    K2 [B, P, C]: each stream's next memory query."""
    k1 = model.keys(1, e1, dec1)
    k2 = model.keys(2, e2, dec2)
    values = model.encode_value(pts1)
    decisions = [memory.write(k1[b], values[b] + k1[b]) for b, memory in enumerate(memories)]
    return decisions, k2


class StreamError(RuntimeError):
    """Misuse of a stream (finishing a stream of fewer than two frames, pushing after finish)."""


@dataclass
class FrameOutput:
    """One map of a stream. The points and confidences stay where the model made them (the engine's device; views
    of the batch's output) until a user asks for the host arrays ``pts3d`` / ``conf`` (copied once, on first use):
    the service encodes and solves poses on the device and copies only what it sends."""

    index: int  # frame index in its stream
    kind: Literal["final", "preview"]
    pts3d_device: torch.Tensor  # [H, W, 3] float32, global frame (camera of frame 0), on the engine's device
    conf_device: torch.Tensor  # [H, W] float32, on the engine's device
    colors: np.ndarray  # [H, W, 3] uint8, host (the client's image)

    @classmethod
    def from_numpy(
        cls, index: int, kind: Literal["final", "preview"], pts3d: np.ndarray, conf: np.ndarray, colors: np.ndarray
    ) -> FrameOutput:
        """A map from host arrays (tests, tools): the tensors share their memory, ``pts3d`` / ``conf`` are them."""
        out = cls(index, kind, torch.from_numpy(pts3d), torch.from_numpy(conf), colors)
        out.__dict__.update(pts3d=pts3d, conf=conf)  # the cached host arrays: no copy
        return out

    @functools.cached_property
    def pts3d(self) -> np.ndarray:
        """[H, W, 3] float32 on the host (a copy of ``pts3d_device``, made on first use)."""
        return self.pts3d_device.detach().cpu().numpy()

    @functools.cached_property
    def conf(self) -> np.ndarray:
        """[H, W] float32 on the host (a copy of ``conf_device``, made on first use)."""
        return self.conf_device.detach().cpu().numpy()

    def on_host(self) -> FrameOutput:
        """This map with its tensors on the host (what a caller that keeps many maps holds: no device memory)."""
        return FrameOutput.from_numpy(self.index, self.kind, self.pts3d, self.conf, self.colors)

    def as_final(self) -> FrameOutput:
        """This map (a stream's last preview) as its frame's final: the same tensors, and host copies if made."""
        out = dataclasses.replace(self, kind="final")
        out.__dict__.update({k: v for k, v in self.__dict__.items() if k in ("pts3d", "conf")})
        return out


@dataclass
class MemoryTrace:
    """The memory decisions of one step (the step that wrote frame ``frame_index``)."""

    step: int
    frame_index: int
    similarity: float | None
    skipped: bool
    pruned: bool
    mem_tokens: int
    wm: int
    lm: int
    attn_zeroed_frac: float | None  # fraction of read-attention entries removed by the threshold

    @classmethod
    def from_write(cls, step: int, d: WriteDecision, zeroed: float | None) -> MemoryTrace:
        return cls(step, step, d.similarity, d.skipped, d.pruned, d.mem_tokens, d.wm, d.lm, zeroed)


@dataclass
class StepResult:
    frame_index: int  # the frame just pushed
    final: FrameOutput | None  # final output of the previous frame
    preview: FrameOutput | None  # preview of the frame just pushed (None if previews are off)
    memory: MemoryTrace | None
    timings: dict[str, float] = field(default_factory=dict)


class StreamState:
    """Everything one stream carries between frames. Lives on the engine's device."""

    def __init__(self, model: Spann3R, memory_cfg: MemoryConfig, preview: bool = True):
        self.preview = preview
        self.memory = SpatialMemory(model.norm_q, model.norm_k, model.norm_v, model.cfg.num_patches, memory_cfg)
        self.frames = 0  # frames pushed
        self.finished = False
        self.prev_tokens: torch.Tensor | None = None  # E of the latest frame [P, C]
        self.prev_colors: np.ndarray | None = None
        self.query: torch.Tensor | None = None  # K2 of the latest step: the next memory query
        self.last_preview: FrameOutput | None = None
        self.pending_head2: list[torch.Tensor] | None = None  # hooked dec2 tokens of the latest step

    @property
    def steps(self) -> int:
        return max(self.frames - 1, 0)


Precision = Literal["fp32", "bf16", "fp16"]
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def default_precision(device: torch.device) -> Precision:
    """fp32 (the exact, golden path) on the CPU; bf16 on accelerators, where the transformer blocks run ~2x faster
    with fused attention and the DPT heads stay float32 (fidelity bound: docs/precision.md)."""
    return "fp32" if device.type == "cpu" else "bf16"


class Engine:
    """The streaming engine of one model: batched steps over many streams.

    ``precision``: ``fp32`` is the exact path (bit-identical to the official code on the CPU); ``bf16`` / ``fp16``
    autocast the encoder, decoders, memory and value encoder (with fused attention) and keep the DPT heads and
    their activations in float32."""

    def __init__(self, model: Spann3R, memory_cfg: MemoryConfig | None = None, precision: Precision = "fp32"):
        if precision != "fp32" and precision not in AUTOCAST_DTYPES:
            raise ValueError(f"unknown precision {precision!r} (fp32, bf16 or fp16)")
        self.model = model.eval()
        self.memory_cfg = memory_cfg or MemoryConfig()
        self.device = model.device
        self.precision = precision

    def _autocast(self) -> torch.autocast:
        dtype = AUTOCAST_DTYPES.get(self.precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def new_stream(self, preview: bool = True) -> StreamState:
        return StreamState(self.model, self.memory_cfg, preview)

    # ------------------------------------------------------------------ the batched step
    @torch.inference_mode()
    def step(self, batch: list[tuple[StreamState, PreparedFrame]]) -> list[StepResult]:
        """Push one frame into each of several distinct streams; returns one result per item, in order."""
        if len({id(s) for s, _ in batch}) != len(batch):
            raise StreamError("a batched step takes at most one frame per stream")
        for s, _ in batch:
            if s.finished:
                raise StreamError("stream already finished")
        t0 = time.perf_counter()
        m, dev = self.model, self.device
        imgs = torch.stack([f.img for _, f in batch]).to(dev, non_blocking=True)
        with self._autocast():
            enc, pos = m.encode(imgs)  # [B, P, C]
        t_enc = time.perf_counter()

        # streams that have a previous frame run a decode step
        active = [b for b, (s, _) in enumerate(batch) if s.prev_tokens is not None]
        results: list[StepResult] = [StepResult(s.frames, None, None, None) for s, _ in batch]
        if active:
            with self._autocast():
                self._decode_step(batch, active, enc, pos, results)
        for b, (s, f) in enumerate(batch):
            s.prev_tokens, s.prev_colors = enc[b], f.colors
            s.frames += 1
        total = time.perf_counter() - t0
        for r in results:
            r.timings = {"step_s": total, "encode_s": t_enc - t0, "batch": float(len(batch))}
        return results

    def _decode_step(self, batch, active, enc, pos, results) -> None:
        m = self.model
        states = [batch[b][0] for b in active]
        e_prev = torch.stack([s.prev_tokens for s in states])
        e_new = enc[active]
        pos_a = pos[active]
        # memory read per stream (view 1 = fused; at a stream's first step, its own encoder tokens)
        views: list[torch.Tensor] = []
        zeroed: list[torch.Tensor | None] = []
        for s, e in zip(states, e_prev):
            if s.query is None:
                views.append(e)
                zeroed.append(None)
            else:
                fused, frac = s.memory.read(s.query)
                views.append(fused)
                zeroed.append(frac)
        view1 = torch.stack(views)
        dec1, dec2 = m.decode(view1, pos_a, e_new, pos_a)
        res1 = m.head(1, m.hooked(dec1))
        hooked2 = m.hooked(dec2)
        want_preview = [i for i, s in enumerate(states) if s.preview]
        if len(want_preview) == len(states):
            res2 = m.head(2, hooked2)
        elif want_preview:
            res2 = m.head(2, [t[want_preview] for t in hooked2])
        else:
            res2 = None
        decisions, k2 = memorize(m, [s.memory for s in states], e_prev, dec1[-1], e_new, dec2[-1], res1.pts3d)

        # the maps stay on the device (FrameOutput copies them to the host only when asked)
        for i, (b, s) in enumerate(zip(active, states)):
            step = s.frames - 1
            frac = zeroed[i]
            z = None if frac is None else float(frac)
            s.query = k2[i]
            r = results[b]
            r.final = FrameOutput(step, "final", res1.pts3d[i], res1.conf[i], s.prev_colors)
            r.memory = MemoryTrace.from_write(step, decisions[i], z)
            if s.preview:
                assert res2 is not None  # head 2 ran for every stream that wants previews
                j = want_preview.index(i)
                r.preview = FrameOutput(step + 1, "preview", res2.pts3d[j], res2.conf[j], batch[b][1].colors)
                s.last_preview, s.pending_head2 = r.preview, None
            else:
                s.last_preview = None
                s.pending_head2 = [t[i : i + 1] for t in hooked2]

    # ------------------------------------------------------------------ end of stream
    @torch.inference_mode()
    def finish(self, state: StreamState) -> FrameOutput:
        """Final output of the stream's last frame (its preview from the last step). Ends the stream."""
        if state.frames < 2:
            raise StreamError(f"a stream needs at least two frames, got {state.frames}")
        if state.finished:
            raise StreamError("stream already finished")
        state.finished = True
        last = state.frames - 1
        if state.last_preview is not None:
            return state.last_preview.as_final()
        assert state.pending_head2 is not None and state.prev_colors is not None  # set by every step without preview
        res = self.model.head(2, state.pending_head2)  # float32 whatever the precision
        state.pending_head2 = None
        return FrameOutput(last, "final", res.pts3d[0], res.conf[0], state.prev_colors)

    # ------------------------------------------------------------------ snapshots
    def snapshot(self, state: StreamState) -> bytes:
        """Serialise a stream (memory + lag state) so it can continue elsewhere with identical results."""
        from .snapshot import dump_stream

        return dump_stream(state)

    def restore(self, data: bytes) -> StreamState:
        from .snapshot import load_stream

        return load_stream(self, data)


class Session:
    """One stream on one engine: push frames one at a time, then ``finish``."""

    def __init__(self, engine: Engine, preview: bool = True):
        self.engine = engine
        self.state = engine.new_stream(preview)

    def push(self, frame: PreparedFrame) -> StepResult:
        return self.engine.step([(self.state, frame)])[0]

    def finish(self) -> FrameOutput:
        return self.engine.finish(self.state)

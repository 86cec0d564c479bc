"""The unordered mode as a sequence of small units of model work, for a scheduler that interleaves them with
other work on the same device (the service runs collection jobs between streaming steps).

``UnorderedSteps`` computes what ``reconstruct_unordered`` computes, with the same batches in the same order
(so the same floating-point results), but one unit per ``run_unit()`` call:

- ``encode``: one batch of ``encode_batch`` images through the encoder;
- ``pairs``: one batch of ``pair_batch`` ordered pairs through plain DUSt3R;
- ``views``: one batch of ``candidate_batch`` next-best-view candidates; the last batch of a greedy step also
  makes the winner's memory write (cheap: two key projections and one value encode).

``finish()`` assembles the result (focal and a PnP pose per frame): CPU work that needs no model, so a caller
can run it away from the model's thread. The state between units is plain tensors and lists; nothing holds a
thread or a generator frame, so a caller may simply stop calling (cancellation) and drop the object.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from math import ceil

import numpy as np
import torch

from .engine import Engine, FrameOutput, MemoryTrace
from .memory import SpatialMemory
from .model import Spann3R
from .preprocess import PreparedFrame, prepare
from .reconstruct import assemble
from .unordered import (CandidateDecode, UnorderedError, UnorderedResult, beats, complete_pair_list,
                        decode_candidates, first_max, pair_count, score_pairs, step_decode_count)

STAGES = ("encode", "pairs", "views")


def unit_count(n: int, pair_batch: int = 4, candidate_batch: int = 4, encode_batch: int = 4) -> int:
    """Units of an ``n``-image collection: encode batches, pair batches, and per greedy step its candidate
    batches (step 0 has one candidate, step k ≥ 1 has N−1−k)."""
    if n < 2:
        return 0
    views = 1 + sum(ceil((n - 1 - k) / candidate_batch) for k in range(1, n - 1))
    return ceil(n / encode_batch) + ceil(pair_count(n) / pair_batch) + views


class UnorderedSteps:
    """One collection's reconstruction, advanced a unit at a time (see the module docstring)."""

    def __init__(self, engine_or_model: Engine | Spann3R,
                 frames: Iterable[tuple[str, np.ndarray | PreparedFrame]], *, pair_batch: int = 4,
                 candidate_batch: int = 4, encode_batch: int = 4, with_poses: bool = True):
        if isinstance(engine_or_model, Engine):
            self.model, self.memory_cfg = engine_or_model.model, engine_or_model.memory_cfg
        else:
            self.model, self.memory_cfg = engine_or_model.eval(), None
        self.names: list[str] = []
        self.frames: list[PreparedFrame] = []
        for name, frame in frames:
            self.names.append(name)
            self.frames.append(frame if isinstance(frame, PreparedFrame) else prepare(frame))
        n = self.n = len(self.frames)
        if n < 2:
            raise UnorderedError(f"an unordered collection needs at least two images, got {n}")
        self.pair_batch, self.candidate_batch, self.encode_batch = pair_batch, candidate_batch, encode_batch
        self.with_poses = with_poses
        self.units_total = unit_count(n, pair_batch, candidate_batch, encode_batch)
        self.units_done = 0
        self.stage = "encode"
        self.stage_done = 0  # in the stage's own units: images, ordered pairs, step decodes
        self.timings: dict[str, float] = {"encode_s": 0.0, "pairs_s": 0.0, "order_s": 0.0}
        # encode
        self._tokens: list[torch.Tensor] = []
        self._positions: list[torch.Tensor] = []
        self.enc = self.pos = None
        # pairs
        self._pairs = complete_pair_list(n)
        self.pair_conf = np.zeros((n, n), dtype=np.float32)
        self.initial_pair: tuple[int, int] | None = None
        # views (greedy ordering)
        self.memory: SpatialMemory | None = None
        self.order: list[int] = []
        self.remaining: list[int] = []
        self.nbv_best = np.full(max(n - 2, 0), np.nan, dtype=np.float32)
        self.nbv_all = np.full((max(n - 2, 0), n), np.nan, dtype=np.float32)
        self.finals: list[FrameOutput] = []
        self.previews: list[FrameOutput] = []
        self.traces: list[MemoryTrace] = []
        self._query: torch.Tensor | None = None  # K2 of the previous step [P, C]
        self._step = 0
        self._step_view1: torch.Tensor | None = None  # view 1 of the step under way (None: not started)
        self._step_zeroed: float | None = None
        self._step_candidates: list[int] = []
        self._step_next = 0  # position of the next candidate batch in _step_candidates
        self._step_scores: list[float] = []
        self._step_best: CandidateDecode | None = None

    # ------------------------------------------------------------------ progress
    @property
    def done(self) -> bool:
        """Every model unit has run (``finish()`` may be called)."""
        return self.stage == "done"

    @property
    def stage_total(self) -> int:
        return {"encode": self.n, "pairs": pair_count(self.n), "views": step_decode_count(self.n)}.get(self.stage, 0)

    # ------------------------------------------------------------------ units
    def run_unit(self) -> None:
        """Run the next unit of model work. Call only from the thread that owns the model."""
        if self.done:
            raise RuntimeError("every unit has run")
        t0 = time.perf_counter()
        stage = self.stage
        with torch.inference_mode():
            {"encode": self._encode_unit, "pairs": self._pairs_unit, "views": self._views_unit}[stage]()
        self.units_done += 1
        self.timings[{"encode": "encode_s", "pairs": "pairs_s", "views": "order_s"}[stage]] += \
            time.perf_counter() - t0

    def _encode_unit(self) -> None:
        start = self.stage_done
        imgs = torch.stack([f.img for f in self.frames[start: start + self.encode_batch]])
        enc, pos = self.model.encode(imgs.to(self.model.device))
        self._tokens.append(enc)
        self._positions.append(pos)
        self.stage_done = min(start + self.encode_batch, self.n)
        if self.stage_done == self.n:
            self.enc, self.pos = torch.cat(self._tokens), torch.cat(self._positions)
            self._tokens = self._positions = []
            self.stage, self.stage_done = "pairs", 0

    def _pairs_unit(self) -> None:
        start = self.stage_done
        chunk = self._pairs[start: start + self.pair_batch]
        scores, _ = score_pairs(self.model, self.enc, self.pos, chunk, self.pair_batch)
        for i, j in chunk:
            self.pair_conf[i, j] = scores[i, j]
        self.stage_done = start + len(chunk)
        if self.stage_done == len(self._pairs):
            row, col = self.initial_pair = first_max(self.pair_conf)
            m = self.model
            self.memory = SpatialMemory(m.norm_q, m.norm_k, m.norm_v, m.cfg.num_patches, self.memory_cfg)
            self.order = [row]
            self.remaining = [i for i in range(self.n) if i != row]
            self.stage, self.stage_done = "views", 0

    def _views_unit(self) -> None:
        placed = self.order[-1]
        if self._step_view1 is None:  # first batch of this step: the memory read
            if self._step == 0:  # streaming step 0: no memory yet, view 1 = raw tokens, the initial pair's column
                self._step_view1, self._step_zeroed = self.enc[placed], None
                self._step_candidates = [self.initial_pair[1]]
            else:
                view1, zeroed = self.memory.read(self._query)
                self._step_view1, self._step_zeroed = view1, float(zeroed)
                self._step_candidates = list(self.remaining)
            self._step_next, self._step_scores, self._step_best = 0, [], None
        chunk = self._step_candidates[self._step_next: self._step_next + self.candidate_batch]
        scores, best = decode_candidates(self.model, self._step_view1, self.pos[placed], self.enc, self.pos, chunk,
                                         self.candidate_batch)
        # batches are scanned in candidate order: a later batch's winner must be strictly better (ties → earlier)
        if best is not None and beats(best.score, self._step_best.score if self._step_best else None):
            self._step_best = best
        self._step_scores.extend(scores)
        self._step_next += len(chunk)
        self.stage_done += len(chunk)
        if self._step_next == len(self._step_candidates):
            self._place_winner(placed)

    def _place_winner(self, placed: int) -> None:
        step, best, candidates, m = self._step, self._step_best, self._step_candidates, self.model
        if best is None:
            raise UnorderedError(
                f"next-best view at step {step}: no candidate scored above 0 (scores {self._step_scores}); "
                "the confidences are degenerate")
        if step > 0:
            self.nbv_all[step - 1, candidates] = self._step_scores
            self.nbv_best[step - 1] = best.score
        # the winner's decode becomes a streaming step (same order as reconstruct_unordered)
        k1 = m.keys(1, self.enc[placed].unsqueeze(0), best.dec1_final)
        k2 = m.keys(2, self.enc[best.index].unsqueeze(0), best.dec2_final)
        value = m.encode_value(best.pts1)
        decision = self.memory.write(k1[0], value[0] + k1[0])
        self._query = k2[0]
        self.finals.append(FrameOutput(step, "final", best.pts1[0].cpu().numpy(), best.conf1[0].cpu().numpy(),
                                       self.frames[placed].colors))
        self.previews.append(FrameOutput(step + 1, "preview", best.pts2[0].cpu().numpy(),
                                         best.conf2[0].cpu().numpy(), self.frames[best.index].colors))
        self.traces.append(MemoryTrace.from_write(step, decision, self._step_zeroed))
        self.order.append(best.index)
        self.remaining.remove(best.index)
        self._step += 1
        self._step_view1 = self._step_best = None
        if self._step == self.n - 1:
            self.stage = "done"
            self.enc = self.pos = self.memory = self._query = None  # device memory goes back before finish()

    # ------------------------------------------------------------------ result
    def finish(self) -> UnorderedResult:
        """Focal and poses (CPU only, no model) → the result ``reconstruct_unordered`` returns."""
        if not self.done:
            raise RuntimeError(f"{self.units_total - self.units_done} units have not run yet")
        t0 = time.perf_counter()
        last = self.previews[-1]  # the last frame's final output is its preview
        finals = self.finals + [FrameOutput(last.index, "final", last.pts3d, last.conf, last.colors)]
        rec = assemble(finals, self.traces, [self.names[i] for i in self.order], self.with_poses)
        timings = dict(self.timings, poses_s=time.perf_counter() - t0)
        timings["total_s"] = sum(timings.values())
        return UnorderedResult(rec, np.array(self.order, dtype=np.int32), list(self.names), self.pair_conf,
                               self.initial_pair, self.nbv_best, self.nbv_all, self.previews, {}, timings)


def reconstruct_unordered_stepwise(engine_or_model: Engine | Spann3R,
                                   frames: Iterable[tuple[str, np.ndarray | PreparedFrame]], **kwargs
                                   ) -> UnorderedResult:
    """``reconstruct_unordered`` through ``UnorderedSteps``, all units in a row (tests, and for reference)."""
    run = UnorderedSteps(engine_or_model, frames, **kwargs)
    while not run.done:
        run.run_unit()
    return run.finish()


__all__ = ["STAGES", "UnorderedSteps", "reconstruct_unordered_stepwise", "unit_count"]

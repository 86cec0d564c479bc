"""Unordered image collections (the official "offline" mode): choose an order, then stream.

1. Every image is encoded once: encoder tokens do not depend on the partner image.
2. Pair scores: the plain DUSt3R network (decoders + both DPT heads, no memory) on every ordered pair
   (i, j) of the complete graph, image i as view 1. Score = mean over pixels of (c − 1)/c for view 1's
   confidence plus the same for view 2's → ``pair_conf[i, j]`` (diagonal 0, not symmetric). The official
   demo decodes each ordered pair twice (its pair helper mirrors a symmetrised list); we decode it once.
3. Initial pair = the first maximum of the matrix read row by row. Its row image is ``order[0]`` (whose
   camera is the global frame), its column image ``order[1]``.
4. Step 0 is streaming step 0 on (row, col): decode with view 1 = the row image's encoder tokens.
5. Greedy next-best view, step k = 1 … N−2: one memory read with the view-2 key of the image placed last;
   every image not yet placed (ascending index) is decoded with view 1 = the fused tokens and view 2 = its
   encoder tokens; the one with the strictly highest score (same formula; ties → lowest index) is taken.
   Its decode is then a streaming step (``engine.memorize``): keys K1 (raw tokens of ``order[k]``) and K2 (the
   winner), the value of head 1's pointmap, the memory write with the similarity check; K2 is the next query.

Outputs are those of streaming on the images in ``order`` (finals in the chosen order, all in the camera
frame of ``order[0]``), plus the order, the pair matrix and the next-best-view scores. Pair and candidate
decodes are independent forward passes and run in batches.

Cost for N images: N encodes, N(N−1) pair decodes, 1 + (N−1)(N−2)/2 step decodes (step 0 and every
candidate), N−1 value encodes.

The computation runs as small units of model work (``UnorderedSteps``), so that a scheduler can interleave
them with other work on the same device (the service runs collection jobs between streaming steps); one
``run_unit()`` call is one unit:

- ``encode``: one batch of ``encode_batch`` images through the encoder;
- ``pairs``: one batch of ``pair_batch`` ordered pairs through plain DUSt3R;
- ``views``: one batch of ``candidate_batch`` next-best-view candidates; the last batch of a greedy step also
  makes the winner's memory write (cheap: two key projections and one value encode).

``finish()`` assembles the result (focal and a PnP pose per frame): CPU work that needs no model, so a caller
can run it away from the model's thread. The state between units is plain tensors and lists; nothing holds a
thread or a generator frame, so a caller may simply stop calling (cancellation) and drop the object.
``reconstruct_unordered`` runs every unit in a row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from math import ceil
from typing import Any

import numpy as np
import torch

from .config import MemoryConfig
from .engine import Engine, FrameOutput, MemoryTrace, memorize
from .memory import SpatialMemory
from .model import Spann3R
from .preprocess import PreparedFrame, prepare
from .reconstruct import Reconstruction, assemble

log = logging.getLogger(__name__)

# progress(stage, done, total) with stage "encode" (images), "pairs" (ordered pairs) or "views" (step decodes)
Progress = Callable[[str, int, int], None]


class UnorderedError(ValueError):
    """A collection the unordered mode cannot reconstruct. The message is user-facing."""


@dataclass
class PairOutput:
    """Plain DUSt3R on one ordered pair (view 1 = image i, view 2 = image j)."""

    pts3d: np.ndarray  # [H, W, 3] view 1's points, its own camera
    pts3d_in_other_view: np.ndarray  # [H, W, 3] view 2's points, in view 1's camera
    conf1: np.ndarray  # [H, W]
    conf2: np.ndarray  # [H, W]


@dataclass
class UnorderedResult:
    reconstruction: Reconstruction  # per frame in the chosen order (names = files in that order)
    order: np.ndarray  # [N] int32: order[k] = index (in input order) of the k-th frame placed
    input_names: list[str]  # names in input order
    pair_conf: np.ndarray  # [N, N] float32 pair scores, [i, j] = image i as view 1
    initial_pair: tuple[int, int]
    nbv_best_conf: np.ndarray  # [N-2] float32 winning score of greedy step k = 1 … N−2
    nbv_candidate_conf: np.ndarray  # [N-2, N] float32 every candidate's score by input index; NaN if placed
    previews: list[FrameOutput]  # step k's head-2 output: preview of order[k+1] (index k+1)
    pair_outputs: dict[tuple[int, int], PairOutput] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def arrays(self) -> dict[str, Any]:
        """The ordered mode's npz layout plus ``order``, ``pair_conf`` and the selection scores."""
        out = self.reconstruction.arrays()
        out.update(
            order=self.order.astype(np.int32),
            input_names=np.array(self.input_names),
            pair_conf=self.pair_conf.astype(np.float32),
            initial_pair=np.array(self.initial_pair, dtype=np.int32),
            nbv_best_conf=self.nbv_best_conf.astype(np.float32),
            nbv_candidate_conf=self.nbv_candidate_conf.astype(np.float32),
        )
        return out

    def save_npz(self, path) -> None:
        np.savez_compressed(path, **self.arrays())


# ----------------------------------------------------------------------------- cost
# bench/results/unordered_scaling.md, full-size model on a 2-core x86-64 CPU: 5.7 CPU-seconds per pair decode
# and per step decode (1 thread), so about 3 s each with both cores free. 20 images are 380 pair decodes and
# 172 step decodes: about half an hour there (an hour on one core; a GPU is orders of magnitude faster).
SECONDS_PER_PAIR = 3.0
SECONDS_PER_STEP = 3.0
DEFAULT_MAX_FRAMES = 20

MAX_FRAMES_HELP = (
    f"refuse collections of more images than this (default {DEFAULT_MAX_FRAMES}). --unordered decodes every "
    "ordered pair of images: N(N-1) pair decodes plus (N-1)(N-2)/2 next-best-view decodes, about 3 s each with "
    f"the full model on a 2-core CPU, so {DEFAULT_MAX_FRAMES} images take about half an hour, 32 about 75 min "
    "and 50 about 3 h (measured: bench/results/unordered_scaling.md). Raise it on a GPU"
)


def pair_count(n: int) -> int:
    return n * (n - 1)


def step_decode_count(n: int) -> int:
    """Decodes of the ordering stage: step 0, then N−1−k candidates at greedy step k = 1 … N−2."""
    return 1 + (n - 1) * (n - 2) // 2 if n >= 2 else 0


def estimate_seconds(n: int) -> float:
    """Full-size model on a 2-core CPU (see the constants above)."""
    return SECONDS_PER_PAIR * pair_count(n) + SECONDS_PER_STEP * step_decode_count(n)


def format_duration(seconds: float) -> str:
    """``"25 min"``, or hours with one decimal from 90 minutes on."""
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


# ----------------------------------------------------------------------------- graph and scores
def complete_pair_list(n: int) -> list[tuple[int, int]]:
    """The official symmetrised complete graph: (i, j) for i > j (i, then j ascending), then all swapped."""
    lower = [(i, j) for i in range(n) for j in range(i)]
    return lower + [(j, i) for i, j in lower]


def pair_score(conf1: torch.Tensor, conf2: torch.Tensor) -> torch.Tensor:
    """conf1, conf2 [B, H, W] (≥ 1) → [B]: mean (c − 1)/c of each map, the two means added (float32)."""

    def certainty(c: torch.Tensor) -> torch.Tensor:
        return ((c - 1) / c).flatten(1).mean(dim=1)

    return certainty(conf1.float()) + certainty(conf2.float())


def beats(score: float, best: float | None) -> bool:
    """The official candidate rule: a running best that starts at 0 and is replaced only by a strictly greater
    score. Candidates are scanned in ascending index, so ties go to the lowest index; ≤ 0 or NaN never wins."""
    return bool(score > (0.0 if best is None else best))


def next_best(scores: Sequence[float]) -> int | None:
    """Position of the winning score under ``beats`` (None if none beats 0)."""
    best, where = None, None
    for k, s in enumerate(scores):
        if beats(s, best):
            best, where = s, k
    return where


def first_max(matrix: np.ndarray) -> tuple[int, int]:
    """Position of the maximum read row by row; on an exact tie the first one (lowest row, then column)."""
    flat = int(np.argmax(matrix))  # argmax returns the first occurrence
    row, col = divmod(flat, matrix.shape[1])
    return row, col


# ----------------------------------------------------------------------------- forward passes
def encode_all(model: Spann3R, imgs: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """imgs [N, 3, H, W] → encoder tokens [N, P, C] and positions [N, P, 2], in chunks of ``batch``."""
    chunks = [model.encode(imgs[start : start + batch].to(model.device)) for start in range(0, imgs.shape[0], batch)]
    return torch.cat([enc for enc, _ in chunks]), torch.cat([pos for _, pos in chunks])


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def score_pairs(
    model: Spann3R,
    enc: torch.Tensor,
    pos: torch.Tensor,
    pairs: Sequence[tuple[int, int]],
    batch: int,
    keep: Iterable[tuple[int, int]] = (),
) -> tuple[np.ndarray, dict[tuple[int, int], PairOutput]]:
    """Plain DUSt3R on ``pairs`` (view 1 = enc[i], view 2 = enc[j], no memory), ``batch`` pairs per forward.

    Returns the score matrix [N, N] (entries of pairs not listed stay 0) and the full outputs of ``keep``."""
    n = enc.shape[0]
    keep = set(keep)
    matrix = np.zeros((n, n), dtype=np.float32)
    kept: dict[tuple[int, int], PairOutput] = {}
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        v1 = torch.tensor([i for i, _ in chunk], device=enc.device)
        v2 = torch.tensor([j for _, j in chunk], device=enc.device)
        dec1, dec2 = model.decode(enc[v1], pos[v1], enc[v2], pos[v2])  # 13 × [b, P, C]
        res1 = model.head(1, model.hooked(dec1))  # pts3d [b, H, W, 3], conf [b, H, W]
        res2 = model.head(2, model.hooked(dec2))
        scores = _to_numpy(pair_score(res1.conf, res2.conf))
        for b, (i, j) in enumerate(chunk):
            matrix[i, j] = scores[b]
            if (i, j) in keep:
                kept[(i, j)] = PairOutput(
                    _to_numpy(res1.pts3d[b]), _to_numpy(res2.pts3d[b]), _to_numpy(res1.conf[b]), _to_numpy(res2.conf[b])
                )
    return matrix, kept


@dataclass
class CandidateDecode:
    """The decode of view 1 (the image placed last, read through memory) against one candidate."""

    index: int  # candidate image (input index)
    score: float
    dec1_final: torch.Tensor  # [1, P, C_dec] normed final decoder tokens, view 1
    dec2_final: torch.Tensor  # [1, P, C_dec] same, view 2 (the candidate)
    pts1: torch.Tensor  # [1, H, W, 3] head 1: the placed image
    conf1: torch.Tensor  # [1, H, W]
    pts2: torch.Tensor  # [1, H, W, 3] head 2: the candidate, in view 1's frame
    conf2: torch.Tensor  # [1, H, W]


def decode_candidates(
    model: Spann3R,
    view1: torch.Tensor,
    pos1: torch.Tensor,
    enc: torch.Tensor,
    pos: torch.Tensor,
    candidates: Sequence[int],
    batch: int,
) -> tuple[list[float], CandidateDecode | None]:
    """Decode ``view1`` [P, C] against every candidate's encoder tokens, ``batch`` candidates per forward.

    Returns every score (in ``candidates`` order) and the winner: the running best starts at 0 and is
    replaced only by a strictly greater score, so ties go to the earlier candidate and a score ≤ 0 or NaN
    never wins (None if nothing beat 0)."""
    scores: list[float] = []
    best: CandidateDecode | None = None
    for start in range(0, len(candidates), batch):
        chunk = list(candidates[start : start + batch])
        idx = torch.tensor(chunk, device=enc.device)
        b = len(chunk)
        f1 = view1.unsqueeze(0).expand(b, -1, -1).contiguous()  # [b, P, C]
        p1 = pos1.unsqueeze(0).expand(b, -1, -1)
        dec1, dec2 = model.decode(f1, p1, enc[idx], pos[idx])
        res1 = model.head(1, model.hooked(dec1))
        res2 = model.head(2, model.hooked(dec2))
        chunk_scores = pair_score(res1.conf, res2.conf)  # [b]
        for c, image in enumerate(chunk):
            s = float(chunk_scores[c])
            scores.append(s)
            if beats(s, best.score if best else None):
                one = slice(c, c + 1)
                best = CandidateDecode(
                    image,
                    s,
                    dec1[-1][one].clone(),
                    dec2[-1][one].clone(),
                    res1.pts3d[one].clone(),
                    res1.conf[one].clone(),
                    res2.pts3d[one].clone(),
                    res2.conf[one].clone(),
                )
    return scores, best


# ----------------------------------------------------------------------------- the reconstruction, unit by unit
def unit_count(n: int, pair_batch: int = 4, candidate_batch: int = 4, encode_batch: int = 4) -> int:
    """Units of an ``n``-image collection: encode batches, pair batches, and per greedy step its candidate
    batches (step 0 has one candidate, step k ≥ 1 has N−1−k)."""
    if n < 2:
        return 0
    views = 1 + sum(ceil((n - 1 - k) / candidate_batch) for k in range(1, n - 1))
    return ceil(n / encode_batch) + ceil(pair_count(n) / pair_batch) + views


class UnorderedSteps:
    """One collection's reconstruction, advanced a unit at a time (see the module docstring).

    ``frames``: ``(name, RGB uint8 image or PreparedFrame)``. ``keep_pairs`` lists ordered pairs whose
    plain-DUSt3R outputs the result carries (``pair_outputs``)."""

    def __init__(
        self,
        engine_or_model: Engine | Spann3R,
        frames: Iterable[tuple[str, np.ndarray | PreparedFrame]],
        *,
        pair_batch: int = 4,
        candidate_batch: int = 4,
        encode_batch: int = 4,
        keep_pairs: Iterable[tuple[int, int]] = (),
        with_poses: bool = True,
    ):
        self.memory_cfg: MemoryConfig | None
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
        self.enc: torch.Tensor  # [N, P, C], set once every image is encoded
        self.pos: torch.Tensor  # [N, P, 2]
        # pairs
        self._pairs = complete_pair_list(n)
        self._keep_pairs = set(keep_pairs)
        self.pair_conf = np.zeros((n, n), dtype=np.float32)
        self.pair_outputs: dict[tuple[int, int], PairOutput] = {}
        self.initial_pair: tuple[int, int]  # set when the pair scores are complete
        # views (greedy ordering)
        self.memory: SpatialMemory  # created with the initial pair
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
        self.timings[{"encode": "encode_s", "pairs": "pairs_s", "views": "order_s"}[stage]] += time.perf_counter() - t0

    def _encode_unit(self) -> None:
        start = self.stage_done
        imgs = torch.stack([f.img for f in self.frames[start : start + self.encode_batch]])  # [b, 3, H, W]
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
        chunk = self._pairs[start : start + self.pair_batch]
        scores, kept = score_pairs(self.model, self.enc, self.pos, chunk, self.pair_batch, self._keep_pairs)
        for i, j in chunk:
            self.pair_conf[i, j] = scores[i, j]
        self.pair_outputs.update(kept)
        self.stage_done = start + len(chunk)
        if self.stage_done == len(self._pairs):
            row, col = self.initial_pair = first_max(self.pair_conf)
            log.info("initial pair (%d, %d), score %.5f", row, col, self.pair_conf[row, col])
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
                assert self._query is not None  # every step after step 0 has the previous step's K2
                view1, zeroed = self.memory.read(self._query)  # fused = read(query) + query
                self._step_view1, self._step_zeroed = view1, float(zeroed)
                self._step_candidates = list(self.remaining)
            self._step_next, self._step_scores, self._step_best = 0, [], None
        chunk = self._step_candidates[self._step_next : self._step_next + self.candidate_batch]
        assert self._step_view1 is not None
        scores, best = decode_candidates(
            self.model, self._step_view1, self.pos[placed], self.enc, self.pos, chunk, self.candidate_batch
        )
        # batches are scanned in candidate order: a later batch's winner must be strictly better (ties → earlier)
        if best is not None and beats(best.score, self._step_best.score if self._step_best else None):
            self._step_best = best
        self._step_scores.extend(scores)
        self._step_next += len(chunk)
        self.stage_done += len(chunk)
        if self._step_next == len(self._step_candidates):
            self._place_winner(placed)

    def _place_winner(self, placed: int) -> None:
        step, best, candidates = self._step, self._step_best, self._step_candidates
        if best is None:
            raise UnorderedError(
                f"next-best view at step {step}: no candidate scored above 0 (scores {self._step_scores}); "
                "the confidences are degenerate"
            )
        if step > 0:
            self.nbv_all[step - 1, candidates] = self._step_scores
            self.nbv_best[step - 1] = best.score
            log.debug("next-best view %d: image %d, score %.5f", step, best.index, best.score)
        # the winner's decode becomes a streaming step: keys, value, memory write; K2 is the next query
        (decision,), k2 = memorize(
            self.model,
            [self.memory],
            self.enc[placed].unsqueeze(0),
            best.dec1_final,
            self.enc[best.index].unsqueeze(0),
            best.dec2_final,
            best.pts1,
        )
        self._query = k2[0]
        self.finals.append(
            FrameOutput.from_numpy(
                step, "final", _to_numpy(best.pts1[0]), _to_numpy(best.conf1[0]), self.frames[placed].colors
            )
        )
        self.previews.append(
            FrameOutput.from_numpy(
                step + 1, "preview", _to_numpy(best.pts2[0]), _to_numpy(best.conf2[0]), self.frames[best.index].colors
            )
        )
        self.traces.append(MemoryTrace.from_write(step, decision, self._step_zeroed))
        self.order.append(best.index)
        self.remaining.remove(best.index)
        self._step += 1
        self._step_view1 = self._step_best = None
        if self._step == self.n - 1:
            self.stage = "done"
            del self.enc, self.pos, self.memory  # device memory goes back before finish()
            self._query = None

    # ------------------------------------------------------------------ result
    def finish(self) -> UnorderedResult:
        """Focal and poses (CPU only, no model) → the result."""
        if not self.done:
            raise RuntimeError(f"{self.units_total - self.units_done} units have not run yet")
        t0 = time.perf_counter()
        last = self.previews[-1]  # the last frame's final output is its preview
        finals = [*self.finals, last.as_final()]
        rec = assemble(finals, self.traces, [self.names[i] for i in self.order], self.with_poses)
        timings = dict(self.timings, poses_s=time.perf_counter() - t0)
        timings["total_s"] = sum(timings.values())
        return UnorderedResult(
            rec,
            np.array(self.order, dtype=np.int32),
            list(self.names),
            self.pair_conf,
            self.initial_pair,
            self.nbv_best,
            self.nbv_all,
            self.previews,
            self.pair_outputs,
            timings,
        )


def reconstruct_unordered(
    engine_or_model: Engine | Spann3R,
    frames: Iterable[tuple[str, np.ndarray | PreparedFrame]],
    *,
    pair_batch: int = 4,
    candidate_batch: int = 4,
    encode_batch: int = 4,
    keep_pairs: Iterable[tuple[int, int]] = (),
    progress: Progress | None = None,
    with_poses: bool = True,
) -> UnorderedResult:
    """Reconstruct a collection of ``(name, RGB uint8 image or PreparedFrame)`` in the order the model picks:
    every unit of ``UnorderedSteps`` in a row. ``keep_pairs`` lists ordered pairs whose plain-DUSt3R outputs
    are returned (``pair_outputs``)."""
    run = UnorderedSteps(
        engine_or_model,
        frames,
        pair_batch=pair_batch,
        candidate_batch=candidate_batch,
        encode_batch=encode_batch,
        keep_pairs=keep_pairs,
        with_poses=with_poses,
    )
    while not run.done:
        stage, total = run.stage, run.stage_total
        run.run_unit()
        if progress:  # a stage's last unit moves the run on to the next stage
            progress(stage, run.stage_done if run.stage == stage else total, total)
    return run.finish()


__all__ = [
    "DEFAULT_MAX_FRAMES",
    "MAX_FRAMES_HELP",
    "SECONDS_PER_PAIR",
    "SECONDS_PER_STEP",
    "PairOutput",
    "UnorderedError",
    "UnorderedResult",
    "UnorderedSteps",
    "beats",
    "complete_pair_list",
    "estimate_seconds",
    "first_max",
    "format_duration",
    "next_best",
    "pair_count",
    "pair_score",
    "reconstruct_unordered",
    "score_pairs",
    "step_decode_count",
    "unit_count",
]

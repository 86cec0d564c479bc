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
   Its decode is then a streaming step: keys K1 (raw tokens of ``order[k]``) and K2 (the winner), the value
   of head 1's pointmap, the memory write with the similarity check; K2 is the next query.

Outputs are those of streaming on the images in ``order`` (finals in the chosen order, all in the camera
frame of ``order[0]``), plus the order, the pair matrix and the next-best-view scores. Pair and candidate
decodes are independent forward passes and run in batches.

Cost for N images: N encodes, N(N−1) pair decodes, 1 + (N−1)(N−2)/2 step decodes (step 0 and every
candidate), N−1 value encodes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .engine import Engine, FrameOutput, MemoryTrace
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

    def arrays(self) -> dict[str, np.ndarray]:
        """The ordered mode's npz layout plus ``order``, ``pair_conf`` and the selection scores."""
        out = self.reconstruction.arrays()
        out.update(
            order=self.order.astype(np.int32), input_names=np.array(self.input_names),
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
def encode_all(model: Spann3R, imgs: torch.Tensor, batch: int, progress: Progress | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """imgs [N, 3, H, W] → encoder tokens [N, P, C] and positions [N, P, 2], in chunks of ``batch``."""
    tokens, positions = [], []
    n = imgs.shape[0]
    for start in range(0, n, batch):
        enc, pos = model.encode(imgs[start: start + batch].to(model.device))
        tokens.append(enc)
        positions.append(pos)
        if progress:
            progress("encode", min(start + batch, n), n)
    return torch.cat(tokens), torch.cat(positions)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def score_pairs(model: Spann3R, enc: torch.Tensor, pos: torch.Tensor, pairs: Sequence[tuple[int, int]],
                batch: int, keep: Iterable[tuple[int, int]] = (), progress: Progress | None = None
                ) -> tuple[np.ndarray, dict[tuple[int, int], PairOutput]]:
    """Plain DUSt3R on ``pairs`` (view 1 = enc[i], view 2 = enc[j], no memory), ``batch`` pairs per forward.

    Returns the score matrix [N, N] (entries of pairs not listed stay 0) and the full outputs of ``keep``."""
    n = enc.shape[0]
    keep = set(keep)
    matrix = np.zeros((n, n), dtype=np.float32)
    kept: dict[tuple[int, int], PairOutput] = {}
    for start in range(0, len(pairs), batch):
        chunk = pairs[start: start + batch]
        v1 = torch.tensor([i for i, _ in chunk], device=enc.device)
        v2 = torch.tensor([j for _, j in chunk], device=enc.device)
        dec1, dec2 = model.decode(enc[v1], pos[v1], enc[v2], pos[v2])  # 13 × [b, P, C]
        res1 = model.head(1, model.hooked(dec1))  # pts3d [b, H, W, 3], conf [b, H, W]
        res2 = model.head(2, model.hooked(dec2))
        scores = _to_numpy(pair_score(res1.conf, res2.conf))
        for b, (i, j) in enumerate(chunk):
            matrix[i, j] = scores[b]
            if (i, j) in keep:
                kept[(i, j)] = PairOutput(_to_numpy(res1.pts3d[b]), _to_numpy(res2.pts3d[b]),
                                          _to_numpy(res1.conf[b]), _to_numpy(res2.conf[b]))
        if progress:
            progress("pairs", start + len(chunk), len(pairs))
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


def decode_candidates(model: Spann3R, view1: torch.Tensor, pos1: torch.Tensor, enc: torch.Tensor,
                      pos: torch.Tensor, candidates: Sequence[int], batch: int,
                      progress: Callable[[int], None] | None = None
                      ) -> tuple[list[float], CandidateDecode | None]:
    """Decode ``view1`` [P, C] against every candidate's encoder tokens, ``batch`` candidates per forward.

    Returns every score (in ``candidates`` order) and the winner: the running best starts at 0 and is
    replaced only by a strictly greater score, so ties go to the earlier candidate and a score ≤ 0 or NaN
    never wins (None if nothing beat 0)."""
    scores: list[float] = []
    best: CandidateDecode | None = None
    for start in range(0, len(candidates), batch):
        chunk = list(candidates[start: start + batch])
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
                best = CandidateDecode(image, s, dec1[-1][one].clone(), dec2[-1][one].clone(),
                                       res1.pts3d[one].clone(), res1.conf[one].clone(),
                                       res2.pts3d[one].clone(), res2.conf[one].clone())
        if progress:
            progress(b)
    return scores, best


# ----------------------------------------------------------------------------- the reconstruction
def _prepared(frames: Iterable[tuple[str, np.ndarray | PreparedFrame]]) -> tuple[list[str], list[PreparedFrame]]:
    names, prepared = [], []
    for name, frame in frames:
        names.append(name)
        prepared.append(frame if isinstance(frame, PreparedFrame) else prepare(frame))
    return names, prepared




@torch.inference_mode()
def reconstruct_unordered(engine_or_model: Engine | Spann3R,
                          frames: Iterable[tuple[str, np.ndarray | PreparedFrame]], *,
                          pair_batch: int = 4, candidate_batch: int = 4, encode_batch: int = 4,
                          keep_pairs: Iterable[tuple[int, int]] = (), progress: Progress | None = None,
                          with_poses: bool = True) -> UnorderedResult:
    """Reconstruct a collection of ``(name, RGB uint8 image or PreparedFrame)`` in the order the model picks.

    ``keep_pairs`` lists ordered pairs whose plain-DUSt3R outputs are returned (``pair_outputs``)."""
    if isinstance(engine_or_model, Engine):
        model, memory_cfg = engine_or_model.model, engine_or_model.memory_cfg
    else:
        model, memory_cfg = engine_or_model.eval(), None
    names, prepared = _prepared(frames)
    n = len(prepared)
    if n < 2:
        raise UnorderedError(f"an unordered collection needs at least two images, got {n}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    imgs = torch.stack([f.img for f in prepared])  # [N, 3, H, W]
    enc, pos = encode_all(model, imgs, encode_batch, progress)  # [N, P, C], [N, P, 2]
    t1 = time.perf_counter()
    timings["encode_s"] = t1 - t0

    pair_conf, pair_outputs = score_pairs(model, enc, pos, complete_pair_list(n), pair_batch, keep_pairs, progress)
    row, col = first_max(pair_conf)
    t2 = time.perf_counter()
    timings["pairs_s"] = t2 - t1
    log.info("initial pair (%d, %d), score %.5f", row, col, pair_conf[row, col])

    memory = SpatialMemory(model.norm_q, model.norm_k, model.norm_v, model.cfg.num_patches, memory_cfg)
    order = [row]
    remaining = [i for i in range(n) if i != row]
    nbv_best = np.full(max(n - 2, 0), np.nan, dtype=np.float32)
    nbv_all = np.full((max(n - 2, 0), n), np.nan, dtype=np.float32)
    finals: list[FrameOutput] = []
    previews: list[FrameOutput] = []
    traces: list[MemoryTrace] = []
    query: torch.Tensor | None = None  # K2 of the previous step [P, C]
    views_done, views_total = 0, step_decode_count(n)

    def count_views(k: int) -> None:
        nonlocal views_done
        views_done += k
        if progress:
            progress("views", views_done, views_total)

    for step in range(n - 1):
        placed = order[-1]
        if step == 0:  # streaming step 0: no memory yet, view 1 = raw tokens, the initial pair's column
            view1, zeroed, candidates = enc[placed], None, [col]
        else:
            view1, zeroed_t = memory.read(query)  # fused = read(query) + query
            zeroed, candidates = float(zeroed_t), remaining
        scores, best = decode_candidates(model, view1, pos[placed], enc, pos, candidates, candidate_batch,
                                         count_views)
        if best is None:
            raise UnorderedError(
                f"next-best view at step {step}: no candidate scored above 0 (scores {scores}); "
                "the confidences are degenerate")
        if step > 0:
            nbv_all[step - 1, candidates] = scores
            nbv_best[step - 1] = best.score
        # the winner's decode becomes a streaming step (same order as Engine._decode_step)
        k1 = model.keys(1, enc[placed].unsqueeze(0), best.dec1_final)  # [1, P, C]
        k2 = model.keys(2, enc[best.index].unsqueeze(0), best.dec2_final)
        value = model.encode_value(best.pts1)  # [1, P, C]
        decision = memory.write(k1[0], value[0] + k1[0])
        query = k2[0]
        finals.append(FrameOutput(step, "final", _to_numpy(best.pts1[0]), _to_numpy(best.conf1[0]),
                                  prepared[placed].colors))
        previews.append(FrameOutput(step + 1, "preview", _to_numpy(best.pts2[0]), _to_numpy(best.conf2[0]),
                                    prepared[best.index].colors))
        traces.append(MemoryTrace.from_write(step, decision, zeroed))
        order.append(best.index)
        remaining.remove(best.index)
        if step > 0:
            log.debug("next-best view %d: image %d, score %.5f", step, best.index, best.score)
    last = previews[-1]  # the last frame's final output is its preview
    finals.append(FrameOutput(last.index, "final", last.pts3d, last.conf, last.colors))
    t3 = time.perf_counter()
    timings["order_s"] = t3 - t2

    rec = assemble(finals, traces, [names[i] for i in order], with_poses)
    timings["total_s"] = time.perf_counter() - t0
    return UnorderedResult(rec, np.array(order, dtype=np.int32), names, pair_conf, (row, col), nbv_best, nbv_all,
                           previews, pair_outputs, timings)


__all__ = [
    "DEFAULT_MAX_FRAMES", "MAX_FRAMES_HELP", "SECONDS_PER_PAIR", "SECONDS_PER_STEP", "PairOutput", "UnorderedError",
    "UnorderedResult", "beats", "complete_pair_list", "estimate_seconds", "first_max", "format_duration",
    "next_best", "pair_count", "pair_score", "reconstruct_unordered", "score_pairs", "step_decode_count",
]

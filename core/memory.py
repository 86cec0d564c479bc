"""Spann3R's spatial memory: working + long-term memory of key/value tokens, for one stream.

Behaviour equals the official ``SpatialMemory`` in eval mode (see the golden reference README):
- read: softmax(norm_q(q)·norm_k(K)ᵀ/√D), entries strictly below ``attn_thresh`` zeroed and rows renormalised,
  ``out = A·norm_v(V) + q``; every memory token's ``attn`` grows by its column sum of A.
- write with a similarity check: skip when the mean position-wise cosine to one of the last ``wm`` frames of
  keys is strictly above ``sim_thresh``; else append, with ``count`` (+1 for every older token), ``wm``/``lm``
  bookkeeping and a prune to the ``top_k`` tokens of largest attn/count once ``lm`` exceeds the budget.

Differences that do not change results: buffers are preallocated (no concatenation per write) and the
per-token LayerNorms/unit-normalisations are computed once when a token is written rather than at every read
(they act on each token independently). The one host sync per step is the skip decision (a Python branch on
a tensor comparison); everything else stays on the device until the engine copies results out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import MemoryConfig


@dataclass
class WriteDecision:
    """What one write attempt did (the golden ``trace_*`` of one step)."""

    similarity: float | None  # None when the memory was empty
    skipped: bool
    pruned: bool
    mem_tokens: int
    wm: int
    lm: int


class SpatialMemory:
    def __init__(
        self,
        norm_q: nn.LayerNorm,
        norm_k: nn.LayerNorm,
        norm_v: nn.LayerNorm,
        num_patches: int,
        cfg: MemoryConfig | None = None,
    ):
        self.cfg = cfg or MemoryConfig()
        self.norm_q, self.norm_k, self.norm_v = norm_q, norm_k, norm_v
        self.P = num_patches
        if 0 < self.cfg.long_mem_size < self.cfg.work_mem_size * num_patches:
            raise ValueError(
                f"long_mem_size ({self.cfg.long_mem_size}) must be 0 or at least work_mem_size x tokens "
                f"per frame ({self.cfg.work_mem_size * num_patches}): a prune keeps the working memory"
            )
        self.dim = norm_k.normalized_shape[0]
        w = norm_k.weight
        self.device, self.dtype = w.device, w.dtype
        self.n = 0  # tokens in memory
        self.wm = 0  # frames in working memory
        self.lm = 0  # tokens in long-term memory
        self.layout = 0  # bumped whenever rows move (prune, forget, load): earlier rows are no longer where they were
        self._alloc(self._initial_capacity())

    # ------------------------------------------------------------------ storage
    def _initial_capacity(self) -> int:
        # largest size before a prune brings it back to top_k
        return self.cfg.long_mem_size + (self.cfg.work_mem_size + 2) * self.P

    def _alloc(self, cap: int) -> None:
        z = lambda *s: torch.zeros(*s, device=self.device, dtype=self.dtype)
        self.key_unit = z(cap, self.dim)  # keys / ‖keys‖ (similarity check)
        self.key_norm = z(cap, self.dim)  # norm_k(keys) (read)
        self.value_norm = z(cap, self.dim)  # norm_v(values) (read)
        self.count = z(cap)  # writes since the token was written
        self.attn = z(cap)  # accumulated read attention

    def _grow(self, need: int) -> None:
        old = (self.key_unit, self.key_norm, self.value_norm, self.count, self.attn)
        self._alloc(max(need, 2 * self.key_unit.shape[0]))
        for new, prev in zip((self.key_unit, self.key_norm, self.value_norm, self.count, self.attn), old):
            new[: self.n] = prev[: self.n]

    @property
    def capacity(self) -> int:
        return self.key_unit.shape[0]

    def __len__(self) -> int:
        return self.n

    # ------------------------------------------------------------------ read
    def read(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query [P, D] → (fused [P, D], fraction of attention entries removed by the threshold, a 0-d tensor)."""
        n = self.n
        aff = self.norm_q(query) @ self.key_norm[:n].T / (self.dim**0.5)
        attn = aff.softmax(dim=-1)
        removed = attn < self.cfg.attn_thresh
        attn = attn.masked_fill(removed, 0.0)
        attn = attn / attn.sum(dim=-1, keepdim=True)
        self.attn[:n] += attn.sum(dim=0)
        return attn @ self.value_norm[:n] + query, removed.float().mean()

    # ------------------------------------------------------------------ write
    def similarity(self, key: torch.Tensor) -> torch.Tensor | None:
        """Max over the last ``wm`` key frames of the mean position-wise cosine with ``key`` [P, D]."""
        if self.n == 0:
            return None
        frames = self.key_unit[self.n - self.wm * self.P : self.n].view(self.wm, self.P, self.dim)
        corr = torch.einsum("pc,tpc->tp", F.normalize(key, dim=-1), frames)
        return corr.mean(dim=-1).max()

    def write(self, key: torch.Tensor, value: torch.Tensor) -> WriteDecision:
        """Try to write one frame: key [P, D], value [P, D] (the official stores value + key; pass that)."""
        sim_t = self.similarity(key)
        sim = None if sim_t is None else float(sim_t)  # host sync: the skip is a branch
        if sim is not None and sim > self.cfg.sim_thresh:
            return WriteDecision(sim, True, False, self.n, self.wm, self.lm)
        self._append(key, value)
        pruned = False
        self.wm += 1
        if self.wm > self.cfg.work_mem_size:
            self.wm -= 1
            if self.cfg.long_mem_size == 0:  # no long-term memory: forget the oldest frame
                self._keep(torch.arange(self.P, self.n, device=self.device))
            else:
                self.lm += self.P
        if self.lm > self.cfg.long_mem_size:
            self._prune()
            pruned = True
            self.lm = self.cfg.top_k - self.wm * self.P
        return WriteDecision(sim, False, pruned, self.n, self.wm, self.lm)

    def _append(self, key: torch.Tensor, value: torch.Tensor) -> None:
        n, P = self.n, key.shape[0]
        if n + P > self.capacity:
            self._grow(n + P)
        self.count[:n] += 1
        self.key_unit[n : n + P] = F.normalize(key, dim=-1)
        self.key_norm[n : n + P] = self.norm_k(key)
        self.value_norm[n : n + P] = self.norm_v(value)
        self.count[n : n + P] = 0
        self.attn[n : n + P] = 0
        self.n = n + P

    def _prune(self) -> None:
        n = self.n
        weights = self.attn[:n] / self.count[:n]
        weights = weights.masked_fill(self.count[:n] < self.cfg.protect_below, 1e8)
        # Same call shape as the official ([B, T, 1], dim=1): the order of the kept tokens (protected block
        # first, then descending weight) decides later similarity checks, so it is reproduced exactly.
        keep = torch.topk(weights.view(1, n, 1), self.cfg.top_k, dim=1).indices.view(-1)
        self._keep(keep)

    def _keep(self, idx: torch.Tensor) -> None:
        m = idx.numel()
        for buf in (self.key_unit, self.key_norm, self.value_norm, self.count, self.attn):
            buf[:m] = buf[idx]  # advanced indexing copies before the write
        self.n = m
        self.layout += 1

    # ------------------------------------------------------------------ snapshot
    def state_tensors(self) -> dict[str, torch.Tensor]:
        n = self.n
        return {
            "key_unit": self.key_unit[:n],
            "key_norm": self.key_norm[:n],
            "value_norm": self.value_norm[:n],
            "count": self.count[:n],
            "attn": self.attn[:n],
        }

    def rows(self, start: int) -> dict[str, torch.Tensor]:
        """The rows written since row ``start`` of the three large buffers (rows only move when ``layout`` changes;
        ``count`` and ``attn`` change at every step and are in ``state_tensors``)."""
        return {name: getattr(self, name)[start : self.n] for name in ("key_unit", "key_norm", "value_norm")}

    def load_tensors(self, tensors: dict[str, torch.Tensor], n: int, wm: int, lm: int, config: dict) -> None:
        """Restore the state written by ``state_tensors`` (see ``core.snapshot``)."""
        if MemoryConfig(**config) != self.cfg:
            raise ValueError("snapshot was written with a different memory configuration")
        if n > self.capacity:
            self._alloc(n + (self.cfg.work_mem_size + 2) * self.P)
        for name in ("key_unit", "key_norm", "value_norm", "count", "attn"):
            t = tensors[name]
            if t.shape[0] != n:
                raise ValueError(f"snapshot tensor {name} has {t.shape[0]} rows, expected {n}")
            getattr(self, name)[:n] = t.to(self.device, self.dtype)
        self.n, self.wm, self.lm = n, wm, lm
        self.layout += 1


__all__ = ["SpatialMemory", "WriteDecision"]

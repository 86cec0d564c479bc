"""Spatial memory against a plain, concatenating implementation of the README's rules, on random tokens.

The reference below is deliberately naive (torch.cat on every write, LayerNorms at every read, exactly the
order of operations the README describes) so that our preallocated, pre-normalised memory is checked against
the behaviour, not against itself."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spann3r.core.config import MemoryConfig
from spann3r.core.memory import SpatialMemory

P, D = 4, 16


class NaiveMemory:
    def __init__(self, norms, cfg: MemoryConfig):
        self.nq, self.nk, self.nv = norms
        self.cfg = cfg
        self.K = self.V = self.count = self.attn = None
        self.wm = self.lm = 0

    def read(self, q):
        A = torch.softmax(self.nq(q) @ self.nk(self.K).T / D**0.5, dim=-1)
        A = torch.where(self.cfg.attn_thresh > A, torch.zeros_like(A), A)
        A = A / A.sum(-1, keepdim=True)
        self.attn = self.attn + A.sum(0)
        return A @ self.nv(self.V) + q

    def write(self, k, v):
        if self.K is not None:
            frames = self.K[-self.wm * P :].reshape(self.wm, P, D)
            sim = (F.normalize(k, dim=-1)[None] * F.normalize(frames, dim=-1)).sum(-1).mean(-1).max()
            if sim > self.cfg.sim_thresh:
                return "skip"
            self.count = torch.cat([self.count + 1, torch.zeros(P)])
            self.attn = torch.cat([self.attn, torch.zeros(P)])
            self.K, self.V = torch.cat([self.K, k]), torch.cat([self.V, v])
        else:
            self.K, self.V, self.count, self.attn = k, v, torch.zeros(P), torch.zeros(P)
        self.wm += 1
        if self.wm > self.cfg.work_mem_size:
            self.wm = self.cfg.work_mem_size
            self.lm += P
        if self.lm > self.cfg.long_mem_size:
            w = self.attn / self.count
            w[self.count < self.cfg.work_mem_size + 5] = 1e8
            idx = torch.topk(w[None, :, None], self.cfg.long_mem_size, dim=1).indices.view(-1)
            self.K, self.V, self.count, self.attn = self.K[idx], self.V[idx], self.count[idx], self.attn[idx]
            self.lm = self.cfg.long_mem_size - self.wm * P
            return "prune"
        return "write"


def make_norms(seed):
    g = torch.Generator().manual_seed(seed)
    norms = []
    for eps in (1e-5, 1e-5, 1e-5):
        ln = nn.LayerNorm(D, eps=eps)
        with torch.no_grad():
            ln.weight.copy_(1 + 0.1 * torch.randn(D, generator=g))
            ln.bias.copy_(0.1 * torch.randn(D, generator=g))
        norms.append(ln)
    return norms


@pytest.mark.parametrize(
    "cfg",
    [
        MemoryConfig(long_mem_size=24, work_mem_size=2, attn_thresh=0.02, sim_thresh=0.8),
        MemoryConfig(long_mem_size=40, work_mem_size=3, attn_thresh=5e-4, sim_thresh=0.95),
    ],
)
def test_matches_naive_reference(cfg):
    torch.manual_seed(0)
    norms = make_norms(1)
    ours = SpatialMemory(*norms, num_patches=P, cfg=cfg)
    ref = NaiveMemory(norms, cfg)
    prev = torch.randn(P, D)
    outcomes = []
    with torch.no_grad():
        for step in range(60):
            # fresh keys, and every 7th step a near-repeat of the previous one so that skips happen
            key = prev + 0.05 * torch.randn(P, D) if step % 7 == 3 else torch.randn(P, D)
            prev = key
            value = torch.randn(P, D)
            if step > 0:
                q = torch.randn(P, D)
                fused, _ = ours.read(q)
                torch.testing.assert_close(fused, ref.read(q), rtol=1e-5, atol=1e-5)
            decision = ours.write(key, value)
            expected = ref.write(key, value)
            outcomes.append(expected)
            assert decision.skipped == (expected == "skip"), step
            assert decision.pruned == (expected == "prune"), step
            assert (decision.mem_tokens, decision.wm, decision.lm) == (ref.K.shape[0], ref.wm, ref.lm), step
            n = ours.n
            torch.testing.assert_close(ours.count[:n], ref.count)
            torch.testing.assert_close(ours.attn[:n], ref.attn, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(ours.key_unit[:n], F.normalize(ref.K, dim=-1), rtol=1e-5, atol=1e-6)
    # the scenario exercised every branch
    assert {"skip", "prune", "write"} <= set(outcomes)


def test_skip_changes_nothing_but_attention():
    norms = make_norms(2)
    mem = SpatialMemory(*norms, num_patches=P)
    key = torch.randn(P, D)
    with torch.no_grad():
        mem.write(key, torch.randn(P, D))
        before = {k: v.clone() for k, v in mem.state_tensors().items()}
        d = mem.write(key * 2.0, torch.randn(P, D))  # same direction: cosine 1
    assert d.skipped and d.similarity == pytest.approx(1.0, abs=1e-6)
    for k, v in mem.state_tensors().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_first_write_has_no_similarity():
    mem = SpatialMemory(*make_norms(3), num_patches=P)
    with torch.no_grad():
        d = mem.write(torch.randn(P, D), torch.randn(P, D))
    assert d.similarity is None and not d.skipped and (d.mem_tokens, d.wm, d.lm) == (P, 1, 0)


def test_grows_beyond_initial_capacity():
    cfg = MemoryConfig(long_mem_size=400, work_mem_size=1, sim_thresh=1.5)  # never skips, never prunes
    mem = SpatialMemory(*make_norms(4), num_patches=P, cfg=cfg)
    mem._alloc(8)  # start small to force growth
    keys = [torch.randn(P, D) for _ in range(5)]
    with torch.no_grad():
        for k in keys:
            mem.write(k, torch.randn(P, D))
    assert mem.n == 5 * P and mem.capacity >= 5 * P
    torch.testing.assert_close(mem.key_unit[: mem.n], F.normalize(torch.cat(keys), dim=-1))

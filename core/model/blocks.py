"""Transformer building blocks of the CroCo/DUSt3R backbone: 2-D RoPE, attention, MLP, encoder and decoder blocks.

Parameter names follow the official checkpoint (``attn.qkv``, ``cross_attn.projq`` ...), so the state dict
loads without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-6


class RoPE2D(nn.Module):
    """2-D rotary embedding: the first half of each head's channels rotates with the token's row, the second
    half with its column; inside each half channel j pairs with j + quarter ("rotate half" layout).

    cos/sin tables are computed in float32 exactly as CroCo does and cached per (length, device)."""

    def __init__(self, base: float = 100.0, max_positions: int = 64):
        super().__init__()
        self.base = base
        # Table length never changes a value (angles are element-wise), so one fixed length avoids reading
        # max(pos) back from the device on every call.
        self.max_positions = max_positions
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _tables(self, dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (dim, device)
        if key not in self._cache:
            inv_freq = 1.0 / (self.base ** (torch.arange(0, dim, 2, device=device).float() / dim))
            t = torch.arange(self.max_positions, device=device, dtype=inv_freq.dtype)
            freqs = torch.einsum("i,j->ij", t, inv_freq)
            freqs = torch.cat((freqs, freqs), dim=-1)  # [length, dim]
            self._cache[key] = (freqs.cos(), freqs.sin())
        return self._cache[key]

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    def _rope1d(self, x: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x [B, H, N, d], pos [B, N] integer coordinates
        cos = F.embedding(pos, cos)[:, None]
        sin = F.embedding(pos, sin)[:, None]
        return x * cos + self._rotate_half(x) * sin

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        # x [B, H, N, head_dim], pos [B, N, 2] = (row, col)
        half = x.size(-1) // 2
        cos, sin = self._tables(half, x.device)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        rows, cols = x.chunk(2, dim=-1)
        return torch.cat((self._rope1d(rows, pos[..., 0], cos, sin), self._rope1d(cols, pos[..., 1], cos, sin)), dim=-1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q·kᵀ/√d)·v over [B, H, N, d] tensors.

    On the CPU in float32 (the exact path) this is the explicit matmul-softmax-matmul of the official code: it is
    bit-identical to the reference outputs there, where the fused kernel's different summation order would move
    the read threshold decisions of long streams. Under autocast (the bf16/fp16 precision modes) and on other
    devices the fused kernel (flash / memory-efficient) is used."""
    if q.device.type == "cpu" and not torch.is_autocast_enabled("cpu"):
        attn = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
        return attn.softmax(dim=-1) @ v
    return F.scaled_dot_product_attention(q, k, v)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf) form
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Self-attention with one fused qkv projection split as [q | k | v], each [heads | head_dim]."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D | None):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, H, N, d]
        if self.rope is not None:
            q, k = self.rope(q, pos), self.rope(k, pos)
        x = attend(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class CrossAttention(nn.Module):
    """Cross-attention with separate q/k/v projections; RoPE on queries (own positions) and keys (other view's)."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D | None):
        super().__init__()
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: torch.Tensor, y: torch.Tensor, xpos: torch.Tensor, ypos: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        M = y.shape[1]
        h, d = self.num_heads, C // self.num_heads
        q = self.projq(x).reshape(B, N, h, d).transpose(1, 2)
        k = self.projk(y).reshape(B, M, h, d).transpose(1, 2)
        v = self.projv(y).reshape(B, M, h, d).transpose(1, 2)
        if self.rope is not None:
            q, k = self.rope(q, xpos), self.rope(k, ypos)
        x = attend(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Pre-norm ViT block (encoder and value encoder)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: RoPE2D | None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads, rope)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), pos)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """CroCo decoder block: self-attention, cross-attention to the (LayerNorm'd) other view, MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: RoPE2D):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads, rope)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.cross_attn = CrossAttention(dim, num_heads, rope)
        self.norm3 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, x: torch.Tensor, y: torch.Tensor, xpos: torch.Tensor, ypos: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), xpos)
        y = self.norm_y(y)
        x = x + self.cross_attn(self.norm2(x), y, xpos, ypos)
        return x + self.mlp(self.norm3(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens (DUSt3R's ``PatchEmbedDust3R``: a plain conv, no norm).

    Tokens are row-major; each token's position is (row, col)."""

    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.proj(x)  # [B, C, h, w]
        B, _, h, w = x.shape
        return x.flatten(2).transpose(1, 2), grid_positions(B, h, w, x.device)


def grid_positions(batch: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """[B, h*w, 2] integer (row, col) of each token, row-major."""
    pos = torch.cartesian_prod(torch.arange(h, device=device), torch.arange(w, device=device))
    return pos[None].expand(batch, -1, -1)

"""Spann3R: a DUSt3R network (ViT-L encoder, two ViT-B decoders, two DPT heads) plus the memory encoders.

Attribute names equal the official checkpoint's state-dict keys (``dust3r.enc_blocks.0.attn.qkv.weight``,
``value_encoder.3.mlp.fc2.weight``, ``attn_head_1.0.weight`` ...), so ``spann3r.pth`` loads with strict=True.
This module holds the network only; the spatial memory and the streaming order live in ``core.memory`` and
``core.engine``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import ModelConfig
from .blocks import LN_EPS, Block, DecoderBlock, PatchEmbed, RoPE2D
from .dpt import PointmapHead


@dataclass
class HeadOutput:
    pts3d: torch.Tensor  # [B, H, W, 3]
    conf: torch.Tensor  # [B, H, W]


class DUSt3R(nn.Module):
    """The asymmetric CroCo stereo network of DUSt3R (``AsymmetricCroCo3DStereo``) at inference."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        rope = RoPE2D(cfg.rope_base, max_positions=max(cfg.grid, 64))
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.enc_embed_dim)
        self.enc_blocks = nn.ModuleList(
            [Block(cfg.enc_embed_dim, cfg.enc_num_heads, cfg.mlp_ratio, rope) for _ in range(cfg.enc_depth)]
        )
        self.enc_norm = nn.LayerNorm(cfg.enc_embed_dim, eps=LN_EPS)
        self.decoder_embed = nn.Linear(cfg.enc_embed_dim, cfg.dec_embed_dim)
        self.dec_blocks = nn.ModuleList(
            [DecoderBlock(cfg.dec_embed_dim, cfg.dec_num_heads, cfg.mlp_ratio, rope) for _ in range(cfg.dec_depth)]
        )
        self.dec_blocks2 = nn.ModuleList(
            [DecoderBlock(cfg.dec_embed_dim, cfg.dec_num_heads, cfg.mlp_ratio, rope) for _ in range(cfg.dec_depth)]
        )
        self.dec_norm = nn.LayerNorm(cfg.dec_embed_dim, eps=LN_EPS)
        # Only used by CroCo pre-training; kept so the official checkpoint loads strictly.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dec_embed_dim))
        token_dims = (cfg.enc_embed_dim,) + (cfg.dec_embed_dim,) * 3
        head_args = (token_dims, cfg.dpt_layer_dims, cfg.dpt_feature_dim, cfg.dpt_last_dim, cfg.dpt_hooks)
        self.downstream_head1 = PointmapHead(*head_args)
        self.downstream_head2 = PointmapHead(*head_args)

    def encode(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """img [B, 3, H, W] in [-1, 1] → tokens [B, N, enc_dim], positions [B, N, 2]."""
        x, pos = self.patch_embed(img)
        for blk in self.enc_blocks:
            x = blk(x, pos)
        return self.enc_norm(x), pos

    def decode(
        self, f1: torch.Tensor, pos1: torch.Tensor, f2: torch.Tensor, pos2: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Both views updated simultaneously from the previous depth.

        Returns per view ``[input (enc_dim), depth 1, ..., depth D-1, dec_norm(depth D)]`` (D + 1 entries)."""
        out1, out2 = [f1], [f2]
        x1, x2 = self.decoder_embed(f1), self.decoder_embed(f2)
        for blk1, blk2 in zip(self.dec_blocks, self.dec_blocks2):
            x1, x2 = blk1(x1, x2, pos1, pos2), blk2(x2, x1, pos2, pos1)
            out1.append(x1)
            out2.append(x2)
        out1[-1], out2[-1] = self.dec_norm(out1[-1]), self.dec_norm(out2[-1])
        return out1, out2

    def hooked(self, dec: list[torch.Tensor]) -> list[torch.Tensor]:
        """The decoder-list entries a DPT head reads (0, 6, 9, 12 for the official model)."""
        return [dec[i] for i in self.cfg.dpt_hooks]

    def head(self, which: int, hooked: list[torch.Tensor]) -> torch.Tensor:
        """Raw DPT output [B, 4, H, W] of head 1 or 2 from the hooked decoder tokens, always in float32: the heads
        regress metric-scale coordinates and their exp/confidence activations, which bf16 would coarsen (the
        official code casts the head inputs to float32 too)."""
        head = self.downstream_head1 if which == 1 else self.downstream_head2
        grid = (self.cfg.grid, self.cfg.grid)
        with torch.autocast(device_type=hooked[0].device.type, enabled=False):
            return head.raw([h.float() for h in hooked], grid)


class KeyHead(nn.Sequential):
    """Linear → GELU → Linear on [encoder tokens | final decoder tokens]; keys ``attn_head_N.{0,2}``."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim))


class Spann3R(nn.Module):
    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        cfg = cfg or ModelConfig()
        self.cfg = cfg
        D = cfg.enc_embed_dim
        self.dust3r = DUSt3R(cfg)
        # Memory value encoder: ViT blocks without RoPE over the patch-embedded pointmap of view 1.
        self.value_encoder = nn.ModuleList(
            [Block(D, cfg.enc_num_heads, cfg.mlp_ratio, rope=None) for _ in range(cfg.value_depth)]
        )
        self.value_norm = nn.LayerNorm(D, eps=LN_EPS)
        self.value_out = nn.Linear(D, D)
        self.pos_patch_embed = PatchEmbed(cfg.patch_size, D)
        # Read normalisations: torch's default eps (1e-5), unlike the blocks.
        self.norm_q = nn.LayerNorm(D)
        self.norm_k = nn.LayerNorm(D)
        self.norm_v = nn.LayerNorm(D)
        self.attn_head_1 = KeyHead(D + cfg.dec_embed_dim, D)
        self.attn_head_2 = KeyHead(D + cfg.dec_embed_dim, D)

    # --- pieces of one streaming step (the order is the engine's business) ---
    def encode(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dust3r.encode(img)

    def decode(self, f1, pos1, f2, pos2):
        return self.dust3r.decode(f1, pos1, f2, pos2)

    def hooked(self, dec: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.dust3r.hooked(dec)

    def keys(self, which: int, enc_tokens: torch.Tensor, dec_final: torch.Tensor) -> torch.Tensor:
        head = self.attn_head_1 if which == 1 else self.attn_head_2
        return head(torch.cat((enc_tokens, dec_final), dim=-1))

    def head_raw(self, which: int, hooked: list[torch.Tensor]) -> torch.Tensor:
        return self.dust3r.head(which, hooked)

    def head(self, which: int, hooked: list[torch.Tensor]) -> HeadOutput:
        """Activated output of DPT head 1 or 2 from ``hooked(dec)``."""
        return HeadOutput(*PointmapHead.activate(self.head_raw(which, hooked)))

    def value_embed(self, pts3d: torch.Tensor) -> torch.Tensor:
        """pts3d [B, H, W, 3] (activated, view 1) → value tokens before the value encoder."""
        x, _ = self.pos_patch_embed(pts3d.permute(0, 3, 1, 2))
        return x

    def encode_value(self, pts3d: torch.Tensor) -> torch.Tensor:
        x = self.value_embed(pts3d)
        for blk in self.value_encoder:
            x = blk(x, None)
        return self.value_out(self.value_norm(x))

    @property
    def device(self) -> torch.device:
        return self.value_out.weight.device

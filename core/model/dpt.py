"""DPT head of DUSt3R (``downstream_head1/2.dpt``): four token maps → fused 4-channel map at full resolution.

Module names mirror the official checkpoint, including the two names of each ``scratch`` 3x3 conv
(``layer{i}_rn`` and ``layer_rn.{i-1}`` are one module, so the state dict lists both)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # not in-place: the skip adds the un-activated input
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FeatureFusionBlock(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)  # unused by refinenet4 (single input), still in the checkpoint
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Scratch(nn.Module):
    def __init__(self, layer_dims: tuple[int, ...], features: int):
        super().__init__()
        for i, dim in enumerate(layer_dims, start=1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(dim, features, 3, padding=1, bias=False))
        self.layer_rn = nn.ModuleList([getattr(self, f"layer{i}_rn") for i in range(1, len(layer_dims) + 1)])
        self.refinenet1 = FeatureFusionBlock(features)
        self.refinenet2 = FeatureFusionBlock(features)
        self.refinenet3 = FeatureFusionBlock(features)
        self.refinenet4 = FeatureFusionBlock(features)


class DPT(nn.Module):
    def __init__(
        self,
        token_dims: tuple[int, ...],
        layer_dims: tuple[int, ...],
        features: int,
        last_dim: int,
        hooks: tuple[int, ...],
        out_channels: int = 4,
    ):
        super().__init__()
        self.hooks = hooks
        d0, d1, d2, d3 = layer_dims
        self.act_postprocess = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(token_dims[0], d0, 1), nn.ConvTranspose2d(d0, d0, kernel_size=4, stride=4)),
                nn.Sequential(nn.Conv2d(token_dims[1], d1, 1), nn.ConvTranspose2d(d1, d1, kernel_size=2, stride=2)),
                nn.Sequential(nn.Conv2d(token_dims[2], d2, 1)),
                nn.Sequential(nn.Conv2d(token_dims[3], d3, 1), nn.Conv2d(d3, d3, 3, stride=2, padding=1)),
            ]
        )
        self.scratch = Scratch(layer_dims, features)
        self.head = nn.Sequential(
            nn.Conv2d(features, last_dim, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(last_dim, last_dim, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(last_dim, out_channels, 1),
        )

    def forward(self, tokens: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        # tokens: the 4 hooked entries, each [B, h*w, C_i]
        h, w = grid
        # [B, h*w, C] → [B, C, h, w] as a channels-last view: oneDNN picks its kernels from these strides, and
        # this layout is the one that reproduces the official outputs bit for bit
        maps = [t.reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2) for t in tokens]
        maps = [post(m) for post, m in zip(self.act_postprocess, maps)]
        maps = [rn(m) for rn, m in zip(self.scratch.layer_rn, maps)]
        s = self.scratch
        path = s.refinenet4(maps[3])[:, :, : maps[2].shape[2], : maps[2].shape[3]]
        path = s.refinenet3(path, maps[2])
        path = s.refinenet2(path, maps[1])
        path = s.refinenet1(path, maps[0])
        return self.head(path)  # [B, 4, H, W]


class PointmapHead(nn.Module):
    """``downstream_headN``: DPT + activation (``exp`` depth mode for points, ``exp`` conf mode, vmin 1)."""

    def __init__(self, token_dims, layer_dims, features, last_dim, hooks):
        super().__init__()
        self.dpt = DPT(token_dims, layer_dims, features, last_dim, hooks)

    def raw(self, dec_tokens: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        """DPT output before activation, [B, 4, H, W]; ``dec_tokens`` holds only the hooked entries."""
        return self.dpt([t.float() for t in dec_tokens], grid)

    @staticmethod
    def activate(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = raw.permute(0, 2, 3, 1)
        xyz = fmap[..., 0:3]
        d = xyz.norm(dim=-1, keepdim=True)
        pts3d = xyz / d.clip(min=1e-8) * torch.expm1(d)
        conf = 1 + fmap[..., 3].exp()
        return pts3d, conf  # [B, H, W, 3], [B, H, W]

"""The reconstruction file (``OUT.npz`` of ``spann3r reconstruct`` and ``spann3r stream``) as a record.

numpy only, no torch: the Python streaming client writes the same file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .engine import MemoryTrace


@dataclass
class Reconstruction:
    """Per-frame results in the order fed; the layout of ``OUT.npz``."""

    pts3d: np.ndarray  # [N, H, W, 3] float32, global frame (camera of frame 0)
    conf: np.ndarray  # [N, H, W] float32
    colors: np.ndarray  # [N, H, W, 3] uint8
    poses: np.ndarray  # [N, 4, 4] float32 camera-to-world (NaN where invalid)
    pose_valid: np.ndarray  # [N] bool
    focal: float
    skipped: np.ndarray  # [N] bool: frame not written to memory (the last frame never is)
    mem_tokens: np.ndarray  # [N] int32: memory tokens after the frame's step
    names: list[str] = field(default_factory=list)
    traces: list[MemoryTrace] = field(default_factory=list)

    def arrays(self) -> dict[str, Any]:
        return {
            "pts3d": self.pts3d.astype(np.float32),
            "conf": self.conf.astype(np.float32),
            "colors": self.colors.astype(np.uint8),
            "poses": self.poses.astype(np.float32),
            "pose_valid": self.pose_valid.astype(bool),
            "focal": np.float32(self.focal),
            "skipped": self.skipped.astype(bool),
            "mem_tokens": self.mem_tokens.astype(np.int32),
            "frame_names": np.array(self.names),
        }

    def save_npz(self, path: str | Path) -> None:
        np.savez_compressed(path, **self.arrays())

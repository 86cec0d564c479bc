"""Results of a stream → the ``OUT.npz`` layout of ``spann3r reconstruct`` (``core.records.Reconstruction``).

No torch: poses and focal are the server's, pointmaps as sent (``full`` encoding)."""

from __future__ import annotations

import numpy as np

from ..core.records import Reconstruction
from ..server.encoding import decode_map, pose_matrix
from ..server.protocol import FinishedMsg, FrameData, MemoryInfo, ResultMsg


class Recording:
    """Collects the finals (``full`` encoding) and memory decisions of one stream."""

    def __init__(self) -> None:
        self.finals: dict[int, tuple[FrameData, dict]] = {}  # frame index → (message, decoded arrays)
        self.memory: dict[int, MemoryInfo] = {}  # frame index written by the step → its memory decisions
        self.focal: float | None = None
        self.finished = False

    def add(self, msg) -> None:
        if isinstance(msg, ResultMsg):
            if msg.final is not None:
                self._final(msg.final)
            if msg.memory is not None:
                self.memory[msg.memory.frame_index] = msg.memory
        elif isinstance(msg, FinishedMsg):
            self.finished = True
            if msg.final is not None:
                self._final(msg.final)

    def _final(self, f: FrameData) -> None:
        if f.map.encoding != "full":
            raise ValueError("recording a stream needs the 'full' output encoding")
        self.finals[f.index] = (f, decode_map(f.map))
        if f.focal is not None:
            self.focal = f.focal

    def reconstruction(self, names: dict[int, str] | None = None) -> Reconstruction:
        """Arrays in frame order; poses and focal as the server computed them (on float32 maps)."""
        if not self.finals:
            raise ValueError("no final pointmaps were received")
        order = sorted(self.finals)
        n = len(order)
        maps = [self.finals[i][1] for i in order]
        frames = [self.finals[i][0] for i in order]
        # a frame the memory never saw is "skipped"; the last frame's token count is the stream's final one
        skipped = np.ones(n, dtype=bool)
        tokens = np.zeros(n, dtype=np.int32)
        for m in self.memory.values():
            if m.frame_index < n:
                skipped[m.frame_index], tokens[m.frame_index] = m.skipped, m.mem_tokens
        if self.memory:
            tokens[n - 1] = self.memory[max(self.memory)].mem_tokens
        return Reconstruction(
            pts3d=np.stack([m["pts3d"] for m in maps]),
            conf=np.stack([m["conf"] for m in maps]),
            colors=np.stack([m["colors"] for m in maps]),
            poses=np.stack([pose_matrix(f.pose) for f in frames]),
            pose_valid=np.array([f.pose.valid for f in frames]),
            focal=self.focal if self.focal is not None else float("nan"),
            skipped=skipped,
            mem_tokens=tokens,
            names=[(names or {}).get(f.seq, f"seq{f.seq}") for f in frames],
        )

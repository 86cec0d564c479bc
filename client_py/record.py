"""Results of a stream → the ``OUT.npz`` layout of ``spann3r reconstruct`` (through ``core.reconstruct.assemble``)."""

from __future__ import annotations

import numpy as np

from ..core.engine import FrameOutput, MemoryTrace
from ..core.reconstruct import Reconstruction, assemble
from ..server.encoding import decode_map, pose_matrix
from ..server.protocol import FinishedMsg, FrameData, ResultMsg


class Recording:
    """Collects the finals (``full`` encoding) and memory decisions of one stream."""

    def __init__(self):
        self.finals: dict[int, tuple[FrameData, dict]] = {}
        self.traces: dict[int, MemoryTrace] = {}
        self.focal: float | None = None
        self.finished = False

    def add(self, msg) -> None:
        if isinstance(msg, ResultMsg):
            if msg.final is not None:
                self._final(msg.final)
            if msg.memory is not None:
                m = msg.memory
                self.traces[m.frame_index] = MemoryTrace(m.step, m.frame_index, m.similarity, m.skipped, m.pruned,
                                                         m.mem_tokens, m.wm, m.lm, m.attn_zeroed_frac)
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
        outs = [FrameOutput(i, "final", *(self.finals[i][1][k] for k in ("pts3d", "conf", "colors")))
                for i in order]
        labels = [(names or {}).get(self.finals[i][0].seq, f"seq{self.finals[i][0].seq}") for i in order]
        rec = assemble(outs, [self.traces[i] for i in sorted(self.traces)], labels, with_poses=False)
        rec.poses = np.stack([pose_matrix(self.finals[i][0].pose) for i in order])
        rec.pose_valid = np.array([self.finals[i][0].pose.valid for i in order])
        if self.focal is not None:
            rec.focal = self.focal
        return rec

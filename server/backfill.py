"""The scene so far for a watcher that joins a running session (``backfill`` messages, docs/protocol.md).

Policy: how dense and how large a backfill is (``keep_every``), and how many points go in one message. Mechanism:
reading a frozen copy of the session's export buffer in a thread, packing one chunk at a time, and queueing a
chunk only once the watcher's queue has drained, so live results always find room and nothing waits for it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .exports import ExportBuffer
from .protocol import Array, BackfillFrame, BackfillMsg, Pose, pack

if TYPE_CHECKING:
    from .connection import Connection
    from .sessions import Session

# 15 bytes a point (float32 xyz + rgb): ~1 MB a message, half of MAX_SERVER_MESSAGE_BYTES, and above the largest
# frame (224² points), so a chunk always holds whole frames
CHUNK_POINTS = 65_536
# what one watcher may be sent at most: about what the page holds for a long stream at its default detail
MAX_BACKFILL_POINTS = 2_000_000


def keep_every(stride: int, decimation: int, points: int, budget: int = MAX_BACKFILL_POINTS) -> int:
    """Keep every n-th point of the export buffer: as dense as the live stream's compact maps (1 pixel in stride²;
    the buffer already keeps 1 confident point in ``decimation``), and within ``budget`` points."""
    live_density = max(1, (stride * stride) // max(1, decimation))
    return max(live_density, math.ceil(points / budget))


@dataclass(frozen=True)
class FrameShare:
    index: int
    xyz: np.ndarray
    rgb: np.ndarray
    c2w: np.ndarray | None  # None when the pose is invalid


def frame_shares(export: ExportBuffer, every: int) -> list[FrameShare]:
    """Every frame of the buffer in frame order, its points thinned to every ``every``-th."""
    shares = []
    for i in sorted(export.points_by_frame):
        xyz, rgb = export.points_by_frame[i]
        c2w, valid = export.poses.get(i, (None, False))
        ok = valid and c2w is not None and bool(np.isfinite(c2w).all())
        shares.append(FrameShare(i, xyz[::every], rgb[::every], c2w if ok else None))
    return shares


def chunked(shares: list[FrameShare], chunk_points: int = CHUNK_POINTS) -> Iterator[list[FrameShare]]:
    """Whole frames in chunks of at most ``chunk_points`` points (a larger frame gets a chunk of its own)."""
    chunk: list[FrameShare] = []
    points = 0
    for share in shares:
        if chunk and points + len(share.xyz) > chunk_points:
            yield chunk
            chunk, points = [], 0
        chunk.append(share)
        points += len(share.xyz)
    if chunk:
        yield chunk


def _pose(c2w: np.ndarray | None) -> Pose:
    return Pose(c2w=[float(v) for v in c2w.reshape(-1)], valid=True) if c2w is not None else Pose(c2w=None, valid=False)


def backfill_bytes(chunk: list[FrameShare], number: int, chunks: int, every: int, focal: float | None) -> bytes:
    frames = [
        BackfillFrame(
            index=s.index,
            positions=Array.of(s.xyz.astype(np.float32)),
            colors=Array.of(s.rgb.astype(np.uint8)),
            pose=_pose(s.c2w),
        )
        for s in chunk
    ]
    msg = BackfillMsg(chunk=number, chunks=chunks, frames=frames, keep_every=every, focal=focal)
    return pack(msg)


def plan(export: ExportBuffer, stride: int) -> tuple[list[list[FrameShare]], int]:
    every = keep_every(stride, export.decimation, export.points)
    return list(chunked(frame_shares(export, every))), every


async def send_backfill(conn: Connection, session: Session) -> int:
    """Send ``conn`` (a watcher) the session's finals so far; returns the chunks sent. Stops when the connection
    closes or a reset starts a new stream (the watcher's view is cleared by the reset's ack)."""
    generation = session.generation
    export = session.export.frozen()  # later finals reach the watcher live
    if not export.points_by_frame:
        return 0
    chunks, every = await asyncio.to_thread(plan, export, session.settings.stride)
    focal = session.focal
    for number, chunk in enumerate(chunks):
        data = await asyncio.to_thread(backfill_bytes, chunk, number, len(chunks), every, focal)
        await conn.drained()  # one chunk queued at a time: the live results never wait behind the past
        if conn.closed or session.generation != generation:
            return number
        await conn.send(data)
    return len(chunks)

"""The persisted session, written and read in this one place: ``SessionRecord`` (the session's counters and
identity, JSON), the stream (core.snapshot: a head with everything small, and the memory's rows in segments) and
the export buffer (plain npz arrays, no pickle), as named blobs in a ``SessionStore`` (store.py).

Blobs of a session: ``record``, ``stream.head``, ``export.npz`` and ``rows.N`` (the memory rows, in the order the
record lists them). While a session streams, every ``persist_every`` frames the model thread copies what changed
(the rows written since the last copy, or all of them after a prune) and ``SessionPersistence`` commits it, off the
model thread; a snapshot on request or at shutdown is the same commit, forced. The store always holds a complete
state: commits are atomic, and one that depends on rows a failed commit should have written is skipped until a
full copy comes. Persisted state is removed when the session moves past what it can represent (a reset starts a
new stream, a finish ends it): a restart must never bring back a stream the client abandoned.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..core.snapshot import StreamCapture
from .results import Calibration
from .store import SessionStore

if TYPE_CHECKING:
    from .sessions import Session

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "spann3r-session/2"
RECORD, HEAD, EXPORT = "record", "stream.head", "export.npz"


@dataclass
class SessionRecord:
    """What the store keeps of a session besides its stream and export buffer (tokens only as hashes)."""

    id: str
    token_hash: str
    watch_hash: str
    settings: dict
    finished: bool
    frames_processed: int
    last_seq: int | None  # seq of the stream's last frame: frames accepted after it are not in the stored state
    seq_by_index: dict[int, int]
    calibration: Calibration | None
    frames_received: int
    frames_rejected: int
    dropped: dict[str, int]
    export_decimation: int
    rows: list[str] = field(default_factory=list)  # the blobs of the memory rows, in order

    def to_json(self) -> bytes:
        d = asdict(self)
        d["seq_by_index"] = {str(k): v for k, v in self.seq_by_index.items()}
        return json.dumps({"format": SNAPSHOT_FORMAT, **d}).encode()

    @classmethod
    def from_json(cls, data: bytes | str, session_id: str) -> SessionRecord:
        d = json.loads(data)
        if d.pop("format", None) != SNAPSHOT_FORMAT or d.get("id") != session_id:
            raise ValueError(f"the record of session {session_id} is not a session record of this format")
        d["seq_by_index"] = {int(k): v for k, v in d["seq_by_index"].items()}
        d["calibration"] = None if d["calibration"] is None else Calibration(**d["calibration"])
        return cls(**d)


@dataclass
class StoredSession:
    record: SessionRecord
    head: bytes
    rows: list[bytes]
    export: dict[str, np.ndarray]


def read_session(store: SessionStore, session_id: str) -> StoredSession:
    """Blocking: call from a thread."""
    blobs = store.get(session_id)
    if RECORD not in blobs:
        raise KeyError(f"session {session_id} has no stored record")
    record = SessionRecord.from_json(blobs[RECORD], session_id)
    with np.load(io.BytesIO(blobs[EXPORT]), allow_pickle=False) as z:
        export = {k: z[k] for k in z.files}
    return StoredSession(record, blobs[HEAD], [blobs[name] for name in record.rows], export)


def export_until(export: dict[str, np.ndarray], frames: int) -> dict[str, np.ndarray]:
    """The export arrays of the finals of frames below ``frames`` (a later final may already be in the buffer
    when the state of an earlier frame is stored)."""
    keep = export["frames"] < frames
    counts = export["counts"]
    bounds = np.concatenate([[0], np.cumsum(counts)])
    point_rows = np.concatenate(
        [np.arange(bounds[i], bounds[i + 1]) for i in np.flatnonzero(keep)] or [np.zeros(0, np.int64)]
    )
    n_poses = max(0, min(len(export["valid"]), frames))
    return {
        "xyz": export["xyz"][point_rows],
        "rgb": export["rgb"][point_rows],
        "frames": export["frames"][keep],
        "counts": counts[keep],
        "c2w": export["c2w"][:n_poses],
        "valid": export["valid"][:n_poses],
    }


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    out = io.BytesIO()
    np.savez(out, **arrays)  # type: ignore[arg-type]
    return out.getvalue()


@dataclass(frozen=True)
class CaptureRequest:
    """Copy a stream's state after its step: the rows since ``since`` (None: all)."""

    since: tuple[int, int] | None


@dataclass(frozen=True)
class StreamPoint:
    """Where the captured stream stands: its frame count, its last frame's seq, the generation it belongs to."""

    frames: int
    last_seq: int | None
    generation: int
    finished: bool = False


@dataclass
class PersistCosts:
    """Running totals, for metrics and the benchmark."""

    commits: int = 0
    bytes: int = 0
    capture_s: float = 0.0  # model-thread time of the copies
    commit_s: float = 0.0  # serialising + writing (persistence thread)


class SessionPersistence:
    """One session's persisted state: what the store holds (event loop side) and its commits, one at a time,
    in the order their states were captured."""

    def __init__(
        self, store: SessionStore, session_id: str, every: int, frames: int = 0, rows: tuple[str, ...] | list[str] = ()
    ):
        self.store, self.session_id, self.every = store, session_id, every
        self.frames = frames  # frames of the latest captured state (the store holds it once its commit is done)
        self.position: tuple[int, int] | None = None  # memory row position of the latest capture
        self.rows: list[str] = list(rows)  # row blobs the latest capture needs
        self.committed_rows: set[str] = set(rows)
        self._next_row = 1 + max((int(r.split(".")[1]) for r in rows), default=-1)
        self.min_generation = 0  # captures of older generations are never committed (a reset invalidated them)
        self.broken = False  # a commit failed: the rows of later incremental captures are incomplete
        self.lock = asyncio.Lock()  # FIFO: commits in capture order, deletes after the commits before them
        self.tasks: set[asyncio.Task] = set()
        self.costs = PersistCosts()

    def due(self, frames_after: int, finished: bool) -> CaptureRequest | None:
        """Whether the step that brings the stream to ``frames_after`` frames should be captured."""
        if finished or frames_after - self.frames < self.every:
            return None
        return CaptureRequest(self.position)

    def taken(self, capture: StreamCapture, seconds: float) -> tuple[str, list[str]]:
        """Account a capture (event loop, right after the model thread made it): its row blob and the rows it
        needs."""
        self.costs.capture_s += seconds
        self.position = capture.position
        name = f"rows.{self._next_row}"
        self._next_row += 1
        self.rows = [name] if capture.start == 0 else [*self.rows, name]
        self.frames = int(capture.meta["frames"])
        return name, list(self.rows)

    def submit(
        self, s: Session, capture: StreamCapture, seconds: float, point: StreamPoint, results_sent: Awaitable | None
    ) -> asyncio.Task:
        """Commit the capture once the results before it are in the session (its export buffer), off the
        model thread."""
        name, rows = self.taken(capture, seconds)
        task = asyncio.ensure_future(self._commit(s, capture, name, rows, point, results_sent))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _commit(
        self,
        s: Session,
        capture: StreamCapture,
        name: str,
        rows: list[str],
        point: StreamPoint,
        results_sent: Awaitable | None,
    ) -> int:
        async with self.lock:
            if results_sent is not None:
                await asyncio.wait([asyncio.ensure_future(results_sent)])
            if point.generation < self.min_generation:
                return 0
            if self.broken and capture.start != 0:
                return 0
            record = s.record(point.frames, point.last_seq)
            record.rows = rows
            export = s.export.arrays()
            if not point.finished:
                export = export_until(export, point.frames - 1)
            t0 = time.perf_counter()
            try:
                n = await asyncio.to_thread(self._write, record, capture, name, export)
            except Exception:
                self.broken = True
                log.exception("persisting session %s failed", self.session_id)
                raise
            self.broken = False
            self.costs.commits += 1
            self.costs.bytes += n
            self.costs.commit_s += time.perf_counter() - t0
            return n

    def _write(self, record: SessionRecord, capture: StreamCapture, name: str, export: dict[str, np.ndarray]) -> int:
        put = {name: capture.rows_bytes(), HEAD: capture.head_bytes(), EXPORT: _npz(export), RECORD: record.to_json()}
        drop = self.committed_rows - set(record.rows)
        n = self.store.commit(self.session_id, put, drop)
        self.committed_rows = set(record.rows)
        return n

    async def invalidate(self, generation: int) -> None:
        """Remove the stored state: captures of generations below ``generation`` are never committed (those
        queued before this call still run first, then are deleted)."""
        self.min_generation = max(self.min_generation, generation)
        async with self.lock:
            await asyncio.to_thread(self.store.delete, self.session_id)
            self.frames, self.position, self.rows, self.committed_rows = 0, None, [], set()

    async def drain(self) -> None:
        """Wait for the commits submitted so far."""
        if self.tasks:
            await asyncio.wait(list(self.tasks))

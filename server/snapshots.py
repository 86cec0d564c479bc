"""The persisted session, written and read in this one place: ``SessionRecord`` (the session's counters and
identity, JSON), the stream (core.snapshot: a head with everything small, and the memory's rows in segments) and
the export buffer (plain npz arrays, no pickle), as named blobs in a ``SessionStore`` (store.py).

Blobs of a session: ``record``, ``stream.head``, ``rows.N`` (the memory rows) and ``export.N`` (the export
buffer's finals in segments of consecutive frames), the last two in the order the record lists them. While a
session streams, every ``persist_every`` frames the model thread copies what changed (the rows written since the
last copy, or all of them after a prune) and ``SessionPersistence`` commits it with the finals added since, off
the model thread; a snapshot on request or at shutdown is the same commit, forced. The store always holds a
complete state: commits are atomic, and one that depends on blobs a failed commit should have written is skipped
until a full copy comes. Persisted state is removed when the session moves past what it can represent (a reset
starts a new stream, a finish ends it): a restart must never bring back a stream the client abandoned.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..core.snapshot import StreamCapture
from .exports import ExportBuffer
from .results import Calibration
from .store import Owner, OwnershipLost, SessionStore

if TYPE_CHECKING:
    from .sessions import Session

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "spann3r-session/2"
RECORD, HEAD = "record", "stream.head"


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
    export: list[str] = field(default_factory=list)  # the blobs of the export buffer, in frame order
    export_upto: int = 0  # the export segments hold the finals of the frames below this
    pose_track: dict | None = None  # the stream's pose track (core.camera.PoseTrack.state), None before frame 0's final

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
    segments = []
    for name in record.export:
        with np.load(io.BytesIO(blobs[name]), allow_pickle=False) as z:
            segments.append({k: z[k] for k in z.files})
    return StoredSession(record, blobs[HEAD], [blobs[name] for name in record.rows], merge_export(segments))


def export_segment(buf: ExportBuffer, lo: int, hi: int) -> dict[str, np.ndarray]:
    """The buffer's finals of the frames ``lo <= i < hi`` (points and poses), as plain arrays. Each frame's arrays
    are replaced, never changed in place, when the buffer decimates: references taken here stay valid."""
    frames = sorted(i for i in buf.points_by_frame if lo <= i < hi)
    posed = sorted(i for i in buf.poses if lo <= i < hi)
    points = [buf.points_by_frame[i] for i in frames]
    return {
        "xyz": np.concatenate([x for x, _ in points]) if points else np.zeros((0, 3), np.float32),
        "rgb": np.concatenate([c for _, c in points]) if points else np.zeros((0, 3), np.uint8),
        "frames": np.array(frames, np.int64),
        "counts": np.array([len(x) for x, _ in points], np.int64),
        "pose_frames": np.array(posed, np.int64),
        "c2w": np.array([buf.poses[i][0] for i in posed], np.float64).reshape(-1, 4, 4),
        "valid": np.array([buf.poses[i][1] for i in posed], bool),
    }


def merge_export(segments: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Segments of consecutive frames → the arrays of ``ExportBuffer.arrays`` (its ``load_arrays`` reads them)."""

    def cat(key: str, empty: np.ndarray) -> np.ndarray:
        return np.concatenate([g[key] for g in segments]) if segments else empty

    posed = cat("pose_frames", np.zeros(0, np.int64))
    n = int(posed.max()) + 1 if len(posed) else 0
    c2w, valid = np.full((n, 4, 4), np.nan), np.zeros(n, bool)
    c2w[posed], valid[posed] = cat("c2w", np.zeros((0, 4, 4))), cat("valid", np.zeros(0, bool))
    return {
        "xyz": cat("xyz", np.zeros((0, 3), np.float32)),
        "rgb": cat("rgb", np.zeros((0, 3), np.uint8)),
        "frames": cat("frames", np.zeros(0, np.int64)),
        "counts": cat("counts", np.zeros(0, np.int64)),
        "c2w": c2w,
        "valid": valid,
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
    pose_track: dict | None = None  # the stream's pose track at that point (results.StreamCameras.track_state)


@dataclass
class PersistCosts:
    """Running totals, for metrics and the benchmark."""

    commits: int = 0
    bytes: int = 0
    capture_s: float = 0.0  # model-thread time of the copies
    commit_s: float = 0.0  # serialising + writing (persistence thread)


@dataclass
class ExportProgress:
    """What the store holds of the export buffer: segments of the finals below ``upto``, at ``decimation``."""

    names: list[str] = field(default_factory=list)
    upto: int = 0
    decimation: int | None = None


class SessionPersistence:
    """One session's persisted state: what the store holds (event loop side) and its commits, one at a time,
    in the order their states were captured."""

    def __init__(
        self,
        store: SessionStore,
        session_id: str,
        every: int,
        restored: SessionRecord | None = None,
        fence: Owner | None = None,
        on_lost: Callable[[], None] | None = None,
    ):
        self.store, self.session_id, self.every = store, session_id, every
        # in a cluster: the claim every write is fenced with, and what to do once another worker took over
        self.fence, self.on_lost = fence, on_lost
        self.lost = False
        r = restored
        self.frames = r.frames_processed if r else 0  # frames of the latest captured state
        self.position: tuple[int, int] | None = None  # memory row position of the latest capture (None: all rows)
        self.rows: list[str] = list(r.rows) if r else []  # row blobs the latest capture needs
        self.export = ExportProgress(list(r.export), r.export_upto, r.export_decimation) if r else ExportProgress()
        self.committed: set[str] = set(self.rows) | set(self.export.names)  # row and export blobs in the store
        self._next_blob = 1 + max((int(b.split(".")[1]) for b in self.committed), default=-1)
        self.min_generation = 0  # captures of older generations are never committed (a reset invalidated them)
        self.broken = False  # a commit failed: the blobs of later incremental commits are incomplete
        self.lock = asyncio.Lock()  # FIFO: commits in capture order, deletes after the commits before them
        self.tasks: set[asyncio.Task] = set()
        self.costs = PersistCosts()

    def _blob_name(self, kind: str) -> str:
        self._next_blob += 1
        return f"{kind}.{self._next_blob - 1}"

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
        name = self._blob_name("rows")
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

    def _export_part(self, buf: ExportBuffer, point: StreamPoint) -> tuple[str, dict[str, np.ndarray], ExportProgress]:
        """The export segment of this commit: the finals since the last one, or all of them when the buffer
        decimated since (or a commit failed)."""
        upto = max(point.frames if point.finished else point.frames - 1, 0)  # the last frame's final is not out
        e = self.export
        full = self.broken or e.decimation != buf.decimation or upto < e.upto
        name = self._blob_name("export")
        segment = export_segment(buf, 0 if full else e.upto, upto)
        return name, segment, ExportProgress([name] if full else [*e.names, name], upto, buf.decimation)

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
            if point.generation < self.min_generation or self.lost:
                return 0
            if self.broken and capture.start != 0:
                return 0
            export_name, segment, export = self._export_part(s.export, point)
            record = s.record(point.frames, point.last_seq, point.pose_track)
            record.rows, record.export, record.export_upto = rows, export.names, export.upto
            record.export_decimation = export.decimation or 1
            t0 = time.perf_counter()
            try:
                n = await asyncio.to_thread(self._write, record, capture, name, export_name, segment)
            except OwnershipLost:
                self._ownership_lost()
                return 0
            except Exception:
                self.broken = True
                log.exception("persisting session %s failed", self.session_id)
                raise
            self.broken, self.export = False, export
            self.costs.commits += 1
            self.costs.bytes += n
            self.costs.commit_s += time.perf_counter() - t0
            return n

    def _write(
        self,
        record: SessionRecord,
        capture: StreamCapture,
        rows_name: str,
        export_name: str,
        segment: dict[str, np.ndarray],
    ) -> int:
        put = {
            rows_name: capture.rows_bytes(),
            export_name: _npz(segment),
            HEAD: capture.head_bytes(),
            RECORD: record.to_json(),
        }
        live = set(record.rows) | set(record.export)
        n = self.store.commit(self.session_id, put, self.committed - live, fence=self.fence)
        self.committed = live
        return n

    async def invalidate(self, generation: int) -> None:
        """Remove the stored state: captures of generations below ``generation`` are never committed (those
        queued before this call still run first, then are deleted)."""
        self.min_generation = max(self.min_generation, generation)
        async with self.lock:
            if self.lost:
                return
            try:
                await asyncio.to_thread(self.store.delete, self.session_id, self.fence)
            except OwnershipLost:
                return self._ownership_lost()
            self.frames, self.position, self.rows, self.committed = 0, None, [], set()
            self.export = ExportProgress()

    def _ownership_lost(self) -> None:
        """Another worker claimed the session (this one was presumed dead): write nothing more, and let go."""
        if not self.lost:
            self.lost = True
            log.warning("session %s: taken over by another worker; this copy stops", self.session_id)
            if self.on_lost is not None:
                self.on_lost()

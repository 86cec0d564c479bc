"""Sessions: one stream's server-side state (tokens, settings, frame intake policy, outputs for export) and the
manager that creates, finds, evicts, snapshots and restores them.

A session lives on exactly one worker and in one process; its id is all a router needs to find it. Its
``StreamState`` (the spatial memory) is only ever touched on the worker's model thread; everything else here
is touched on the event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import secrets
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .auth import token_hash
from .exports import ExportBuffer
from .protocol import (
    CLOSE_DELETED,
    CLOSE_IDLE,
    CLOSE_SHUTDOWN,
    DroppedMsg,
    ResumeInfo,
    SessionLife,
    SessionSettings,
    SessionStats,
    pack,
)
from .results import StreamCameras
from .snapshots import SessionPersistence, SessionRecord, StoredSession, read_session
from .store import Owner, OwnershipLost, SessionStore, open_store

if TYPE_CHECKING:
    from ..core.engine import StreamState
    from ..core.preprocess import PreparedFrame
    from .connection import Connection
    from .metrics import Metrics
    from .protocol import FrameMsg
    from .settings import ServeSettings
    from .worker import Worker

log = logging.getLogger(__name__)


# results kept per session to send again to a stream connection that replaces another (a reconnect): a connection
# that broke (a network drop, a dead gateway in a cluster) may have swallowed those already sent, while the stream
# has moved past them. The clients' default window is 4 frames in flight, so at most that many are missing.
REPLAY_RESULTS = 4
CAPACITY_RETRY_AFTER_S = 30  # Retry-After of a capacity refusal when no session is due for release


class CapacityError(RuntimeError):
    """The server holds its maximum number of sessions; ``retry_after_s``: when a slot is expected to free."""

    def __init__(self, message: str, retry_after_s: int = CAPACITY_RETRY_AFTER_S):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class RawFrame:
    msg: FrameMsg
    received: float  # time.perf_counter() at arrival
    cancelled: bool = False  # superseded while decoding

    @property
    def seq(self) -> int:
        return self.msg.seq


@dataclass
class ReadyFrame:
    raw: RawFrame
    prepared: PreparedFrame
    decode_s: float
    ready_at: float
    background_units: int = 0  # the worker's count of job units done when this frame became ready


class RateLimiter:
    """Token bucket: ``rate`` frames per second, bursts of up to one second's worth."""

    def __init__(self, rate: float):
        self.rate, self.capacity = rate, max(1.0, rate)
        self.tokens, self.last = self.capacity, time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class StreamPhase(enum.Enum):
    """A session's stream: taking frames; finish requested (waiting frames still run, new ones are refused);
    finished (the last final is on its way). A reset starts a new stream in STREAMING."""

    STREAMING = "streaming"
    FINISHING = "finishing"
    FINISHED = "finished"


@dataclass(frozen=True)
class StepTicket:
    """One frame claimed for a model step, with what its result needs of the session at that moment (a reset
    or settings change while it runs must not change how it is reported)."""

    frame: ReadyFrame
    index: int  # frame index in the stream
    prev_seq: int | None  # seq of frame index − 1 (the final this step produces)
    generation: int
    settings: SessionSettings
    stream: StreamState
    cameras: StreamCameras  # the stream's, attached with it


class Session:
    def __init__(
        self,
        settings: SessionSettings,
        max_export_points: int,
        max_fps: float,
        session_id: str | None = None,
        token: str | None = None,
        watch_token: str | None = None,
    ):
        self.id = session_id or uuid.uuid4().hex
        self.token = token or secrets.token_urlsafe(24)  # returned once at creation, then forgotten
        self.watch_token = watch_token or secrets.token_urlsafe(24)
        self.token_hash, self.watch_hash = token_hash(self.token), token_hash(self.watch_token)
        self.settings = settings
        self.max_export_points = max_export_points
        self.rate = RateLimiter(max_fps)
        self.created = self.last_activity = time.monotonic()
        self.closed = False
        # the stream (made on the model thread) and its generation: bumped by reset
        self.stream: StreamState | None = None
        self.generation = 0
        self.frames_processed = 0  # frames of the current stream taken by the model
        self.phase = StreamPhase.STREAMING
        self.last_seq: int | None = None
        self.seq_by_index: dict[int, int] = {}
        self.cameras = StreamCameras()  # the stream's calibration and pose track (changed on the model thread)
        self.export = ExportBuffer(max_export_points)
        # frame intake (the policy acts on these three: undecoded, being decoded, decoded)
        self.buffer: deque[RawFrame] = deque()
        self.decoding: RawFrame | None = None
        self.ready: ReadyFrame | None = None
        self.ready_since: float | None = None  # when it first had a ready frame since its last step
        self.in_model = False
        self.posting = 0  # results in post-processing
        self.busy = False  # a reset / finish / snapshot runs on the model thread: keep frames out
        self._nth = 0
        self._replaced_ahead = False  # 'latest' replaced the frame decoded for the next step since the last step
        self.persistence: SessionPersistence | None = None  # its persisted state (with a store)
        self.restored = False  # restored from the store, no frame taken since (the hello says where it resumed)
        # counters
        self.frames_received = 0
        self.frames_rejected = 0
        self.dropped: dict[str, int] = {}
        # connections and the ordered output chain
        self.stream_conn: Connection | None = None
        self.orphaned_since: float | None = None  # when its stream connection went away (none since)
        self.watchers: set[Connection] = set()
        self.out_tail: asyncio.Future | None = None
        self.recent: deque[bytes] = deque(maxlen=REPLAY_RESULTS)  # the latest results sent, for a reconnect

    @property
    def finished(self) -> bool:
        """Finish requested: frames are refused until a reset."""
        return self.phase is not StreamPhase.STREAMING

    @property
    def life(self) -> SessionLife:
        """created (no stream connection yet, nothing restored), streaming, or finished."""
        if self.finished:
            return "finished"
        never_streamed = self.stream_conn is None and self.orphaned_since is None and self.frames_processed == 0
        return "created" if never_streamed else "streaming"

    # ------------------------------------------------------------------ stream life (event loop, no I/O)
    def attach_stream(self, stream, cameras: StreamCameras) -> None:
        """The stream made (or restored) on the model thread, and its cameras."""
        self.stream, self.cameras = stream, cameras

    def change_settings(self, settings: SessionSettings) -> None:
        self.settings = settings

    def reset_stream(self, stream) -> None:
        """Start a new stream: counters, frame indices and export restart; results of the old one still in
        post-processing no longer count (generation)."""
        self.generation += 1
        self.stream, self.cameras = stream, StreamCameras()
        self.frames_processed, self.phase, self._nth = 0, StreamPhase.STREAMING, 0
        self.last_seq = None  # a new stream: any seq goes again (a reset unbricks a huge seq)
        self.seq_by_index, self.ready_since = {}, None
        self.export = ExportBuffer(self.max_export_points)
        self.recent.clear()

    def request_finish(self) -> None:
        self.phase = StreamPhase.FINISHING

    def claim_finish(self) -> bool:
        """Whether the finish can run now (requested, not yet run, nothing left in the pipeline); claims it."""
        if self.phase is StreamPhase.FINISHING and self.pipeline_empty() and not self.busy and not self.closed:
            self.phase = StreamPhase.FINISHED
            return True
        return False

    def cancel_finish(self) -> None:
        """The finish could not run (too few frames after all): the stream takes frames again."""
        self.phase = StreamPhase.STREAMING

    @contextmanager
    def held(self) -> Iterator[None]:
        """Keep frames out of the model while a reset / snapshot runs on the model thread."""
        self.busy = True
        try:
            yield
        finally:
            self.busy = False

    # ------------------------------------------------------------------ frames through the pipeline
    def receive(self, seq: int) -> str | None:
        """Count a received frame and accept its seq; or the code of its refusal (``finished``: the stream
        takes no more frames; ``bad_seq``: not above the last accepted seq)."""
        self.frames_received += 1
        if self.finished:
            return "finished"
        if self.last_seq is not None and seq <= self.last_seq:
            return "bad_seq"
        self.last_seq = seq
        return None

    def next_to_decode(self) -> RawFrame | None:
        """The next waiting frame to decode, when none is decoded or decoding (one at a time keeps order)."""
        if self.closed or self.decoding is not None or self.ready is not None or not self.buffer:
            return None
        self.decoding = self.buffer.popleft()
        return self.decoding

    def decode_done(self, raw: RawFrame) -> bool:
        """A decode returned; False when its frame no longer counts (superseded, or the session closed)."""
        if self.decoding is raw:
            self.decoding = None
        return not (raw.cancelled or self.closed)

    def set_ready(self, frame: ReadyFrame) -> None:
        self.ready = frame
        if self.ready_since is None:  # a frame replacing another keeps its place in line (and in the fill wait)
            self.ready_since = frame.ready_at

    def claim_step(self) -> StepTicket | None:
        """Take the ready frame into a model step, atomically: the frame, its index and what its result needs.
        None when there is no ready frame (superseded since it was scheduled)."""
        frame, self.ready = self.ready, None
        if frame is None or self.closed:
            return None
        assert self.stream is not None  # attached before the session takes frames; only a removed one has none
        self.ready_since = None
        self._replaced_ahead = False
        self.restored = False
        index = self.frames_processed
        self.frames_processed += 1
        prev_seq = self.seq_by_index.get(index - 1)
        self.seq_by_index = {index: frame.raw.seq}
        self.in_model = True
        return StepTicket(frame, index, prev_seq, self.generation, self.settings, self.stream, self.cameras)

    def step_done(self, ok: bool) -> None:
        """The model step returned; a successful one starts its result's post-processing."""
        self.in_model = False
        if ok:
            self.posting += 1

    def result_done(self) -> None:
        self.posting -= 1

    def add_export(self, generation: int, item) -> None:
        """Add a final's export item (``results.ExportItem``) unless a reset started a new stream since."""
        if generation == self.generation:
            self.export.add(item.index, item.xyz, item.rgb, item.c2w, item.valid, every=item.every, take=True)

    def reject_counted(self) -> None:
        self.frames_rejected += 1

    # ------------------------------------------------------------------ intake policy (event loop, no I/O)
    @property
    def waiting(self) -> int:
        decoding = self.decoding is not None and not self.decoding.cancelled
        return len(self.buffer) + decoding + (self.ready is not None)

    def intake(self, raw: RawFrame) -> list[tuple[int, str]]:
        """Apply the frame policy to a newly accepted frame; returns the (seq, reason) of frames dropped."""
        s = self.settings
        if s.frame_policy == "every_nth":
            self._nth += 1
            if (self._nth - 1) % s.every_n:
                return [(raw.seq, "every_nth")]
        if s.frame_policy == "latest":
            # the newest frame replaces those not decoded yet, and the frame decoded (or decoding) for the next
            # step once per step: replacing it every time would decode each arriving frame only to drop it while
            # the session waits its turn, and under overload no frame would ever run. So a step costs two decodes
            # at most.
            dropped = [r.seq for r in self.buffer]
            self.buffer.clear()
            ahead = self.ready is not None or (self.decoding is not None and not self.decoding.cancelled)
            if ahead and not self._replaced_ahead:
                dropped += self.clear_waiting()
                self._replaced_ahead = True
            self.buffer.append(raw)
            return [(seq, "superseded") for seq in sorted(dropped)]
        if self.waiting >= s.queue_size:
            return [(raw.seq, "queue_full")]
        self.buffer.append(raw)
        return []

    def clear_waiting(self) -> list[int]:
        """Drop every frame not yet taken by the model; returns their seqs in order."""
        seqs = []
        if self.ready is not None:
            seqs.append(self.ready.raw.seq)
            self.ready = None
        if self.decoding is not None and not self.decoding.cancelled:  # stays set until its decode returns
            self.decoding.cancelled = True
            seqs.append(self.decoding.seq)
        seqs.extend(r.seq for r in self.buffer)
        self.buffer.clear()
        return sorted(seqs)

    def pipeline_empty(self) -> bool:
        return self.waiting == 0 and self.decoding is None and not self.in_model

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def attach_stream_conn(self, conn: Connection) -> Connection | None:
        """Make ``conn`` the stream connection (no longer an orphan); returns the one it replaces."""
        old, self.stream_conn = self.stream_conn, conn
        self.orphaned_since = None
        self.touch()
        return old

    def detach_stream_conn(self, conn: Connection) -> None:
        """``conn`` went away: if it was the stream connection, the session is an orphan from now on."""
        if self.stream_conn is conn:
            self.stream_conn = None
            self.orphaned_since = time.monotonic()

    def orphan_release_at(self, grace_s: float) -> float | None:
        """When an orphan is released (monotonic): ``grace_s`` after its stream left or its last REST use
        (an export after the stream closed); None while a stream connection is attached or never was."""
        if self.orphaned_since is None or self.stream_conn is not None:
            return None
        return max(self.orphaned_since, self.last_activity) + grace_s

    # ------------------------------------------------------------------ output
    async def broadcast(self, data: bytes, to_watchers: bool = True) -> None:
        if self.stream_conn is not None:
            await self.stream_conn.send(data)
        if to_watchers:
            for w in list(self.watchers):
                w.send_nowait(data)

    async def notify_dropped(self, dropped: list[tuple[int, str]], metrics: Metrics) -> None:
        for seq, reason in dropped:
            self.dropped[reason] = self.dropped.get(reason, 0) + 1
            metrics.frames_dropped.labels(reason).inc()
            await self.broadcast(pack(DroppedMsg(seq=seq, reason=reason)))

    def chain(self, produce, replayable: bool = False) -> asyncio.Future:
        """Send what the coroutine ``produce()`` returns after everything chained before it has been sent.
        Producers run concurrently (poses of consecutive frames in parallel); sending stays in order. A
        ``replayable`` message (a result) is kept among the ``recent`` ones a reconnecting stream gets again."""
        prev = self.out_tail
        generation = self.generation

        async def run():
            data = None
            try:
                data = await produce()  # producers report their own failures as messages
            except Exception:
                log.exception("session %s: producing a message failed", self.id)
            if prev is not None and not prev.done():  # (usually done: a wait costs a future and its callbacks)
                await asyncio.wait([prev])  # wait, never re-raise: one failure must not stall the chain
            if data is not None and not self.closed:
                if replayable and generation == self.generation:
                    self.recent.append(data)
                await self.broadcast(data)

        self.out_tail = asyncio.ensure_future(run())
        return self.out_tail

    def send_ordered(self, data: bytes) -> asyncio.Future:
        """Send ``data`` after every result already chained (acks come after the frames before them)."""

        async def produce():
            return data

        return self.chain(produce)

    async def close_connections(self, code: int, reason: str) -> None:
        conns = [c for c in [self.stream_conn, *self.watchers] if c is not None]
        self.stream_conn, self.watchers = None, set()
        await asyncio.gather(*(c.close(code, reason) for c in conns), return_exceptions=True)

    # ------------------------------------------------------------------ stats and persistence
    def stats(self, worker_id: str) -> SessionStats:
        return SessionStats(
            id=self.id,
            worker_id=worker_id,
            settings=self.settings,
            frames_received=self.frames_received,
            frames_processed=self.frames_processed,
            frames_dropped=dict(self.dropped),
            frames_rejected=self.frames_rejected,
            waiting=self.waiting,
            finished=self.finished,
            life=self.life,
            stream_connected=self.stream_conn is not None,
            watchers=len(self.watchers),
            idle_s=time.monotonic() - self.last_activity,
            focal=self.focal,
            export_points=self.export.points,
            export_decimation=self.export.decimation,
        )

    @property
    def focal(self) -> float | None:
        c = self.cameras.calibration
        return None if c is None else c.focal

    def record(self, frames: int, last_seq: int | None, pose_track: dict | None) -> SessionRecord:
        """What the store keeps of the session with a stream state of ``frames`` frames, the last one ``last_seq``
        (snapshots.py holds the format). Frames accepted after it are not in that state: a restored session
        takes seqs above ``last_seq`` again."""
        return SessionRecord(
            id=self.id,
            token_hash=self.token_hash,
            watch_hash=self.watch_hash,
            settings=self.settings.model_dump(),
            finished=self.finished,
            frames_processed=frames,
            last_seq=last_seq,
            seq_by_index={} if last_seq is None else {frames - 1: last_seq},
            calibration=self.cameras.calibration,
            pose_track=pose_track,
            frames_received=self.frames_received,
            frames_rejected=self.frames_rejected,
            dropped=dict(self.dropped),
            export_decimation=self.export.decimation,
        )

    @classmethod
    def from_record(cls, record: SessionRecord, export: dict, max_export_points: int, max_fps: float) -> Session:
        """A session as its snapshot left it (its stream is restored separately, on the model thread)."""
        s = cls(SessionSettings(**record.settings), max_export_points, max_fps, session_id=record.id)
        s.token = s.watch_token = ""  # only the hashes survive a restart
        s.token_hash, s.watch_hash = record.token_hash, record.watch_hash
        s.phase = StreamPhase.FINISHING if record.finished else StreamPhase.STREAMING
        s.frames_processed, s.last_seq = record.frames_processed, record.last_seq
        s.seq_by_index = dict(record.seq_by_index)
        s.frames_received, s.frames_rejected, s.dropped = (
            record.frames_received,
            record.frames_rejected,
            dict(record.dropped),
        )
        s.cameras = StreamCameras.restored(record.calibration, record.pose_track)
        s.export.load_arrays(export)
        s.export.decimation = record.export_decimation
        s.restored = True
        return s

    def resume_info(self) -> ResumeInfo | None:
        """For the hello: where a restored stream resumed, until it takes its next frame."""
        return ResumeInfo(frames_processed=self.frames_processed, last_seq=self.last_seq) if self.restored else None


class SessionManager:
    """All sessions of one worker: creation (within capacity), lookup, idle eviction, snapshots.

    As a worker of a cluster (``cluster_worker``), every session it holds is claimed in the store's directory
    (store.py: owner + epoch) and every write is fenced with that claim; at start it restores nothing, and takes
    over a dead worker's sessions only when told to (``adopt``)."""

    def __init__(self, settings: ServeSettings, worker: Worker, metrics: Metrics):
        self.settings, self.worker, self.metrics = settings, worker, metrics
        self.sessions: dict[str, Session] = {}
        self._evictor: asyncio.Task | None = None
        self.store: SessionStore | None = open_store(settings.state_dir, settings.state_url)
        if settings.cluster_worker and self.store is None:
            raise ValueError("a cluster worker needs a state store (--state-dir or --state-url)")
        self._tasks: set[asyncio.Task] = set()
        self.arriving: set[str] = set()  # being restored (adopted): not here yet, but not unknown either

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self.store is not None and not self.settings.cluster_worker:
            await self.restore_all()
        self._evictor = asyncio.create_task(self._evict_loop(), name="session-evictor")

    async def stop(self) -> None:
        """Graceful shutdown: snapshot every session (with a store), then close its connections."""
        if self._evictor:
            self._evictor.cancel()
        for s in list(self.sessions.values()):
            if s.persistence is not None:
                try:
                    await self.snapshot(s)
                except Exception:
                    log.exception("snapshot of session %s failed", s.id)
            await self.remove(s, CLOSE_SHUTDOWN, "server shutting down", "shutdown", keep_files=True)

    async def create(self, settings: SessionSettings) -> Session:
        if len(self.sessions) >= self.settings.max_sessions:
            self.metrics.sessions_refused.inc()
            raise CapacityError(
                f"the server holds its maximum of {self.settings.max_sessions} sessions; "
                "retry later or delete an unused session",
                self.retry_after_s(),
            )
        s = Session(settings, self.settings.max_export_points, self.settings.max_fps)
        self.sessions[s.id] = s  # reserve the slot before awaiting: concurrent creations respect the limit
        try:
            s.persistence = self._persistence(s, await self._claim(s.id, None))
            await self.worker.open_stream(s)
            if s.persistence is not None:  # a crash before its first periodic commit must not lose the session
                await self.snapshot(s)
        except BaseException:
            self.sessions.pop(s.id, None)
            raise
        self.metrics.active_sessions.set(len(self.sessions))
        log.info("session %s created (%d/%d)", s.id, len(self.sessions), self.settings.max_sessions)
        return s

    def get(self, session_id: str) -> Session | None:
        return self.sessions.get(session_id)

    async def remove(
        self,
        s: Session,
        code: int = CLOSE_DELETED,
        reason: str = "session deleted",
        drop_reason: str = "evicted",
        keep_files: bool = False,
    ) -> None:
        if self.sessions.pop(s.id, None) is None:
            return
        await s.notify_dropped([(q, drop_reason) for q in s.clear_waiting()], self.metrics)
        s.closed = True
        await s.close_connections(code, reason)
        s.stream = None  # the spatial memory goes with the last reference
        self.metrics.active_sessions.set(len(self.sessions))
        if not keep_files and s.persistence is not None:
            await s.persistence.invalidate(s.generation + 1)
            if s.persistence.fence is not None and not s.persistence.lost:
                await self._release(s.id, s.persistence.fence)
        log.info("session %s removed (%s)", s.id, reason)

    @property
    def _evict_tick_s(self) -> float:
        """How often idle sessions and orphans are looked for."""
        return min(5.0, self.settings.idle_timeout_s / 4, self.settings.orphan_grace_s / 4)

    async def _evict_loop(self) -> None:
        while True:
            await asyncio.sleep(self._evict_tick_s)
            await self.evict_idle()
            await self.release_orphans()

    async def evict_idle(self) -> int:
        now, n = time.monotonic(), 0
        for s in list(self.sessions.values()):
            if now - s.last_activity > self.settings.idle_timeout_s and s.pipeline_empty():
                self.metrics.sessions_evicted.inc()
                await self.remove(s, CLOSE_IDLE, "session evicted after the idle timeout")
                n += 1
        return n

    async def release_orphans(self) -> int:
        """Release the sessions whose stream connection went away more than ``orphan_grace_s`` ago (a page
        closed, a client crashed): they must not hold a slot until the idle timeout."""
        now, n = time.monotonic(), 0
        for s in list(self.sessions.values()):
            release_at = s.orphan_release_at(self.settings.orphan_grace_s)
            if release_at is not None and now >= release_at and s.pipeline_empty():
                self.metrics.sessions_evicted.inc()
                await self.remove(s, CLOSE_IDLE, "session released: its stream connection went away")
                n += 1
        return n

    def retry_after_s(self) -> int:
        """Seconds until the first orphan is released (at least 1), or ``CAPACITY_RETRY_AFTER_S`` when none is."""
        grace = self.settings.orphan_grace_s
        due = [t for s in self.sessions.values() if (t := s.orphan_release_at(grace)) is not None]
        if not due:
            return CAPACITY_RETRY_AFTER_S
        # the release happens at the loop's first tick after the due time
        return max(1, math.ceil(min(due) - time.monotonic() + self._evict_tick_s))

    # ------------------------------------------------------------------ persistence (snapshots.py, store.py)
    async def _claim(self, session_id: str, claim_from: Owner | None) -> Owner | None:
        """A cluster worker's claim of a session in the directory (from ``claim_from``, the previous owner; None: a
        new session); None for a single process."""
        if self.store is None or not self.settings.cluster_worker:
            return None
        return await asyncio.to_thread(self.store.claim, session_id, self.settings.worker_id, claim_from)

    def _persistence(
        self, s: Session, fence: Owner | None, stored: StoredSession | None = None
    ) -> SessionPersistence | None:
        if self.store is None:
            return None
        return SessionPersistence(
            self.store,
            s.id,
            self.settings.persist_every,
            None if stored is None else stored.record,
            fence=fence,
            on_lost=lambda: self._spawn(self._let_go(s)),
        )

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _let_go(self, s: Session) -> None:
        """Another worker took the session over (this one was presumed dead): close it here, store untouched; its
        clients reconnect and reach the new owner."""
        await self.remove(s, CLOSE_SHUTDOWN, "session moved to another worker", "shutdown", keep_files=True)

    async def _release(self, session_id: str, fence: Owner) -> None:
        assert self.store is not None
        with contextlib.suppress(OwnershipLost):  # taken over meanwhile: the new owner's record stays
            await asyncio.to_thread(self.store.release, session_id, fence)

    async def snapshot(self, s: Session) -> int:
        """Persist the session now (stream state, record, export buffer); returns the bytes written."""
        if s.persistence is None:
            raise RuntimeError("no state store configured (--state-dir or --state-url)")
        capture, seconds, point = await self.worker.capture_stream(s)
        n = await s.persistence.submit(s, capture, seconds, point, None)
        log.info("session %s snapshotted (%d frames, %d bytes)", s.id, point.frames, n)
        return n

    async def restore_all(self) -> None:
        assert self.store is not None
        for session_id in await asyncio.to_thread(self.store.sessions):
            try:
                await self.restore(session_id)
            except Exception as exc:
                log.error("cannot restore session %s: %s", session_id, exc)

    async def restore(self, session_id: str, claim_from: Owner | None = None) -> Session:
        """Bring back a stored session. A cluster worker claims it from ``claim_from`` first, so the state it reads
        is final (the previous owner is fenced out), and releases its directory entry when there is no state
        (``KeyError``). Until the session is in, it is ``arriving``: requests for it are told to retry, not that
        it does not exist."""
        assert self.store is not None
        self.arriving.add(session_id)
        try:
            fence = await self._claim(session_id, claim_from)
            try:
                stored = await asyncio.to_thread(read_session, self.store, session_id)
            except KeyError:
                if fence is not None:
                    await self._release(session_id, fence)
                raise
            s = Session.from_record(
                stored.record,
                stored.export,
                self.settings.max_export_points,
                self.settings.max_fps,
            )
            s.persistence = self._persistence(s, fence, stored)
            await self.worker.restore_stream(s, stored.head, stored.rows)
            self.sessions[s.id] = s
        finally:
            self.arriving.discard(session_id)
        self.metrics.active_sessions.set(len(self.sessions))
        log.info("session %s restored (%d frames)", s.id, s.frames_processed)
        return s

    async def adopt(self, session_id: str, previous: Owner) -> Session:
        """Take over a session of a dead worker (cluster failover): claim it from ``previous`` (``OwnershipLost``
        when another worker was faster) and restore it. A session with no stored state (finished or reset and
        never persisted since) cannot come back: ``KeyError``, and its directory entry is gone, so routers answer
        "no such session" rather than bring back a stream the client did not have."""
        if len(self.sessions) + len(self.arriving) >= self.settings.max_sessions:
            raise CapacityError(f"worker {self.settings.worker_id} holds its maximum of sessions")
        return await self.restore(session_id, claim_from=previous)

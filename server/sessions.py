"""Sessions: one stream's server-side state (tokens, settings, frame intake policy, outputs for export) and the
manager that creates, finds, evicts, snapshots and restores them.

A session lives on exactly one worker and in one process; its id is all a router needs to find it. Its
``StreamState`` (the spatial memory) is only ever touched on the worker's model thread; everything else here
is touched on the event loop only.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .protocol import CLOSE_DELETED, CLOSE_IDLE, CLOSE_SHUTDOWN, DroppedMsg, SessionSettings, SessionStats, pack

if TYPE_CHECKING:
    from .connection import Connection
    from .metrics import Metrics
    from .protocol import FrameMsg
    from .settings import ServeSettings
    from .worker import Worker

log = logging.getLogger(__name__)

SESSION_ID = re.compile(r"[0-9a-f]{32}")  # server-made ids; nothing else is ever used to build a path
SNAPSHOT_FORMAT = "spann3r-session/1"


class CapacityError(RuntimeError):
    """The server holds its maximum number of sessions."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(candidate: str | None, stored_hash: str) -> bool:
    """Constant-time check of a presented token against a stored hash (tokens themselves are never stored)."""
    if not candidate:
        return False
    return hmac.compare_digest(token_hash(candidate), stored_hash)


@dataclass
class RawFrame:
    msg: "FrameMsg"
    received: float  # time.perf_counter() at arrival
    cancelled: bool = False  # superseded while decoding

    @property
    def seq(self) -> int:
        return self.msg.seq


@dataclass
class ReadyFrame:
    raw: RawFrame
    prepared: object  # core.preprocess.PreparedFrame
    decode_s: float
    ready_at: float
    background_units: int = 0  # the worker's count of job units done when this frame became ready


@dataclass
class Calibration:
    """Per-stream constants fixed by frame 0's final: focal, and the auto scale of compact positions."""

    focal: float
    auto_scale: float


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


@dataclass
class ExportBuffer:
    """Confident points of every final (for PLY/GLB), within a point budget, and the camera trajectory. Keyed by
    frame index: post-processing finishes out of order, exports come out in frame order."""

    max_points: int
    points_by_frame: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # index → (xyz, rgb)
    poses: dict[int, tuple[np.ndarray, bool]] = field(default_factory=dict)  # final frame index → (c2w, valid)
    decimation: int = 1  # keep every n-th confident point; doubles whenever the budget is exceeded

    @property
    def points(self) -> int:
        return sum(len(x) for x, _ in self.points_by_frame.values())

    def add(self, index: int, xyz: np.ndarray, rgb: np.ndarray, c2w: np.ndarray, valid: bool) -> None:
        self.points_by_frame[index] = (xyz[:: self.decimation], rgb[:: self.decimation])
        self.poses[index] = (c2w, valid)
        while self.points > self.max_points:
            self.decimation *= 2
            self.points_by_frame = {i: (x[::2], c[::2]) for i, (x, c) in self.points_by_frame.items()}

    def frozen(self) -> "ExportBuffer":
        """A copy that later additions do not touch (for reading in another thread)."""
        return ExportBuffer(self.max_points, dict(self.points_by_frame), dict(self.poses), self.decimation)

    def cloud(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.points_by_frame:
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
        order = sorted(self.points_by_frame)
        return (np.concatenate([self.points_by_frame[i][0] for i in order]),
                np.concatenate([self.points_by_frame[i][1] for i in order]))

    def trajectory(self) -> tuple[np.ndarray, np.ndarray]:
        n = max(self.poses) + 1 if self.poses else 0
        c2w, valid = np.full((n, 4, 4), np.nan), np.zeros(n, bool)
        for i, (p, v) in self.poses.items():
            c2w[i], valid[i] = p, v
        return c2w, valid

    def arrays(self) -> dict[str, np.ndarray]:
        """For the snapshot file (plain arrays, no pickle)."""
        order = sorted(self.points_by_frame)
        xyz, rgb = self.cloud()
        c2w, valid = self.trajectory()
        return {"xyz": xyz, "rgb": rgb, "frames": np.array(order, np.int64),
                "counts": np.array([len(self.points_by_frame[i][0]) for i in order], np.int64),
                "c2w": c2w, "valid": valid}

    def load_arrays(self, z) -> None:
        bounds = np.cumsum(z["counts"])[:-1]
        self.points_by_frame = {int(i): (x, c) for i, x, c in zip(z["frames"], np.split(z["xyz"], bounds),
                                                                   np.split(z["rgb"], bounds))}
        self.poses = {i: (z["c2w"][i], bool(z["valid"][i])) for i in range(len(z["valid"]))}


class Session:
    def __init__(self, settings: SessionSettings, max_export_points: int, max_fps: float,
                 session_id: str | None = None, token: str | None = None, watch_token: str | None = None):
        self.id = session_id or uuid.uuid4().hex
        self.token = token or secrets.token_urlsafe(24)  # returned once at creation, then forgotten
        self.watch_token = watch_token or secrets.token_urlsafe(24)
        self.token_hash, self.watch_hash = token_hash(self.token), token_hash(self.watch_token)
        self.settings = settings
        self.max_export_points = max_export_points
        self.rate = RateLimiter(max_fps)
        self.created = self.last_activity = time.monotonic()
        self.closed = False
        # the stream (StreamState on the model thread) and its generation: bumped by reset
        self.stream = None
        self.generation = 0
        self.frames_processed = 0  # frames of the current stream taken by the model
        self.finished = False  # finish requested (frames refused until reset)
        self.finish_sent = False
        self.last_seq: int | None = None
        self.seq_by_index: dict[int, int] = {}
        self.calibration: asyncio.Future | None = None  # → Calibration, resolved by frame 0's final
        self.export = ExportBuffer(max_export_points)
        # frame intake (the policy acts on these three: undecoded, being decoded, decoded)
        self.buffer: deque[RawFrame] = deque()
        self.decoding: RawFrame | None = None
        self.ready: ReadyFrame | None = None
        self.in_model = False
        self.posting = 0  # results in post-processing
        self.busy = False  # a reset / finish / snapshot runs on the model thread: keep frames out
        self._nth = 0
        # counters
        self.frames_received = 0
        self.frames_rejected = 0
        self.dropped: dict[str, int] = {}
        # connections and the ordered output chain
        self.stream_conn: Connection | None = None
        self.watchers: set[Connection] = set()
        self.out_tail: asyncio.Future | None = None

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
            dropped = self.clear_waiting()
            self.buffer.append(raw)
            return [(seq, "superseded") for seq in dropped]
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

    # ------------------------------------------------------------------ output
    async def broadcast(self, data: bytes, to_watchers: bool = True) -> None:
        if self.stream_conn is not None:
            await self.stream_conn.send(data)
        if to_watchers:
            for w in list(self.watchers):
                w.send_nowait(data)

    async def notify_dropped(self, dropped: list[tuple[int, str]], metrics: "Metrics") -> None:
        for seq, reason in dropped:
            self.dropped[reason] = self.dropped.get(reason, 0) + 1
            metrics.frames_dropped.labels(reason).inc()
            await self.broadcast(pack(DroppedMsg(seq=seq, reason=reason)))

    def chain(self, produce) -> asyncio.Future:
        """Send what the coroutine ``produce()`` returns after everything chained before it has been sent.
        Producers run concurrently (poses of consecutive frames in parallel); sending stays in order."""
        prev = self.out_tail

        async def run():
            data = None
            try:
                data = await produce()  # producers report their own failures as messages
            except Exception:
                log.exception("session %s: producing a message failed", self.id)
            if prev is not None:
                await asyncio.wait([prev])  # wait, never re-raise: one failure must not stall the chain
            if data is not None and not self.closed:
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
            id=self.id, worker_id=worker_id, settings=self.settings, frames_received=self.frames_received,
            frames_processed=self.frames_processed, frames_dropped=dict(self.dropped),
            frames_rejected=self.frames_rejected, waiting=self.waiting, finished=self.finished,
            stream_connected=self.stream_conn is not None, watchers=len(self.watchers),
            idle_s=time.monotonic() - self.last_activity, focal=self.focal, export_points=self.export.points,
            export_decimation=self.export.decimation)

    @property
    def focal(self) -> float | None:
        c = self.calibration
        return c.result().focal if c is not None and c.done() and not c.exception() else None

    def metadata(self) -> dict:
        cal = self.calibration.result() if self.calibration is not None and self.calibration.done() else None
        return {
            "format": SNAPSHOT_FORMAT, "id": self.id, "token_hash": self.token_hash,
            "watch_hash": self.watch_hash, "settings": self.settings.model_dump(), "finished": self.finished,
            "frames_processed": self.frames_processed, "last_seq": self.last_seq,
            "seq_by_index": {str(k): v for k, v in self.seq_by_index.items()},
            "calibration": None if cal is None else {"focal": cal.focal, "auto_scale": cal.auto_scale},
            "frames_received": self.frames_received, "frames_rejected": self.frames_rejected,
            "dropped": self.dropped, "export_decimation": self.export.decimation,
        }


class SessionManager:
    """All sessions of one worker: creation (within capacity), lookup, idle eviction, snapshots."""

    def __init__(self, settings: "ServeSettings", worker: "Worker", metrics: "Metrics"):
        self.settings, self.worker, self.metrics = settings, worker, metrics
        self.sessions: dict[str, Session] = {}
        self._evictor: asyncio.Task | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self.settings.state_dir is not None:
            self.settings.state_dir.mkdir(parents=True, exist_ok=True)
            await self.restore_all()
        self._evictor = asyncio.create_task(self._evict_loop(), name="session-evictor")

    async def stop(self) -> None:
        """Graceful shutdown: snapshot every session (with a state dir), then close its connections."""
        if self._evictor:
            self._evictor.cancel()
        for s in list(self.sessions.values()):
            if self.settings.state_dir is not None:
                try:
                    await self.snapshot(s)
                except Exception:
                    log.exception("snapshot of session %s failed", s.id)
            await self.remove(s, CLOSE_SHUTDOWN, "server shutting down", "shutdown", keep_files=True)

    async def create(self, settings: SessionSettings) -> Session:
        if len(self.sessions) >= self.settings.max_sessions:
            self.metrics.sessions_refused.inc()
            raise CapacityError(f"the server holds its maximum of {self.settings.max_sessions} sessions; "
                                "retry later or delete an unused session")
        s = Session(settings, self.settings.max_export_points, self.settings.max_fps)
        self.sessions[s.id] = s  # reserve the slot before awaiting: concurrent creations respect the limit
        try:
            await self.worker.open_stream(s)
        except BaseException:
            self.sessions.pop(s.id, None)
            raise
        self.metrics.active_sessions.set(len(self.sessions))
        log.info("session %s created (%d/%d)", s.id, len(self.sessions), self.settings.max_sessions)
        return s

    def get(self, session_id: str) -> Session | None:
        return self.sessions.get(session_id)

    async def remove(self, s: Session, code: int = CLOSE_DELETED, reason: str = "session deleted",
                     drop_reason: str = "evicted", keep_files: bool = False) -> None:
        if self.sessions.pop(s.id, None) is None:
            return
        await s.notify_dropped([(q, drop_reason) for q in s.clear_waiting()], self.metrics)
        s.closed = True
        await s.close_connections(code, reason)
        s.stream = None  # the spatial memory goes with the last reference
        self.metrics.active_sessions.set(len(self.sessions))
        if not keep_files and self.settings.state_dir is not None:
            for suffix in (".json", ".stream", ".export.npz"):
                (self.settings.state_dir / f"{s.id}{suffix}").unlink(missing_ok=True)
        log.info("session %s removed (%s)", s.id, reason)

    async def _evict_loop(self) -> None:
        period = min(5.0, self.settings.idle_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            await self.evict_idle()

    async def evict_idle(self) -> int:
        now, n = time.monotonic(), 0
        for s in list(self.sessions.values()):
            if now - s.last_activity > self.settings.idle_timeout_s and s.pipeline_empty():
                self.metrics.sessions_evicted.inc()
                await self.remove(s, CLOSE_IDLE, "session evicted after the idle timeout")
                n += 1
        return n

    # ------------------------------------------------------------------ snapshots
    def _paths(self, session_id: str) -> tuple[Path, Path, Path]:
        assert SESSION_ID.fullmatch(session_id)
        d = self.settings.state_dir
        return d / f"{session_id}.json", d / f"{session_id}.stream", d / f"{session_id}.export.npz"

    async def snapshot(self, s: Session) -> int:
        """Write the session (stream state, metadata, export buffer) to the state dir; returns stream bytes."""
        if self.settings.state_dir is None:
            raise RuntimeError("no state dir configured (--state-dir)")
        data = await self.worker.snapshot_stream(s)
        meta, export = s.metadata(), s.export.arrays()

        def write():
            meta_p, stream_p, export_p = self._paths(s.id)
            for path, write_fn in ((stream_p, lambda f: f.write(data)),
                                   (export_p, lambda f: np.savez(f, **export)),
                                   (meta_p, lambda f: f.write(json.dumps(meta).encode()))):  # metadata last
                tmp = path.with_suffix(path.suffix + ".tmp")
                with open(tmp, "wb") as f:
                    write_fn(f)
                os.replace(tmp, path)

        await asyncio.get_running_loop().run_in_executor(None, write)
        log.info("session %s snapshotted (%d frames, %d bytes)", s.id, s.frames_processed, len(data))
        return len(data)

    async def restore_all(self) -> None:
        for meta_p in sorted(self.settings.state_dir.glob("*.json")):
            if not SESSION_ID.fullmatch(meta_p.stem):
                continue
            try:
                await self.restore(meta_p.stem)
            except Exception as exc:
                log.error("cannot restore session %s: %s", meta_p.stem, exc)

    async def restore(self, session_id: str) -> Session:
        meta_p, stream_p, export_p = self._paths(session_id)
        meta = json.loads(meta_p.read_text())
        if meta.get("format") != SNAPSHOT_FORMAT or meta.get("id") != session_id:
            raise ValueError(f"{meta_p.name} is not a session snapshot of this format")
        s = Session(SessionSettings(**meta["settings"]), self.settings.max_export_points, self.settings.max_fps,
                    session_id=session_id)
        s.token = s.watch_token = ""  # only the hashes survive a restart
        s.token_hash, s.watch_hash = meta["token_hash"], meta["watch_hash"]
        s.finished, s.frames_processed, s.last_seq = meta["finished"], meta["frames_processed"], meta["last_seq"]
        s.seq_by_index = {int(k): v for k, v in meta["seq_by_index"].items()}
        s.frames_received, s.frames_rejected, s.dropped = meta["frames_received"], meta["frames_rejected"], \
            meta["dropped"]
        if meta["calibration"] is not None:
            s.calibration = asyncio.get_running_loop().create_future()
            s.calibration.set_result(Calibration(**meta["calibration"]))
        with np.load(export_p, allow_pickle=False) as z:
            s.export.load_arrays(z)
        s.export.decimation = meta["export_decimation"]
        await self.worker.restore_stream(s, stream_p.read_bytes())
        self.sessions[s.id] = s
        self.metrics.active_sessions.set(len(self.sessions))
        log.info("session %s restored (%d frames)", s.id, s.frames_processed)
        return s

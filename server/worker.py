"""The device worker: the mechanism that runs the model. It holds the model and every session's stream, and
applies the decisions of the scheduling policy (scheduler.py).

Threads, and what runs where (the event loop never waits on any of them):
- event loop: message intake, the frame policy, scheduling, sending;
- model thread (one): ``Engine.step`` over a batch and, right after it, the step's calibration and camera poses
  (``results.step_cameras``: every map of the batch in one solve, warm-started from each stream's previous pose);
  everything else that touches a ``StreamState`` or a stream's cameras (new stream, finish, snapshot, restore),
  so neither is ever touched by two threads;
- decode pool: image decoding + preprocessing of the next frame of each session while the model runs;
- job decode pool (one thread): the images of collection-job uploads, so a stream frame never queues behind them;
- post pool: encoding (on an accelerator on the maps' device, copying back only what is sent; numpy on the CPU)
  and msgpack of results (results.py), in parallel across frames and sessions; a lone stream's results are made
  on the model thread instead, right after its step (``RunBatch.post_on_model``: scheduler.py).

Scheduling (scheduler.py): a session holds at most one decoded frame ("ready"); each decision names the sessions
of a batch, and the worker claims their frames at once (``Session.claim_step``), so what a batch runs is exactly
what was ready when it was formed. Background work (collection jobs, jobs.py) runs on the same model thread in
small units, interleaved with stream batches.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import torch

from ..core.engine import Engine, StepResult, StreamError
from ..core.pose_kernel import compile_kernels as compile_pose_kernels
from ..core.preprocess import ImageError, PreparedFrame, decode_and_prepare
from ..core.snapshot import StreamCapture, capture_stream, load_stream_parts
from ..core.weights import LoadedWeights
from . import results
from .map_kernels import compile_kernels as compile_map_kernels
from .metrics import Metrics
from .protocol import AckMsg, ErrorMsg, FrameMsg, ModelInfo, SessionSettings, pack
from .results import FrameIdentity, StreamCameras
from .scheduler import Candidate, Decision, RunBatch, RunUnit, SchedulePolicy, Wait, schedule
from .sessions import RawFrame, ReadyFrame, Session, StepTicket
from .settings import ServeSettings
from .snapshots import CaptureRequest, StreamPoint

log = logging.getLogger(__name__)

STREAMING_WINDOW_S = 1.0  # a session that sent a frame this recently may send the next one within a batch's wait
SYNTHETIC_NOTICE = (
    "UNTRAINED MODEL: the server runs synthetic random weights; outputs are a fingerprint of "
    "the computation, not a reconstruction"
)


class FrameRejected(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def decode_frame(msg: FrameMsg, max_pixels: int) -> PreparedFrame:
    """Frame message → model input. Image sizes are checked from the header, before any pixel is decoded."""
    try:
        return decode_and_prepare(msg.data, msg.format, msg.width, msg.height, max_pixels)
    except ImageError as exc:
        raise FrameRejected(exc.code, exc.message) from None


class BackgroundWork(Protocol):
    """Model work split into units (a collection job). ``has_work`` and ``unit_done`` run on the event loop,
    ``run_unit`` on the model thread."""

    def has_work(self) -> bool: ...

    def run_unit(self) -> None: ...

    def unit_done(self, error: BaseException | None, seconds: float) -> None: ...


class Worker:
    def __init__(self, engine: Engine, weights: LoadedWeights, preset: str, settings: ServeSettings, metrics: Metrics):
        self.engine, self.weights, self.preset = engine, weights, preset
        self.settings, self.metrics = settings, metrics
        self.policy = SchedulePolicy(settings.max_batch, settings.max_wait_ms / 1000, settings.job_stream_batches)
        cpus = os.cpu_count() or 2
        self.model_exec = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.decode_pool = ThreadPoolExecutor(max(2, cpus), thread_name_prefix="decode")
        self.job_decode_pool = ThreadPoolExecutor(1, thread_name_prefix="job-decode")
        self.post_pool = ThreadPoolExecutor(max(2, cpus), thread_name_prefix="post")
        self._ready: dict[str, Session] = {}  # sessions with a decoded frame, by id, in the order they got it
        self._frame_at: dict[str, float] = {}  # when each session's latest frame arrived (who is streaming)
        self._wake = asyncio.Event()  # not bound to a loop until first awaited
        self._task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self.step_started: float | None = None
        self._background: deque[BackgroundWork] = deque()  # round-robin: the next to get a unit is first
        self._batches_since_unit = 0  # stream batches run while background work waited
        self.background_units = 0  # units completed so far (frames record it when they become ready)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if torch.device(self.engine.device).type == "cpu":  # maps on the CPU: compile now, not in the first result
            await self.on_model(compile_pose_kernels)
            await self.on_model(compile_map_kernels)
        self._task = asyncio.create_task(self._schedule(), name="worker-scheduler")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        for pool in (self.decode_pool, self.job_decode_pool, self.post_pool, self.model_exec):
            pool.shutdown(wait=False, cancel_futures=True)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def model_info(self) -> ModelInfo:
        return ModelInfo(
            preset=self.preset,
            weights=self.weights.kind,
            synthetic=self.weights.synthetic,
            notice=SYNTHETIC_NOTICE if self.weights.synthetic else None,
            device=str(self.engine.device),
        )

    async def on_model(self, fn, *args):
        return await self._loop.run_in_executor(self.model_exec, fn, *args)

    async def on_post(self, fn, *args):
        return await self._loop.run_in_executor(self.post_pool, fn, *args)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)  # keep a reference until done
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ streams
    async def open_stream(self, s: Session) -> None:
        s.attach_stream(await self.on_model(self.engine.new_stream, s.settings.preview), StreamCameras())

    async def restore_stream(self, s: Session, head: bytes, rows: list[bytes]) -> None:
        stream = await self.on_model(load_stream_parts, self.engine, head, rows)
        s.attach_stream(stream, s.cameras)  # as the session's record left them

    async def capture_stream(self, s: Session) -> tuple[StreamCapture, float, StreamPoint]:
        """The stream's state now, consistent with the session's counters and export buffer (frames are held
        back until the copy and the results already computed are in); the seconds the copy took."""
        assert s.persistence is not None
        try:
            with s.held():
                capture, seconds, pose_track = await self.on_model(
                    _timed_capture, s.stream, s.cameras, CaptureRequest(s.persistence.position)
                )
                if s.out_tail is not None:
                    await asyncio.wait([s.out_tail])
                frames = int(capture.meta["frames"])
                finished = bool(capture.meta["finished"])
                point = StreamPoint(frames, s.seq_by_index.get(frames - 1), s.generation, finished, pose_track)
                return capture, seconds, point
        finally:
            self._wake.set()

    async def reset(self, s: Session) -> None:
        try:
            with s.held():
                await s.notify_dropped([(q, "reset") for q in s.clear_waiting()], self.metrics)
                if s.persistence is not None:  # a restart must not bring back the stream abandoned here
                    await s.persistence.invalidate(s.generation + 1)
                stream = await self.on_model(self.engine.new_stream, s.settings.preview)
                s.reset_stream(stream)
        finally:
            self._wake.set()  # frames that became ready meanwhile
        s.send_ordered(pack(AckMsg(action="reset", settings=s.settings)))

    def change_settings(self, s: Session, settings: SessionSettings) -> None:
        s.change_settings(settings)  # frames already claimed keep the settings they were claimed with
        s.send_ordered(pack(AckMsg(action="settings", settings=settings)))

    # ------------------------------------------------------------------ intake
    async def accept_frame(self, s: Session, msg: FrameMsg) -> None:
        self.metrics.frames_received.inc()
        last = s.last_seq
        refusal = s.receive(msg.seq)
        if refusal == "finished":
            return await self.reject(s, msg.seq, "finished", "the stream is finished; send a reset to start anew")
        if refusal == "bad_seq":
            return await self.reject(s, msg.seq, "bad_seq", f"seq {msg.seq} is not above the last accepted seq {last}")
        if not s.rate.allow():
            return await s.notify_dropped([(msg.seq, "rate_limit")], self.metrics)
        now = time.perf_counter()
        self._frame_at[s.id] = now
        dropped = s.intake(RawFrame(msg, now))
        self._advance(s)
        await s.notify_dropped(dropped, self.metrics)

    async def reject(self, s: Session, seq: int | None, code: str, message: str) -> None:
        s.reject_counted()
        self.metrics.frames_rejected.labels(code).inc()
        if s.stream_conn is not None:
            await s.stream_conn.send(pack(ErrorMsg(code=code, message=message, seq=seq)))

    def _advance(self, s: Session) -> None:
        """After any change of a session's pipeline: decode its next waiting frame, or finish its stream."""
        raw = s.next_to_decode()
        if raw is not None:
            self._spawn(self._decode(s, raw))
        if s.claim_finish():
            self._spawn(self._finish(s))

    async def _decode(self, s: Session, raw: RawFrame) -> None:
        t0 = time.perf_counter()
        error = prepared = None
        try:
            prepared = await self._loop.run_in_executor(
                self.decode_pool, decode_frame, raw.msg, self.settings.max_pixels
            )
        except FrameRejected as exc:
            error = exc
        except Exception as exc:  # a decoder fault must not take the session down
            log.exception("decoding frame %d of session %s", raw.seq, s.id)
            error = FrameRejected("internal", f"decoding failed: {exc.__class__.__name__}")
        dt = time.perf_counter() - t0
        counts = s.decode_done(raw)  # a superseded frame's drop was reported when it was superseded
        if not counts or error is not None or prepared is None:
            self._advance(s)
            if counts and error is not None:
                await self.reject(s, raw.seq, error.code, error.message)
            return
        self.metrics.decode_seconds.observe(dt)
        s.set_ready(ReadyFrame(raw, prepared, dt, time.perf_counter(), self.background_units))
        self._ready[s.id] = s
        self._wake.set()

    # ------------------------------------------------------------------ scheduling (policy: scheduler.py)
    def _candidates(self) -> list[Candidate]:
        for sid in [sid for sid, s in self._ready.items() if s.ready is None or s.closed]:
            del self._ready[sid]
        return [
            Candidate(s.id, s.ready_since, s.busy, s.posting) for s in self._ready.values() if s.ready_since is not None
        ]

    def _streaming(self, now: float) -> int:
        """Sessions that sent a frame within ``STREAMING_WINDOW_S``: the company a partial batch may wait for."""
        for sid in [sid for sid, t in self._frame_at.items() if now - t > STREAMING_WINDOW_S]:
            del self._frame_at[sid]
        return len(self._frame_at)

    def _background_waiting(self) -> bool:
        return self._pick_background() is not None

    async def _schedule(self) -> None:
        while True:
            try:
                now = time.perf_counter()
                await self._apply(
                    schedule(
                        self._candidates(),
                        self._background_waiting(),
                        self._batches_since_unit,
                        now,
                        self.policy,
                        streaming=self._streaming(now),
                    )
                )
            except Exception:  # the worker must outlive any one decision
                log.exception("scheduling failed")
                await self._wait(time.perf_counter() + 0.1)

    async def _apply(self, decision: Decision) -> None:
        if isinstance(decision, Wait):
            await self._wait(decision.until)
        elif isinstance(decision, RunUnit):
            work = self._pick_background()
            if work is not None:
                await self._run_unit(work)
            self._batches_since_unit = 0
        else:
            await self._run_claimed(self._claim(decision), decision.post_on_model)

    async def _wait(self, until: float | None) -> None:
        """Until something changes (a frame ready, a result posted, work added), or until ``until``."""
        try:
            if until is None:
                await self._wake.wait()
            else:
                await asyncio.wait_for(self._wake.wait(), max(0.0, until - time.perf_counter()))
        except TimeoutError:
            pass
        self._wake.clear()

    def _claim(self, decision: RunBatch) -> list[tuple[Session, StepTicket]]:
        """Take the decided sessions' frames into a batch, at once (no await between decision and claim)."""
        claimed = []
        for key in decision.keys:
            s = self._ready.pop(str(key))
            ticket = s.claim_step()
            if ticket is not None:
                claimed.append((s, ticket))
        return claimed

    async def _run_claimed(self, batch: list[tuple[Session, StepTicket]], post_on_model: bool) -> None:
        for s, _ in batch:
            self._advance(s)  # decode each session's next frame while the model runs
        try:
            await self._run_batch(batch, post_on_model)
        except Exception:
            log.exception("batch failed")
        if self._background:
            self._batches_since_unit += 1

    async def _run_batch(self, batch: list[tuple[Session, StepTicket]], post_on_model: bool) -> None:
        taken = time.perf_counter()
        units_before = self.background_units
        wanted = [None if s.persistence is None else s.persistence.due(t.index + 1, s.finished) for s, t in batch]
        # the buffers' thinning now: the items are made thinned to it (the loop then copies nothing)
        post = PostOnModel([s.export.decimation for s, _ in batch]) if post_on_model else None
        self.step_started = time.monotonic()
        try:
            done = await self.on_model(self._step, [t for _, t in batch], wanted, taken, units_before, post)
        except Exception as exc:
            log.exception("model step failed for %d frames", len(batch))
            for s, t in batch:
                s.step_done(ok=False)
                await self.reject(s, t.frame.raw.seq, "internal", f"model step failed: {exc.__class__.__name__}")
                self._advance(s)
            return
        finally:
            self.step_started = None
        self.metrics.step_latency.observe(done.step_s)
        self.metrics.batch_size.observe(len(batch))
        self.metrics.frames_processed.inc(len(batch))
        for (s, t), res, captured, cams, timings, posted in zip(
            batch, done.outs, done.captures, done.cameras, done.timings, done.posted
        ):
            rf = t.frame
            self.metrics.queue_seconds.observe(timings["queue_s"])
            s.step_done(ok=True)
            sent = s.chain(self._result_producer(s, t, res, timings, cams, posted), replayable=True)
            if captured is not None and s.persistence is not None:  # committed off the model thread
                capture, seconds, pose_track = captured
                point = StreamPoint(t.index + 1, rf.raw.seq, t.generation, pose_track=pose_track)
                s.persistence.submit(s, capture, seconds, point, sent)
            self._advance(s)

    def _step(
        self,
        tickets: list[StepTicket],
        wanted: list[CaptureRequest | None],
        taken: float,
        units_before: int,
        post: PostOnModel | None,
    ) -> StepDone:
        """Model thread: the batch's step, its cameras (calibration and poses of every map, one batched solve), a
        copy of the streams due for persisting (before any later step moves them), and with ``post`` the result
        messages too. ``taken``: when the batch was claimed; ``units_before``: background units run by then."""
        for t in tickets:
            t.stream.preview = t.settings.preview  # a settings change takes effect at the next step
        outs = self.engine.step([(t.stream, t.frame.prepared) for t in tickets])
        cameras = results.step_cameras(
            [(t.cameras, res, t.settings, t.frame.prepared.source_size) for t, res in zip(tickets, outs)],
            self.engine.device,
        )
        step_s = time.perf_counter() - taken - sum(c.seconds for c in cameras)  # the poses are a stage of their own
        captures = [None if w is None else _timed_capture(t.stream, t.cameras, w) for t, w in zip(tickets, wanted)]
        n = len(tickets)
        timings = [step_timings(t.frame, taken, step_s, n, units_before, c) for t, c in zip(tickets, cameras)]
        posted: list[Future | None] = [None] * n
        if post is not None:
            posted = [
                _run_now(results.result_bytes, frame_identity(t), res, c.poses, c.calibration, t.settings, tm, every)
                for t, res, c, tm, every in zip(tickets, outs, cameras, timings, post.export_every)
            ]
        return StepDone(outs, cameras, captures, step_s, timings, posted)

    # ------------------------------------------------------------------ background work
    def add_background(self, work: BackgroundWork) -> None:
        self._background.append(work)
        self._wake.set()

    def _pick_background(self) -> BackgroundWork | None:
        for w in [w for w in self._background if not w.has_work()]:  # finished, failed or cancelled
            self._background.remove(w)
        return self._background[0] if self._background else None

    async def _run_unit(self, work: BackgroundWork) -> None:
        self._background.rotate(-1)  # the next job gets the next unit
        t0 = time.perf_counter()
        error = None
        self.step_started = time.monotonic()
        try:
            await self.on_model(work.run_unit)
        except Exception as exc:
            error = exc
        finally:
            self.step_started = None
        dt = time.perf_counter() - t0
        self.background_units += 1
        self.metrics.job_unit_seconds.observe(dt)
        try:
            work.unit_done(error, dt)
        except Exception:
            log.exception("background work: unit_done failed")

    # ------------------------------------------------------------------ post-processing (results.py)
    def _result_producer(
        self,
        s: Session,
        t: StepTicket,
        res: StepResult,
        timings: dict[str, float],
        cams: results.StepCameras,
        posted: Future | None,
    ):
        """The coroutine that makes the step's result message (in the post-processing pool; ``posted``: made on
        the model thread already) and books it."""
        rf = t.frame

        async def produce() -> bytes:
            try:
                if cams.poses:
                    self.metrics.pose_seconds.observe(cams.seconds)
                if posted is not None:
                    data, export = posted.result()
                else:
                    data, export = await self.on_post(
                        results.result_bytes,
                        frame_identity(t),
                        res,
                        cams.poses,
                        cams.calibration,
                        t.settings,
                        timings,
                        s.export.decimation,  # thinned there as the buffer keeps it: the loop copies nothing
                    )
                self.metrics.encode_seconds.observe(timings["encode_s"])
                self.metrics.pack_seconds.observe(timings["pack_s"])
                if export is not None:
                    s.add_export(t.generation, export)
                self.metrics.server_latency.observe(time.perf_counter() - rf.raw.received)
                s.touch()
                return data
            except Exception as exc:
                log.exception("post-processing frame %d of session %s", rf.raw.seq, s.id)
                return pack(
                    ErrorMsg(
                        code="internal", message=f"post-processing failed: {exc.__class__.__name__}", seq=rf.raw.seq
                    )
                )
            finally:
                s.result_done()
                self._wake.set()

        return produce

    # ------------------------------------------------------------------ finish
    async def request_finish(self, s: Session) -> None:
        if s.finished:
            return await self.reject(s, None, "finished", "the stream is already finished")
        if s.frames_processed + s.waiting < 2:
            return await self.reject(s, None, "not_finishable", "a stream needs at least two frames to finish")
        s.request_finish()  # frames sent after this are refused; waiting ones are processed first
        self._advance(s)

    async def _finish(self, s: Session) -> None:
        gen, settings, cameras = s.generation, s.settings, s.cameras
        if s.frames_processed < 2:  # waiting frames were rejected after all
            s.cancel_finish()
            return await self.reject(s, None, "not_finishable", "a stream needs at least two frames to finish")
        if s.persistence is not None:  # the stored state is the unfinished stream: never bring it back
            await s.persistence.invalidate(s.generation)
        try:
            out, cams = await self.on_model(self._finish_stream, s.stream, cameras, settings)
        except StreamError as exc:
            return await self.reject(s, None, "not_finishable", str(exc))
        seq = s.seq_by_index.get(out.index, -1)
        frames = s.frames_processed
        assert cams.calibration is not None  # a stream that ran two frames was calibrated by its first final

        async def produce() -> bytes:
            data, export = await self.on_post(
                results.finished_bytes, frames, out, seq, cams.poses[0], cams.calibration, settings, s.export.decimation
            )
            s.add_export(gen, export)
            return data

        s.chain(produce, replayable=True)

    def _finish_stream(self, stream, cameras: results.StreamCameras, settings: SessionSettings):
        """Model thread: the last frame's final and its camera."""
        out = self.engine.finish(stream)
        (cams,) = results.step_cameras(
            [(cameras, StepResult(out.index, out, None, None), settings, (0, 0))], self.engine.device
        )
        return out, cams

    def queue_depth(self, sessions) -> int:
        return sum(s.waiting for s in sessions)


def _timed_capture(
    stream, cameras: results.StreamCameras, wanted: CaptureRequest
) -> tuple[StreamCapture, float, dict | None]:
    """Model thread: a copy of the stream's state, the seconds it took, and its pose track at that point."""
    t0 = time.perf_counter()
    return capture_stream(stream, wanted.since), time.perf_counter() - t0, cameras.track_state()


@dataclass(frozen=True)
class PostOnModel:
    """The model thread makes the batch's result messages (``RunBatch.post_on_model``); each session's export
    buffer's thinning when the batch was claimed (its item is made thinned to it)."""

    export_every: list[int]


@dataclass(frozen=True)
class StepDone:
    """What the model thread returns for a batch, one entry per frame: the step's result, the cameras, the stream
    copy due for persisting (or None), the timings its message reports, and (``PostOnModel``) the message made."""

    outs: list[StepResult]
    cameras: list[results.StepCameras]
    captures: list[tuple[StreamCapture, float, dict | None] | None]
    step_s: float  # from the claim to the step's maps, poses excluded
    timings: list[dict[str, float]]
    posted: list[Future | None]


def step_timings(
    rf: ReadyFrame, taken: float, step_s: float, batch: int, units_before: int, cams: results.StepCameras
) -> dict[str, float]:
    """The stage seconds a result message reports (``encode_s`` and ``server_s`` are added as it is made)."""
    return {
        "queue_s": taken - rf.raw.received - rf.decode_s,
        "decode_s": rf.decode_s,
        "step_s": step_s,
        "batch": float(batch),
        "job_units": float(units_before - rf.background_units),
        "pose_s": cams.seconds,
    }


def frame_identity(t: StepTicket) -> FrameIdentity:
    rf = t.frame
    return FrameIdentity(rf.raw.seq, rf.raw.msg.ts, t.prev_seq, rf.raw.received)


def _run_now(fn, *args) -> Future:
    """``fn(*args)`` called now, its result or exception in a done Future (read where ``on_post``'s would be)."""
    out: Future = Future()
    try:
        out.set_result(fn(*args))
    except Exception as exc:
        out.set_exception(exc)
    return out

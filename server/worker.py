"""The device worker: holds the model and every session's stream, and runs batched steps.

Threads, and what runs where (the event loop never waits on any of them):
- event loop: message intake, the frame policy, scheduling, sending;
- model thread (one): ``Engine.step`` over a batch, and everything else that touches a ``StreamState``
  (new stream, finish, snapshot, restore), so a stream is never touched by two threads;
- decode pool: image decoding + preprocessing of the next frame of each session while the model runs;
- post pool: focal, PnP poses, encoding and msgpack of results, in parallel across frames and sessions.

Scheduling: a session holds at most one decoded frame ("ready"); the scheduler takes up to ``max_batch``
ready sessions, oldest first, waiting at most ``max_wait_ms`` after the oldest became ready to fill a
batch. One frame per session per step keeps each session's frames in order.

Background work (collection jobs, jobs.py) runs on the same model thread in small units, one at a time,
round-robin between jobs: a unit runs when no stream frame is ready, or after ``job_stream_batches`` stream
batches in a row kept a job waiting. A ready frame therefore waits for one unit at most, never for a job.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
from PIL import Image

from ..core.camera import estimate_focal, solve_pose
from ..core.engine import Engine, StreamError
from ..core.export import fuse
from ..core.preprocess import ImageError, PreparedFrame, decode_image, prepare
from ..core.weights import LoadedWeights
from .encoding import choose_scale, encode_frame
from .metrics import Metrics
from .protocol import (AckMsg, ErrorMsg, FinishedMsg, FrameMsg, MemoryInfo, ModelInfo, ResultMsg,
                       SessionSettings, pack)
from .sessions import Calibration, RawFrame, ReadyFrame, Session
from .settings import ServeSettings

log = logging.getLogger(__name__)

MAX_POSTING = 2  # results of one session in post-processing (poses, encoding) before it gets no new step
SYNTHETIC_NOTICE = ("UNTRAINED MODEL: the server runs synthetic random weights; outputs are a fingerprint of "
                    "the computation, not a reconstruction")


class FrameRejected(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def decode_frame(msg: FrameMsg, max_pixels: int) -> PreparedFrame:
    """Frame message → model input. Image sizes are checked from the header, before any pixel is decoded."""
    if msg.format == "rgb8":
        w, h = msg.width, msg.height
        if not w or not h:
            raise FrameRejected("bad_image", "rgb8 frames need width and height")
        if w * h > max_pixels:
            raise FrameRejected("image_too_large", f"{w}x{h} exceeds the limit of {max_pixels} pixels")
        if len(msg.data) != w * h * 3:
            raise FrameRejected("bad_image", f"rgb8 {w}x{h} needs {w * h * 3} bytes, got {len(msg.data)}")
        rgb = np.frombuffer(msg.data, np.uint8).reshape(h, w, 3)
    else:
        if not msg.data:
            raise FrameRejected("bad_image", "empty image data")
        try:
            with Image.open(io.BytesIO(msg.data)) as im:
                w, h = im.size
        except Image.DecompressionBombError as exc:
            raise FrameRejected("image_too_large", str(exc)) from None
        except Exception:
            raise FrameRejected("bad_image", "cannot decode image data (not a JPEG, PNG or WebP image, or "
                                "truncated)") from None
        if w * h > max_pixels:
            raise FrameRejected("image_too_large", f"{w}x{h} exceeds the limit of {max_pixels} pixels")
        try:
            rgb = decode_image(msg.data)
        except ImageError as exc:
            raise FrameRejected("bad_image", str(exc)) from None
    try:
        return prepare(rgb)
    except ImageError as exc:
        raise FrameRejected("bad_image", str(exc)) from None


class BackgroundWork(Protocol):
    """Model work split into units (a collection job). ``has_work`` and ``unit_done`` run on the event loop,
    ``run_unit`` on the model thread."""

    def has_work(self) -> bool: ...

    def run_unit(self) -> None: ...

    def unit_done(self, error: BaseException | None, seconds: float) -> None: ...


def _memory_info(trace) -> MemoryInfo | None:
    if trace is None:
        return None
    return MemoryInfo(step=trace.step, frame_index=trace.frame_index, similarity=trace.similarity,
                      skipped=trace.skipped, pruned=trace.pruned, mem_tokens=trace.mem_tokens, wm=trace.wm,
                      lm=trace.lm, attn_zeroed_frac=trace.attn_zeroed_frac)


class Worker:
    def __init__(self, engine: Engine, weights: LoadedWeights, preset: str, settings: ServeSettings,
                 metrics: Metrics):
        self.engine, self.weights, self.preset = engine, weights, preset
        self.settings, self.metrics = settings, metrics
        cpus = os.cpu_count() or 2
        self.model_exec = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.decode_pool = ThreadPoolExecutor(max(2, cpus), thread_name_prefix="decode")
        self.post_pool = ThreadPoolExecutor(max(2, cpus), thread_name_prefix="post")
        self._ready: dict[Session, None] = {}  # sessions with a decoded frame, in the order they got it
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self.step_started: float | None = None
        self._background: deque[BackgroundWork] = deque()  # round-robin: the next to get a unit is first
        self._batches_since_unit = 0  # stream batches run while background work waited
        self.background_units = 0  # units completed so far (frames record it when they become ready)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._schedule(), name="worker-scheduler")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        for pool in (self.decode_pool, self.post_pool, self.model_exec):
            pool.shutdown(wait=False, cancel_futures=True)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def model_info(self) -> ModelInfo:
        return ModelInfo(preset=self.preset, weights=self.weights.kind, synthetic=self.weights.synthetic,
                         notice=SYNTHETIC_NOTICE if self.weights.synthetic else None,
                         device=str(self.engine.device))

    async def on_model(self, fn, *args):
        return await self._loop.run_in_executor(self.model_exec, fn, *args)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)  # keep a reference until done
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ streams
    async def open_stream(self, s: Session) -> None:
        s.stream = await self.on_model(self.engine.new_stream, s.settings.preview)
        s.calibration = self._loop.create_future()

    async def restore_stream(self, s: Session, data: bytes) -> None:
        s.stream = await self.on_model(self.engine.restore, data)
        if s.calibration is None:
            s.calibration = self._loop.create_future()

    async def snapshot_stream(self, s: Session) -> bytes:
        """Stream bytes consistent with the session's counters and export buffer (frames are held back
        until the snapshot and the results already computed are in)."""
        s.busy = True
        try:
            data = await self.on_model(self.engine.snapshot, s.stream)
            if s.out_tail is not None:
                await asyncio.wait([s.out_tail])
            return data
        finally:
            s.busy = False
            self._wake.set()

    async def reset(self, s: Session) -> None:
        s.busy = True
        try:
            await s.notify_dropped([(q, "reset") for q in s.clear_waiting()], self.metrics)
            s.generation += 1
            s.stream = await self.on_model(self.engine.new_stream, s.settings.preview)
            s.frames_processed, s.finished, s.finish_sent, s._nth = 0, False, False, 0
            s.last_seq = None  # a new stream: any seq goes again (a reset unbricks a huge seq)
            s.seq_by_index = {}
            s.calibration = self._loop.create_future()
            s.export = type(s.export)(s.max_export_points)
        finally:
            s.busy = False
            self._wake.set()  # frames that became ready meanwhile
        s.send_ordered(pack(AckMsg(action="reset", settings=s.settings)))

    def change_settings(self, s: Session, settings: SessionSettings) -> None:
        s.settings = settings
        s.send_ordered(pack(AckMsg(action="settings", settings=settings)))

    # ------------------------------------------------------------------ intake
    async def accept_frame(self, s: Session, msg: FrameMsg) -> None:
        self.metrics.frames_received.inc()
        s.frames_received += 1
        if s.finished:
            return await self.reject(s, msg.seq, "finished", "the stream is finished; send a reset to start anew")
        if s.last_seq is not None and msg.seq <= s.last_seq:
            return await self.reject(s, msg.seq, "bad_seq", f"seq {msg.seq} is not above the last accepted "
                                     f"seq {s.last_seq}")
        s.last_seq = msg.seq
        if not s.rate.allow():
            return await s.notify_dropped([(msg.seq, "rate_limit")], self.metrics)
        dropped = s.intake(RawFrame(msg, time.perf_counter()))
        self.pump(s)
        await s.notify_dropped(dropped, self.metrics)

    async def reject(self, s: Session, seq: int | None, code: str, message: str) -> None:
        s.frames_rejected += 1
        self.metrics.frames_rejected.labels(code).inc()
        if s.stream_conn is not None:
            await s.stream_conn.send(pack(ErrorMsg(code=code, message=message, seq=seq)))

    def pump(self, s: Session) -> None:
        """Start decoding the session's next waiting frame, if it has none decoded or decoding."""
        if s.closed or s.decoding is not None or s.ready is not None or not s.buffer:
            return
        raw = s.buffer.popleft()
        s.decoding = raw
        self._spawn(self._decode(s, raw))

    async def _decode(self, s: Session, raw: RawFrame) -> None:
        t0 = time.perf_counter()
        error = None
        try:
            prepared = await self._loop.run_in_executor(self.decode_pool, decode_frame, raw.msg,
                                                        self.settings.max_pixels)
        except FrameRejected as exc:
            error = exc
        except Exception as exc:  # a decoder fault must not take the session down
            log.exception("decoding frame %d of session %s", raw.seq, s.id)
            error = FrameRejected("internal", f"decoding failed: {exc.__class__.__name__}")
        dt = time.perf_counter() - t0
        if s.decoding is raw:
            s.decoding = None
        if raw.cancelled or s.closed:  # its drop was reported when it was superseded
            self.pump(s)
            self.maybe_finish(s)
            return
        if error is not None:
            self.pump(s)
            self.maybe_finish(s)
            await self.reject(s, raw.seq, error.code, error.message)
            return
        self.metrics.decode_seconds.observe(dt)
        s.ready = ReadyFrame(raw, prepared, dt, time.perf_counter(), self.background_units)
        self._ready[s] = None
        self._wake.set()

    # ------------------------------------------------------------------ scheduling
    def _pick(self) -> list[Session]:
        for s in [s for s in self._ready if s.ready is None or s.closed]:
            del self._ready[s]
        # a session whose results are still being post-processed waits: its frame policy then drops frames
        # upstream instead of a backlog growing behind pose recovery
        return [s for s in self._ready if not s.busy and s.posting < MAX_POSTING][: self.settings.max_batch]

    async def _schedule(self) -> None:
        max_wait = self.settings.max_wait_ms / 1000
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = self._pick()
            work = self._pick_background()
            if work is not None and (not batch or self._batches_since_unit >= self.settings.job_stream_batches):
                await self._run_unit(work)
                self._batches_since_unit = 0
                if self._pick() or self._pick_background():
                    self._wake.set()
                continue
            if not batch:
                continue
            if len(batch) < self.settings.max_batch and max_wait > 0:
                deadline = min(s.ready.ready_at for s in batch) + max_wait
                while len(batch) < self.settings.max_batch and (left := deadline - time.perf_counter()) > 0:
                    try:
                        await asyncio.wait_for(self._wake.wait(), left)
                    except TimeoutError:
                        break
                    self._wake.clear()
                    batch = self._pick()
            try:
                await self._run_batch(batch)
            except Exception:
                log.exception("batch failed")
            if self._background:
                self._batches_since_unit += 1
            if self._pick() or self._pick_background():
                self._wake.set()

    async def _run_batch(self, batch: list[Session]) -> None:
        items = []
        for s in batch:
            rf = s.ready
            s.ready = None
            del self._ready[s]
            s.in_model = True
            index = s.frames_processed
            s.frames_processed += 1
            prev_seq = s.seq_by_index.get(index - 1)
            s.seq_by_index = {index: rf.raw.seq}
            items.append((s, rf, prev_seq, s.generation, s.settings, s.stream, s.calibration))
            self.pump(s)
        taken = time.perf_counter()
        units_before = self.background_units
        jobs = [(stream, rf.prepared, settings.preview) for s, rf, _, _, settings, stream, _ in items]
        self.step_started = time.monotonic()
        try:
            results = await self.on_model(self._step, jobs)
        except Exception as exc:
            log.exception("model step failed for %d frames", len(items))
            for s, rf, *_ in items:
                s.in_model = False
                await self.reject(s, rf.raw.seq, "internal", f"model step failed: {exc.__class__.__name__}")
            return
        finally:
            self.step_started = None
        step_s = time.perf_counter() - taken
        self.metrics.step_latency.observe(step_s)
        self.metrics.batch_size.observe(len(items))
        self.metrics.frames_processed.inc(len(items))
        for (s, rf, prev_seq, gen, settings, _, cal), res in zip(items, results):
            s.in_model = False
            timings = {"queue_s": taken - rf.raw.received - rf.decode_s, "decode_s": rf.decode_s,
                       "step_s": step_s, "batch": float(len(items)),
                       "job_units": float(units_before - rf.background_units)}
            s.posting += 1
            s.chain(self._result_producer(s, rf, res, prev_seq, gen, settings, cal, timings))
            self.pump(s)
            self.maybe_finish(s)

    def _step(self, jobs):
        for stream, _, preview in jobs:
            stream.preview = preview  # a settings change takes effect at the next step
        return self.engine.step([(stream, frame) for stream, frame, _ in jobs])

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

    # ------------------------------------------------------------------ post-processing
    async def _calibrated(self, cal: asyncio.Future, final, settings: SessionSettings) -> Calibration:
        """Frame 0's final fixes the stream's focal and compact scale; every later pose waits for it."""
        if final is not None and final.index == 0 and not cal.done():
            try:
                c = await self._loop.run_in_executor(self.post_pool, lambda: Calibration(
                    estimate_focal(final.pts3d), choose_scale(final.pts3d, final.conf, settings.conf_thresh)))
            except Exception:
                log.exception("calibration failed")
                c = Calibration(float("nan"), 1e-3)
            if not cal.done():
                cal.set_result(c)
        return await cal

    def _pose(self, out, focal: float):
        return solve_pose(out.pts3d, focal)

    def _result_producer(self, s: Session, rf: ReadyFrame, res, prev_seq, gen, settings, cal, timings):
        async def produce() -> bytes:
            try:
                outs = [o for o in (res.final, res.preview) if o is not None]
                c = await self._calibrated(cal, res.final, settings) if outs else None
                t0 = time.perf_counter()
                poses = await asyncio.gather(*(self._loop.run_in_executor(self.post_pool, self._pose, o, c.focal)
                                               for o in outs))
                timings["pose_s"] = time.perf_counter() - t0
                if outs:
                    self.metrics.pose_seconds.observe(timings["pose_s"])
                pose_of = {id(o): p for o, p in zip(outs, poses)}
                data, export = await self._loop.run_in_executor(
                    self.post_pool, self._encode_result, rf, res, prev_seq, settings, c, pose_of, timings)
                if export is not None and s.generation == gen:
                    s.export.add(*export)
                self.metrics.server_latency.observe(time.perf_counter() - rf.raw.received)
                s.touch()
                return data
            except Exception as exc:
                log.exception("post-processing frame %d of session %s", rf.raw.seq, s.id)
                return pack(ErrorMsg(code="internal", message=f"post-processing failed: {exc.__class__.__name__}",
                                     seq=rf.raw.seq))
            finally:
                s.posting -= 1
                self._wake.set()

        return produce

    def _frame_data(self, out, seq, pose, cal: Calibration, settings: SessionSettings):
        scale = settings.compact_scale or cal.auto_scale
        return encode_frame(out.index, seq, out.kind, out.pts3d, out.conf, out.colors, pose.c2w, pose.valid,
                            cal.focal if np.isfinite(cal.focal) else None, settings, scale)

    def _export_item(self, out, pose, settings: SessionSettings):
        xyz, rgb = fuse(out.pts3d[None], out.conf[None], out.colors[None], settings.conf_thresh)
        return out.index, xyz, rgb, pose.c2w, pose.valid

    def _encode_result(self, rf: ReadyFrame, res, prev_seq, settings, cal, pose_of, timings):
        t0 = time.perf_counter()
        final = preview = export = None
        if res.final is not None:
            p = pose_of[id(res.final)]
            final = self._frame_data(res.final, prev_seq if prev_seq is not None else -1, p, cal, settings)
            export = self._export_item(res.final, p, settings)
        if res.preview is not None:
            preview = self._frame_data(res.preview, rf.raw.seq, pose_of[id(res.preview)], cal, settings)
        msg = ResultMsg.model_construct(type="result", seq=rf.raw.seq, frame_index=res.frame_index,
                                        ts=rf.raw.msg.ts, final=final, preview=preview,
                                        memory=_memory_info(res.memory), timings=timings)
        timings["encode_s"] = time.perf_counter() - t0
        timings["server_s"] = time.perf_counter() - rf.raw.received
        data = pack(msg)
        self.metrics.encode_seconds.observe(time.perf_counter() - t0)
        return data, export

    # ------------------------------------------------------------------ finish
    async def request_finish(self, s: Session) -> None:
        if s.finished:
            return await self.reject(s, None, "finished", "the stream is already finished")
        if s.frames_processed + s.waiting < 2:
            return await self.reject(s, None, "not_finishable", "a stream needs at least two frames to finish")
        s.finished = True  # frames sent after this are refused; waiting ones are processed first
        self.maybe_finish(s)

    def maybe_finish(self, s: Session) -> None:
        if s.finished and not s.finish_sent and s.pipeline_empty() and not s.busy and not s.closed:
            s.finish_sent = True
            self._spawn(self._finish(s))

    async def _finish(self, s: Session) -> None:
        gen, settings, cal = s.generation, s.settings, s.calibration
        if s.frames_processed < 2:  # waiting frames were rejected after all
            s.finished = s.finish_sent = False
            return await self.reject(s, None, "not_finishable", "a stream needs at least two frames to finish")
        try:
            out = await self.on_model(self.engine.finish, s.stream)
        except StreamError as exc:
            return await self.reject(s, None, "not_finishable", str(exc))
        seq = s.seq_by_index.get(out.index, -1)
        frames = s.frames_processed

        async def produce() -> bytes:
            c = await self._calibrated(cal, None, settings)
            pose = await self._loop.run_in_executor(self.post_pool, self._pose, out, c.focal)

            def encode():
                return (pack(FinishedMsg.model_construct(type="finished", frames=frames, final=self._frame_data(
                    out, seq, pose, c, settings))), self._export_item(out, pose, settings))

            data, export = await self._loop.run_in_executor(self.post_pool, encode)
            if s.generation == gen:
                s.export.add(*export)
            return data

        s.chain(produce)

    def queue_depth(self, sessions) -> int:
        return sum(s.waiting for s in sessions)

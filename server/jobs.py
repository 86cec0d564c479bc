"""Collection jobs: uploaded images reconstructed in the unordered mode, on the worker that runs the streams.

A job's model work is ``core.unordered.UnorderedSteps``: small units that the worker's scheduler runs
between streaming batches (worker.py), so a stream's frame waits for one unit at most, never for a job.

Life of a job: an upload is received into the job's own temporary folder, checked and decoded (uploads.py;
a refused upload never becomes a job) → ``queued`` → ``running`` → ``finishing`` (poses and result files, off
the model thread) → ``done`` or ``failed``. DELETE cancels it (a unit already on the model thread completes
and is discarded) and removes it with its folder; finished jobs are removed ``job_ttl_s`` after they end.
Progress goes to REST polling and, when the job is attached to a session, to that session's WebSocket.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core.export import fuse
from ..core.unordered import UnorderedError, UnorderedSteps
from .auth import token_hash
from .exports import ExportBuffer, ExportKind, export_bytes
from .protocol import JobError, JobMsg, JobStatus, pack
from .sessions import CapacityError
from .uploads import UploadLimits, UploadRefused, read_collection, receive_body

if TYPE_CHECKING:
    from .metrics import Metrics
    from .sessions import Session
    from .settings import ServeSettings
    from .worker import Worker

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25  # running jobs send at most about four progress messages a second
RESULT_FILE = "result.npz"


class JobDownloadName(StrEnum):
    npz = RESULT_FILE
    ply = ExportKind.ply.value
    glb = ExportKind.glb.value
    trajectory = ExportKind.trajectory.value
    transforms = ExportKind.transforms.value
    mcap = ExportKind.mcap.value


DOWNLOADS = [d.value for d in JobDownloadName]
ENDED = ("done", "failed", "cancelled")


class JobNotReady(RuntimeError):
    """The job has no result (yet, or ever)."""


class Job:
    def __init__(
        self, steps: UnorderedSteps, folder: Path, session: Session | None, conf_thresh: float, manager: JobManager
    ):
        self.id = uuid.uuid4().hex
        self.token = secrets.token_urlsafe(24)  # returned once at creation, then forgotten
        self.token_hash = token_hash(self.token)
        self.steps: UnorderedSteps | None = steps
        self.images, self.units_total, self.input_names = steps.n, steps.units_total, list(steps.names)
        self.folder, self.session, self.conf_thresh = folder, session, conf_thresh
        self.manager = manager
        self.state = "queued"
        self.created = time.monotonic()
        self.ended: float | None = None
        self.units_done = 0
        self.error: JobError | None = None
        self.order: list[int] | None = None
        self.frame_names: list[str] = []
        self.export: ExportBuffer | None = None
        self.focal: float | None = None
        self._sent_at = 0.0
        self._sent_key: tuple | None = None

    # ------------------------------------------------------------------ the worker's side (BackgroundWork)
    def has_work(self) -> bool:
        return self.state in ("queued", "running") and self.steps is not None and not self.steps.done

    def run_unit(self) -> None:
        assert self.steps is not None  # the worker asks has_work() first
        self.steps.run_unit()  # model thread; the event loop reads only plain counters of ``steps``

    def unit_done(self, error: BaseException | None, seconds: float) -> None:
        self.manager.after_unit(self, error)

    # ------------------------------------------------------------------ status
    def status(self) -> JobStatus:
        now = time.monotonic()
        steps = self.steps
        stage = stage_done = stage_total = None
        if self.state == "queued":
            stage, stage_done, stage_total = "encode", 0, self.images
        elif self.state == "running" and steps is not None:
            stage, stage_done, stage_total = steps.stage, steps.stage_done, steps.stage_total
        elif self.state == "finishing":
            stage, stage_done, stage_total = "poses", 0, self.images
        expires = None
        if self.ended is not None:
            expires = max(0.0, self.manager.settings.job_ttl_s - (now - self.ended))
        return JobStatus(
            id=self.id,
            state=self.state,
            stage=stage,
            units_done=self.units_done,
            units_total=self.units_total,
            stage_done=stage_done or 0,
            stage_total=stage_total or 0,
            images=self.images,
            session_id=self.session.id if self.session is not None else None,
            order=self.order,
            downloads=list(DOWNLOADS) if self.state == "done" else [],
            error=self.error,
            elapsed_s=(self.ended or now) - self.created,
            expires_in_s=expires,
        )

    @property
    def result_path(self) -> Path:
        return self.folder / RESULT_FILE


class JobManager:
    """The jobs of one worker: creation from an upload (within capacity), progress, results, removal."""

    def __init__(self, settings: ServeSettings, worker: Worker, metrics: Metrics):
        self.settings, self.worker, self.metrics = settings, worker, metrics
        self.jobs: dict[str, Job] = {}
        self.root: Path | None = None
        self._receiving = 0  # uploads under way: they hold a slot
        self._tasks: set[asyncio.Task] = set()
        self._evictor: asyncio.Task | None = None

    @property
    def limits(self) -> UploadLimits:
        s = self.settings
        return UploadLimits(max_files=s.job_max_files, max_bytes=s.job_max_bytes, max_pixels=s.max_pixels)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        base = self.settings.job_dir or Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        # one private folder per process (mode 0700): jobs' folders are made inside it, under generated names
        self.root = Path(tempfile.mkdtemp(prefix=f"spann3r-jobs-{self.settings.worker_id}-", dir=base))
        self._evictor = asyncio.create_task(self._evict_loop(), name="job-evictor")

    async def stop(self) -> None:
        if self._evictor:
            self._evictor.cancel()
        for job in list(self.jobs.values()):
            await self.remove(job, "server shutting down")
        if self.root is not None:
            await asyncio.to_thread(shutil.rmtree, self.root, True)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ creation
    async def create(
        self,
        body: AsyncIterator[bytes],
        content_type: str | None,
        content_length: int | None,
        session: Session | None = None,
        conf_thresh: float = 1e-3,
    ) -> Job:
        """Receive, check and decode an upload, then queue its job. Raises ``UploadRefused`` (nothing is kept)
        or ``CapacityError``."""
        if len(self.jobs) + self._receiving >= self.settings.max_jobs:
            self.metrics.jobs_refused.labels("capacity").inc()
            raise CapacityError(
                f"the server holds its maximum of {self.settings.max_jobs} jobs; retry later or delete a finished job"
            )
        self._receiving += 1
        folder = Path(tempfile.mkdtemp(prefix="job-", dir=self.root))
        try:
            parts = await receive_body(body, content_type, content_length, folder, self.limits)
            frames = await asyncio.get_running_loop().run_in_executor(
                self.worker.job_decode_pool, read_collection, parts, self.limits
            )
            for part in parts:  # decoded: the upload itself is no longer needed
                part.path.unlink(missing_ok=True)
            b = self.settings.job_batch
            steps = UnorderedSteps(self.worker.engine, frames, pair_batch=b, candidate_batch=b, encode_batch=b)
        except BaseException as exc:
            await asyncio.to_thread(shutil.rmtree, folder, True)
            if isinstance(exc, UploadRefused):
                self.metrics.jobs_refused.labels(exc.code).inc()
            raise
        finally:
            self._receiving -= 1
        job = Job(steps, folder, session, conf_thresh, self)
        self.jobs[job.id] = job
        self.metrics.jobs_created.inc()
        self.metrics.active_jobs.set(len(self.jobs))
        log.info(
            "job %s: %d images, %d units%s",
            job.id,
            job.images,
            job.units_total,
            f", attached to session {session.id}" if session else "",
        )
        self.worker.add_background(job)
        self._notify(job)
        return job

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    # ------------------------------------------------------------------ progress (event loop)
    def after_unit(self, job: Job, error: BaseException | None) -> None:
        if job.state not in ("queued", "running"):  # cancelled while its last unit ran
            return
        if error is not None:
            code = "unordered" if isinstance(error, UnorderedError) else "internal"
            if code == "internal":
                log.error("job %s: unit failed", job.id, exc_info=error)
            message = str(error) if code == "unordered" else f"model work failed: {error.__class__.__name__}"
            return self._end(job, "failed", JobError(code=code, message=message))
        assert job.steps is not None  # ended jobs returned above
        job.units_done = job.steps.units_done
        job.state = "running"
        if job.steps.done:
            job.state = "finishing"
            self._spawn(self._finish(job))
        self._notify(job)

    async def _finish(self, job: Job) -> None:
        """Poses, the npz and the export cloud, in the post-processing pool (the model thread is not needed)."""
        loop = asyncio.get_running_loop()
        assert job.steps is not None
        try:
            result = await loop.run_in_executor(self.worker.post_pool, job.steps.finish)
            export = await loop.run_in_executor(self.worker.post_pool, self._write_result, job, result)
        except Exception as exc:
            if job.state == "finishing":
                log.exception("job %s: finishing failed", job.id)
                self._end(
                    job,
                    "failed",
                    JobError(code="internal", message=f"writing the result failed: {exc.__class__.__name__}"),
                )
            return
        if job.state != "finishing":  # cancelled meanwhile: the result may have landed after the folder went
            await asyncio.to_thread(shutil.rmtree, job.folder, True)
            return
        job.export = export
        job.focal = float(result.reconstruction.focal)
        job.order, job.frame_names = result.order.tolist(), list(result.reconstruction.names)
        self._end(job, "done")

    def _write_result(self, job: Job, result) -> ExportBuffer:
        result.save_npz(job.result_path)  # the layout of ``spann3r reconstruct --unordered``
        rec = result.reconstruction
        export = ExportBuffer(self.settings.max_export_points)
        for i in range(len(rec.pts3d)):  # frame index = position in the chosen order, as in the npz
            xyz, rgb = fuse(rec.pts3d[i : i + 1], rec.conf[i : i + 1], rec.colors[i : i + 1], job.conf_thresh)
            export.add(i, xyz, rgb, rec.poses[i].astype(np.float64), bool(rec.pose_valid[i]))
        return export

    def _end(self, job: Job, state: str, error: JobError | None = None) -> None:
        job.state, job.error, job.ended = state, error, time.monotonic()
        job.steps = None  # encoder tokens and pending outputs go with it
        self.metrics.jobs_ended.labels(state).inc()
        log.info("job %s %s%s", job.id, state, f": {error.message}" if error else "")
        self._notify(job)

    def _notify(self, job: Job) -> None:
        """A ``job`` message to the attached session: on every state or stage change, else throttled."""
        s = job.session
        if s is None or s.closed:
            return
        status = job.status()
        key = (status.state, status.stage)
        now = time.monotonic()
        if key == job._sent_key and now - job._sent_at < PROGRESS_INTERVAL_S:
            return
        job._sent_key, job._sent_at = key, now
        s.send_ordered(pack(JobMsg(job=status)))

    # ------------------------------------------------------------------ results
    def _require_done(self, job: Job) -> None:
        if job.state != "done":
            detail = f"the job is {job.state}" + (f": {job.error.message}" if job.error else "")
            raise JobNotReady(detail + ("" if job.state in ENDED else "; poll GET /v1/jobs/{id} until it is done"))

    async def result_bytes(self, job: Job, name: str) -> bytes:
        """A download of a done job (PLY / GLB / trajectory / transforms.json); the npz is ``result_path``."""
        self._require_done(job)
        kind = ExportKind(name)
        names = [f"images/{n}" for n in job.frame_names]
        assert job.export is not None and job.focal is not None  # a done job has its result
        return await asyncio.to_thread(export_bytes, job.export, job.focal, kind, names)

    def result_file(self, job: Job) -> Path:
        self._require_done(job)
        return job.result_path

    # ------------------------------------------------------------------ removal
    async def remove(self, job: Job, reason: str = "deleted") -> None:
        """Cancel (if still running) and forget a job, and delete its folder."""
        if self.jobs.pop(job.id, None) is None:
            return
        if job.state not in ENDED:
            self._end(job, "cancelled", JobError(code="cancelled", message=reason))
        self.metrics.active_jobs.set(len(self.jobs))
        await asyncio.to_thread(shutil.rmtree, job.folder, True)
        log.info("job %s removed (%s)", job.id, reason)

    async def _evict_loop(self) -> None:
        period = min(5.0, self.settings.job_ttl_s / 4)
        while True:
            await asyncio.sleep(period)
            await self.evict_expired()

    async def evict_expired(self) -> int:
        now, n = time.monotonic(), 0
        for job in list(self.jobs.values()):
            if job.ended is not None and now - job.ended > self.settings.job_ttl_s:
                await self.remove(job, "expired")
                n += 1
        return n

"""Wiring of one worker process: settings, metrics, the model (loaded in the background, so /healthz answers
at once and /readyz says when the model is in), the worker, the session manager and the job manager."""

from __future__ import annotations

import asyncio
import logging

from ..core.config import ModelConfig
from ..core.engine import Engine
from ..core.weights import LoadedWeights, load_engine
from .jobs import JobManager
from .metrics import Metrics
from .sessions import SessionManager
from .settings import ServeSettings
from .worker import Worker

log = logging.getLogger(__name__)


def preset_name(cfg: ModelConfig) -> str:
    """The preset a model config equals ("official", "tiny"), else "custom"."""
    return "official" if cfg == ModelConfig() else "tiny" if cfg == ModelConfig.tiny() else "custom"


class NotReady(RuntimeError):
    pass


def load_engine_for(settings: ServeSettings) -> tuple[Engine, LoadedWeights]:
    """The model of the settings, through core's loader (the CLI's ``reconstruct`` uses the same one)."""
    return load_engine(settings.weights, settings.device, settings.model, settings.threads, settings.precision)


class Service:
    def __init__(self, settings: ServeSettings, engine: Engine | None = None, weights: LoadedWeights | None = None):
        self.settings = settings
        self.metrics = Metrics(settings.device)
        self._engine, self._weights = engine, weights
        self._worker: Worker | None = None
        self._manager: SessionManager | None = None
        self._jobs: JobManager | None = None
        self.load_error: str | None = None
        self._loader: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        return self._manager is not None and self._jobs is not None and self._worker is not None and self._worker.alive

    # The parts exist once the model is loaded; before that, using them is a 503 (NotReady), never an AttributeError.
    @property
    def worker(self) -> Worker:
        if self._worker is None:
            raise NotReady(self.load_error or "the model is still loading")
        return self._worker

    @property
    def manager(self) -> SessionManager:
        if self._manager is None:
            raise NotReady(self.load_error or "the model is still loading")
        return self._manager

    @property
    def jobs(self) -> JobManager:
        if self._jobs is None:
            raise NotReady(self.load_error or "the model is still loading")
        return self._jobs

    def require_ready(self) -> None:
        if not self.ready:
            raise NotReady(self.load_error or "the model is still loading")

    async def start(self) -> None:
        self._loader = asyncio.create_task(self._load_and_start(), name="model-loader")

    async def _load_and_start(self) -> None:
        try:
            if self._engine is not None and self._weights is not None:
                engine, weights = self._engine, self._weights
            else:
                engine, weights = await asyncio.to_thread(load_engine_for, self.settings)
            preset = preset_name(engine.model.cfg)
            worker = Worker(engine, weights, preset, self.settings, self.metrics)
            await worker.start()
            manager = SessionManager(self.settings, worker, self.metrics)
            self.metrics.queue_depth.set_function(lambda: worker.queue_depth(manager.sessions.values()))
            self._worker = worker
            await manager.start()
            jobs = JobManager(self.settings, worker, self.metrics)
            await jobs.start()
            self._manager, self._jobs = manager, jobs
            log.info(
                "ready: %s model, %s weights on %s (worker %s)",
                preset,
                weights.kind,
                engine.device,
                self.settings.worker_id,
            )
        except Exception as exc:
            self.load_error = f"{exc.__class__.__name__}: {exc}"
            log.error("cannot start the worker: %s", self.load_error)

    async def stop(self) -> None:
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()
        if self._jobs is not None:
            await self._jobs.stop()
        if self._manager is not None:
            await self._manager.stop()
        if self._worker is not None:
            await self._worker.stop()

"""A cluster of workers on Ray: each worker is a Ray actor holding one device (``num_gpus=1``, or a number of CPU
threads), running the same service as a single ``spann3r serve`` process (its worker batches its own sessions);
the ingress (gateway.py) holds the clients' connections and routes each session to its worker.

What Ray does, and we do not: placement of the actors on devices, restarting a dead actor, and telling its callers
that it died (``ActorDiedError`` / ``ActorUnavailableError``). What is ours: the session directory (who owns which
session, with an ownership epoch) and moving a dead worker's sessions. The directory lives in the session store
(store.py), beside the state, because the epoch must fence the writes of a worker presumed dead in the same atomic
step as those writes.

The frames and results do not go through Ray's object store: the gateway relays each connection's WebSocket
bytes to the worker's own HTTP server (on the worker's node address). Ray calls carry only control: ``info``
(liveness and load, polled by every gateway) and ``adopt`` (failover). docs/cluster.md has the measurements behind
this choice.

Ray is imported lazily: the single-process server never needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .sessions import CapacityError
from .settings import ServeSettings
from .store import Owner, OwnershipLost, SessionStore

log = logging.getLogger(__name__)

NAMESPACE = "spann3r"
ACTOR_PREFIX = "spann3r-worker-"
INFO_TIMEOUT_S = 5.0  # a worker slower than this to answer is skipped for new sessions, not declared dead


# ------------------------------------------------------------------------------------------------ Ray


# Ray replaces 127.0.0.1 by the machine's network address unless this switch (meant for single-node clusters on
# laptops) is off; it is read when ray is imported, by this process and by every Ray process it starts.
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def keep_ray_on_loopback() -> None:
    """All of Ray's traffic on 127.0.0.1 (a local cluster): call before ray is imported."""
    os.environ[LOOPBACK_SWITCH] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and constants.ENABLE_RAY_CLUSTER:
        raise RuntimeError(f"ray was imported before {LOOPBACK_SWITCH}=0 was set: it would use the network address")


def init_ray(settings: ServeSettings, num_cpus: int | None = None) -> None:
    """Join ``settings.ray_address``, or start a local Ray; a local one (or one on a loopback address) keeps all
    its traffic on 127.0.0.1."""
    host = (settings.ray_address or "127.0.0.1").rsplit(":", 1)[0]
    if host == "localhost" or _is_loopback(host):
        keep_ray_on_loopback()
    import ray

    if ray.is_initialized():
        return
    if settings.ray_address:
        ray.init(address=settings.ray_address, namespace=NAMESPACE, configure_logging=False)
    else:
        ray.init(namespace=NAMESPACE, num_cpus=num_cpus, include_dashboard=False, configure_logging=False)
    log.info("Ray: %s", ray.get_runtime_context().gcs_address)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def worker_settings(settings: ServeSettings, worker_id: str) -> dict[str, Any]:
    """The settings of one worker actor: the ingress's, as a worker (its own port, claims in the directory)."""
    d = settings.model_dump(mode="json")
    d.update(cluster=0, ray_address=None, cluster_worker=True, port=0, worker_id=worker_id, tls_cert=None, tls_key=None)
    d["api_key"] = settings.api_key.get_secret_value() if settings.api_key else None
    return d


def start_workers(settings: ServeSettings, n: int, first: int = 0) -> list:
    """Start ``n`` worker actors named ``spann3r-worker-w<i>`` (``first`` ≤ i); returns their handles once every
    one has its model loaded and answers. Keep the handles: Ray ends an actor when its creator drops the last
    one."""
    import ray

    gpu = settings.device.startswith("cuda")
    actor_class = ray.remote(WorkerActor)
    handles: list[Any] = []
    for i in range(first, first + n):
        wid = f"w{i}"
        handles.append(
            actor_class.options(
                name=ACTOR_PREFIX + wid,
                namespace=NAMESPACE,
                num_gpus=1 if gpu else 0,
                num_cpus=1 if gpu else (settings.threads or 1),
                max_restarts=-1,  # Ray brings a dead worker back (empty: its sessions move to the live ones)
                max_task_retries=0,
                max_concurrency=8,  # info polls must not queue behind an adopt
            ).remote(worker_settings(settings, wid))
        )
    ray.get([h.info.remote() for h in handles])
    return handles


def worker_ids() -> list[str]:
    """The workers on the Ray cluster this process joined (by their actor names)."""
    import ray

    return sorted(
        e["name"][len(ACTOR_PREFIX) :]
        for e in ray.util.list_named_actors(all_namespaces=True)
        if e["namespace"] == NAMESPACE and e["name"].startswith(ACTOR_PREFIX)
    )


class WorkerActor:
    """One worker: the single-process service (create_app) on its own event loop thread, on a free port of this
    node's address. Ray restarts it after a crash; it comes back empty (its sessions were moved on)."""

    def __init__(self, settings: dict[str, Any]):
        import uvicorn

        from .app import create_app, uvicorn_config
        from .service import load_engine_for

        # each incarnation has its own worker id (``w0-<8 hex>``): a restarted actor holds no session, and the
        # directory's owners name the incarnation that held them
        settings = {**settings, "worker_id": f"{settings['worker_id']}-{uuid.uuid4().hex[:8]}"}
        self.settings = ServeSettings(**settings)
        engine, weights = load_engine_for(self.settings)
        self.app = create_app(self.settings, engine, weights)
        host = _node_address()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        self.url = f"http://{host}:{sock.getsockname()[1]}"
        # the gateway forwards the client's Host and scheme: the URLs a worker hands out point at the ingress
        self.server = uvicorn.Server(uvicorn_config(self.app, self.settings, forwarded_allow_ips="*"))
        self.loop = asyncio.new_event_loop()
        threading.Thread(
            target=self.loop.run_until_complete, args=(self.server.serve(sockets=[sock]),), daemon=True
        ).start()
        service = self.app.state.service
        deadline = time.monotonic() + 600
        while not (self.server.started and service.ready):
            if service.load_error or time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.settings.worker_id} did not start: {service.load_error}")
            time.sleep(0.01)

    def _call(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def info(self) -> dict[str, Any]:
        """Liveness and load (the gateways poll it)."""
        service = self.app.state.service
        return {
            "worker_id": self.settings.worker_id,
            "url": self.url,
            "pid": os.getpid(),
            "ready": service.ready,
            "sessions": len(service.manager.sessions) if service.ready else 0,
            "max_sessions": self.settings.max_sessions,
        }

    def adopt(self, session_id: str, worker: str, epoch: int) -> str:
        """Take over a session of the dead ``worker`` (claim from it at ``epoch``, restore from the store).
        Returns "adopted", "taken" (another worker was faster), "lost" (no state to restore) or "full"."""

        async def run() -> str:
            try:
                await self.app.state.service.manager.adopt(session_id, Owner(worker, epoch))
                return "adopted"
            except OwnershipLost:
                return "taken"
            except KeyError:
                return "lost"
            except CapacityError:
                return "full"

        return self._call(run())


def _node_address() -> str:
    import ray

    return ray.util.get_node_ip_address()


# ------------------------------------------------------------------------------------------------ the gateway's view


def actor_of(worker_id: str) -> str:
    """The actor name part of a worker id ``<actor>-<incarnation>``."""
    return worker_id.rsplit("-", 1)[0]


@dataclass
class WorkerView:
    """What a gateway knows of one worker actor (by its name, e.g. ``w0``) and its current incarnation."""

    name: str
    actor: Any
    worker_id: str | None = None  # the current incarnation's id (``w0-<8 hex>``); None until it first answers
    url: str | None = None
    pid: int | None = None
    live: bool = False  # answered the last poll
    dead: bool = False  # Ray reported it dead or restarting at the last poll
    ready: bool = False
    sessions: int = 0
    max_sessions: int = 0
    placing: int = 0  # new sessions this gateway is sending it, which its polls cannot count yet

    @property
    def free(self) -> int:
        return self.max_sessions - self.sessions - self.placing if self.live and self.ready else 0


@dataclass
class FailoverReport:
    adopted: dict[str, str] = field(default_factory=dict)  # session id → its new worker
    lost: list[str] = field(default_factory=list)  # no state to restore: released
    seconds: float = 0.0


def pick_worker(workers: list[WorkerView]) -> WorkerView | None:
    """The policy for a new (or adopted) session: the live worker with the most free slots, None when full."""
    candidates = [w for w in workers if w.free > 0]
    return max(candidates, key=lambda w: (w.free, -w.sessions), default=None)


def is_orphan(owner: Owner, workers: dict[str, WorkerView]) -> bool:
    """A session whose owner is gone: its actor is dead, or now runs another incarnation (a restart: Ray brought it
    back empty). An owner this gateway has not heard from yet is not judged."""
    w = workers.get(actor_of(owner.worker))
    return w is not None and (w.dead or (w.live and w.worker_id is not None and w.worker_id != owner.worker))


class WorkerPool:
    """The workers seen by one gateway: found by name in Ray and polled for liveness and load. After each poll the
    directory is swept: the sessions of an owner that is gone (``is_orphan``) are adopted by live workers. Every
    gateway sweeps; the directory's compare-and-set claims let exactly one move each session."""

    def __init__(self, store: SessionStore, poll_s: float = 0.25):
        self.store, self.poll_s = store, poll_s
        self.workers: dict[str, WorkerView] = {}  # by actor name
        self.failovers: list[FailoverReport] = []
        self.on_failover: Callable[[FailoverReport], None] | None = None
        self._task: asyncio.Task | None = None
        self._sweeping = asyncio.Lock()
        self._refreshed = asyncio.Event()  # set (and replaced) after every refresh: for those waiting on a move

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._poll(), name="worker-pool")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

    def _discover(self) -> None:
        import ray

        for name in worker_ids():
            if name not in self.workers:
                self.workers[name] = WorkerView(name, ray.get_actor(ACTOR_PREFIX + name, namespace=NAMESPACE))

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.refresh()
            except Exception:
                log.exception("polling the workers failed")

    async def refresh(self) -> None:
        try:
            await asyncio.to_thread(self._discover)
            await asyncio.gather(*(self._ask(w) for w in list(self.workers.values())))
            await self.sweep()
        finally:
            done, self._refreshed = self._refreshed, asyncio.Event()
            done.set()

    async def next_refresh(self, timeout: float) -> None:
        """Until the next refresh (poll or suspicion) has ended, or ``timeout``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._refreshed.wait(), timeout)

    async def _ask(self, w: WorkerView) -> None:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        try:
            info = await asyncio.wait_for(w.actor.info.remote(), INFO_TIMEOUT_S)
        except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
            if not w.dead:
                log.warning("worker %s is gone (%s)", w.worker_id or w.name, exc.__class__.__name__)
            w.live, w.ready, w.dead = False, False, True
            return
        except TimeoutError:  # slow is not dead: its sessions stay, it gets no new ones
            w.ready = False
            return
        if w.worker_id is not None and info["worker_id"] != w.worker_id:
            log.warning("worker %s restarted as %s", w.worker_id, info["worker_id"])
        w.worker_id, w.url, w.pid, w.ready = info["worker_id"], info["url"], info["pid"], info["ready"]
        w.sessions, w.max_sessions, w.live, w.dead = info["sessions"], info["max_sessions"], True, False

    async def suspect(self, worker_id: str) -> None:
        """A relay to the worker broke: ask it now rather than at the next poll, and move what it lost."""
        w = self.workers.get(actor_of(worker_id))
        if w is not None:
            await self._ask(w)
            await self.sweep()

    def route(self, owner: Owner) -> WorkerView | None:
        """The worker to send a session's requests to now: its owner, if that incarnation is up."""
        w = self.workers.get(actor_of(owner.worker))
        if w is None or not (w.live and w.ready and w.url) or w.worker_id != owner.worker:
            return None
        return w

    def reserve(self) -> WorkerView | None:
        """Pick the worker for a new session and hold its slot until ``placed``: creations that arrive together
        (a fleet starting) spread over the workers instead of all going where the last poll saw the most room."""
        w = pick_worker(list(self.workers.values()))
        if w is not None:
            w.placing += 1
        return w

    def placed(self, w: WorkerView, created: bool) -> None:
        """The creation sent to ``w`` was answered: count the new session there until the next poll does."""
        w.placing -= 1
        if created:
            w.sessions += 1

    async def _adopt(self, session_id: str, owner: Owner, target: WorkerView) -> str | None:
        """One orphan's adoption by ``target`` (its slot reserved): the worker's outcome, None when the call failed
        (the target died too, or the store failed: the next sweep tries again)."""
        try:
            outcome = await target.actor.adopt.remote(session_id, owner.worker, owner.epoch)
        except Exception as exc:
            log.warning("adopting session %s on %s failed: %s", session_id, target.name, exc)
            self.placed(target, created=False)
            return None
        self.placed(target, created=outcome == "adopted")
        if outcome == "full":
            target.sessions = target.max_sessions
        return outcome

    async def sweep(self) -> FailoverReport:
        """Move every orphaned session onto a live worker: the adoptions run at once (a worker restores several
        sessions' state from the store concurrently), so a dead worker's N sessions move in about the time of one."""
        report = FailoverReport()
        if self._sweeping.locked():
            return report
        async with self._sweeping:
            owners = await asyncio.to_thread(self.store.owners)
            orphans = {sid: o for sid, o in owners.items() if is_orphan(o, self.workers)}
            if not orphans:
                return report
            t0 = time.perf_counter()
            placements = []  # every orphan's target first (reserve spreads them), then all adopts at once
            for session_id, owner in orphans.items():
                target = self.reserve()
                if target is None:
                    log.error("no live worker has room for session %s of %s", session_id, owner.worker)
                    continue
                placements.append((session_id, owner, target))
            outcomes = await asyncio.gather(*(self._adopt(sid, owner, target) for sid, owner, target in placements))
            for (session_id, _, target), outcome in zip(placements, outcomes):
                if outcome == "adopted":
                    report.adopted[session_id] = target.worker_id or target.name
                elif outcome == "lost":
                    report.lost.append(session_id)
            report.seconds = time.perf_counter() - t0
        if report.adopted or report.lost:
            log.warning(
                "failover: %d sessions moved, %d lost (%.2f s)", len(report.adopted), len(report.lost), report.seconds
            )
            self.failovers.append(report)
            if self.on_failover is not None:
                self.on_failover(report)
        return report

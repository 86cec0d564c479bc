"""Benchmark of the cluster mode (server/cluster.py, server/gateway.py): aggregate results/s with 1 and 2 worker
actors (tiny model, synthetic weights, one CPU thread each), the gateway's cost on the frame path, and the failover
time (a worker SIGKILLed → the first result of each of its sessions after it resumed on the other worker).

Everything runs on this machine over loopback: a local Ray (all traffic on 127.0.0.1), the workers as Ray actors,
one gateway (``spann3r serve --ray-address``) in a child process, a folder store, and clients in this process that
stream frames with a window of 2 in flight (frame policy "queue": nothing is dropped, so results/s is what the
workers deliver).

    python bench/cluster.py --json bench/results/cluster_cpu.json

Per phase it prints results/s through the gateway and (1 worker) straight to the worker, the gateway process's CPU
time per relayed result, client latency p50/p99, and the ratios against the targets: 2 workers ≥ 1.7× one worker's
results/s; failover ≤ 5 s. Take numbers on an otherwise idle machine: the load average is printed next to them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
FRAMES = REPO.parent / "shared" / "reference" / "spann3r" / "frames_A"
TARGETS = {"scaling_2_workers": 1.7, "failover_s": 5.0}


def frames(n: int = 8) -> list[tuple[str, np.ndarray]]:
    import cv2

    paths = sorted(FRAMES.glob("*.png"))[:n]
    return [(p.name, cv2.resize(cv2.imread(str(p))[:, :, ::-1], (320, 240))) for p in paths]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gateway(gcs: str, state: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spann3r.cli",
            "serve",
            "--ray-address",
            gcs,
            "--state-dir",
            str(state),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the gateway did not start")


def wait_for_workers(url: str, n: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        live = [w for w in httpx.get(f"{url}/v1/cluster").json()["workers"] if w["live"] and w["ready"]]
        if len(live) >= n:
            return
        time.sleep(0.2)
    raise RuntimeError(f"fewer than {n} workers live")


async def one_session(url: str, imgs, seconds: float, out: dict, kill_at: dict | None = None) -> None:
    """Stream frames in a loop for ``seconds``; record result times and latencies (a reconnect re-sends nothing:
    for throughput, a live source)."""
    from spann3r.client import StreamClient
    from spann3r.client.client import reconnecting_stream
    from spann3r.server.protocol import HelloMsg, ResultMsg

    client = StreamClient(url)
    created = await client.create_session({"encoding": "compact", "frame_policy": "queue", "preview": False})
    out["worker"] = created.worker_id
    stop_at = time.monotonic() + seconds

    def source():
        i = 0
        while time.monotonic() < stop_at:
            yield imgs[i % len(imgs)]
            i += 1

    sent_at: dict[int, float] = {}
    out.update(results=[], latencies=[], hellos=[])
    async for m in reconnecting_stream(url, _timed(source(), sent_at), client=client, window=2, encoding="jpeg"):
        now = time.monotonic()
        if isinstance(m, HelloMsg):
            out["hellos"].append(now)
        elif isinstance(m, ResultMsg):
            out["results"].append((now, len(out["hellos"]) - 1))
            if m.seq in sent_at:
                out["latencies"].append(now - sent_at[m.seq])
    await client.delete()
    await client.close()


def _timed(frames_iter, sent_at: dict[int, float]):
    for seq, f in enumerate(frames_iter):
        sent_at[seq] = time.monotonic()
        yield f


def run_load(urls: list[str], sessions: int, seconds: float, imgs, kill=None) -> list[dict]:
    async def main():
        outs = [{} for _ in range(sessions)]
        tasks = [asyncio.create_task(one_session(urls[i % len(urls)], imgs, seconds, outs[i])) for i in range(sessions)]
        if kill is not None:
            await kill(outs)
        await asyncio.gather(*tasks)
        return outs

    return asyncio.run(main())


def summary(outs: list[dict], seconds: float, warmup: float, t0: float) -> dict:
    times = [t for o in outs for t, _ in o["results"] if t - t0 >= warmup]
    lat = np.array([x for o in outs for x in o["latencies"]]) * 1000
    return {
        "results_per_s": round(len(times) / (seconds - warmup), 2),
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1), "p99": round(float(np.percentile(lat, 99)), 1)}
        if len(lat)
        else None,
    }


def pin(pid: int, core: int) -> None:
    """Keep a worker process (every thread it has, and so every thread it starts) on one core: a worker is given
    one CPU, but its post-processing pool would otherwise spread it over every core."""
    for t in psutil.Process(pid).threads():
        os.sched_setaffinity(t.id, {core})


def _busy_s() -> float:
    """CPU seconds the machine has been busy (every core). Ray runs its workers niced (nice 15): their time is
    ``nice``, not ``user``."""
    t = psutil.cpu_times()
    return t.user + getattr(t, "nice", 0.0) + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def measure(urls: list[str], sessions: int, seconds: float, warmup: float, imgs, gateway: psutil.Process | None):
    """Results/s and latency; the CPU of the whole machine per result (every process: clients, ingress, Ray,
    workers), and of the gateway process alone when there is one."""
    cpu0 = gateway.cpu_times() if gateway else None
    busy0 = _busy_s()
    t0 = time.monotonic()
    outs = run_load(urls, sessions, seconds, imgs)
    s = summary(outs, seconds, warmup, t0)
    results = sum(len(o["results"]) for o in outs)
    s["machine_cpu_ms_per_result"] = round(1000 * (_busy_s() - busy0) / results, 2)
    if gateway is not None and cpu0 is not None:
        cpu1 = gateway.cpu_times()
        s["gateway_cpu_ms_per_result"] = round(1000 * (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / results, 2)
    return s


def start_serve_ingress(settings_json: dict, port: int, max_connections: int) -> str:
    """The same gateway app (server/gateway.py) as a Ray Serve ingress deployment (one replica), for comparison:
    requests go through Serve's proxy actor to the replica, which relays to the worker as the gateway does."""
    from ray import serve

    def build():
        from spann3r.server.cluster import WorkerPool
        from spann3r.server.gateway import create_gateway
        from spann3r.server.settings import ServeSettings
        from spann3r.server.store import open_store

        settings = ServeSettings(**settings_json)
        store = open_store(settings.state_dir, settings.state_url)
        assert store is not None
        return create_gateway(settings, store, WorkerPool(store))

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # each WebSocket is one ongoing request for its whole life: size the limit to the connections (default 5)
    deployment = serve.deployment(
        serve.ingress(build)(), max_ongoing_requests=max_connections, ray_actor_options={"num_cpus": 0}
    )
    serve.run(deployment.bind(), name="spann3r", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions-per-worker", type=int, default=4)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=4.0)
    p.add_argument("--serve", action="store_true", help="also measure a Ray Serve ingress (2 workers)")
    p.add_argument("--no-pin", action="store_true", help="let each worker use every core")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    from spann3r.server.cluster import init_ray, keep_ray_on_loopback, start_workers

    keep_ray_on_loopback()
    import ray

    from spann3r.server.settings import ServeSettings

    state = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    settings = ServeSettings(
        model="tiny",
        weights="synthetic",
        threads=1,
        state_dir=state,
        max_fps=1000.0,
        max_sessions=16,
        log_level="warning",
    )
    init_ray(settings, num_cpus=2)
    imgs = frames()
    report: dict = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "ray_node": ray.nodes()[0]["NodeManagerAddress"],
        "sessions_per_worker": args.sessions_per_worker,
        "workers_pinned_to_a_core_each": not args.no_pin,
        "seconds": args.seconds,
    }
    handles = start_workers(settings, 1, 0)
    if not args.no_pin:
        pin(ray.get(handles[0].info.remote())["pid"], 0)
    gateway, url = start_gateway(ray.get_runtime_context().gcs_address, state)
    gw = psutil.Process(gateway.pid)
    try:
        wait_for_workers(url, 1)
        n = args.sessions_per_worker
        worker_url = ray.get(handles[0].info.remote())["url"]
        report["one_worker_direct"] = measure([worker_url], n, args.seconds, args.warmup, imgs, None)
        print("1 worker, straight to the worker:", report["one_worker_direct"], flush=True)
        report["one_worker"] = measure([url], n, args.seconds, args.warmup, imgs, gw)
        print("1 worker, through the gateway:  ", report["one_worker"], flush=True)
        handles += start_workers(settings, 1, 1)
        if not args.no_pin:
            pin(ray.get(handles[1].info.remote())["pid"], 1 % (os.cpu_count() or 1))
        wait_for_workers(url, 2)
        report["two_workers"] = measure([url], 2 * n, args.seconds, args.warmup, imgs, gw)
        print("2 workers, through the gateway: ", report["two_workers"], flush=True)
        if args.serve:
            serve_url = start_serve_ingress(settings.model_dump(mode="json"), free_port(), 4 * n)
            wait_for_workers(serve_url, 2)
            report["two_workers_serve"] = measure([serve_url], 2 * n, args.seconds, args.warmup, imgs, None)
            print("2 workers, through Ray Serve:   ", report["two_workers_serve"], flush=True)
            from ray import serve

            serve.shutdown()

        killed: dict = {}

        async def kill_w0(outs):
            await asyncio.sleep(args.seconds / 2)
            info = ray.get(handles[0].info.remote())
            os.kill(info["pid"], signal.SIGKILL)
            killed.update(at=time.monotonic(), worker=info["worker_id"])

        outs = run_load([url], 2 * n, args.seconds, imgs, kill=kill_w0)
        moved = [o for o in outs if o["worker"] == killed["worker"]]
        gaps = []
        for o in moved:
            after = [t for t, hello in o["results"] if hello >= 1]
            gaps.append(round(min(after) - killed["at"], 2) if after else None)
        survivors = [o for o in outs if o["worker"] != killed["worker"]]
        report["failover"] = {
            "sessions_moved": len(moved),
            "death_to_first_result_s": gaps,
            "survivor_reconnects": sum(len(o["hellos"]) - 1 for o in survivors),
        }
        print("failover:", report["failover"], flush=True)
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)
        ray.shutdown()
    one, two = report["one_worker"]["results_per_s"], report["two_workers"]["results_per_s"]
    worst = max((g for g in report["failover"]["death_to_first_result_s"] if g is not None), default=None)
    report["ratios"] = {
        "scaling_2_workers": {"value": round(two / one, 2), "target": TARGETS["scaling_2_workers"]},
        "failover_s": {"value": worst, "target": TARGETS["failover_s"]},
        "gateway_vs_direct_results": round(one / report["one_worker_direct"]["results_per_s"], 2),
    }
    report["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print("ratios:", json.dumps(report["ratios"]))
    print("load average at end:", report["load_avg_at_end"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

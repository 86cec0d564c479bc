"""Benchmark of the streaming service: N simulated clients streaming JPEG frames at R fps over loopback.

Reports, per output encoding: processed frames/s, end-to-end latency percentiles (frame sent → its result
received), drop rate, bytes per result message, and the server's per-frame overhead (image decode +
preprocessing, result encoding + msgpack, pose recovery) next to the model's step time.

    python bench/service.py --model tiny --clients 4 --fps 5 --duration 20
    python bench/service.py --url http://gpu-box:8000 --clients 8 --fps 15     # against a running server

By default a server runs in this process (uvicorn on 127.0.0.1, a free port), like ``spann3r serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ENCODINGS = {
    "full-f32": {"encoding": "full", "dtype": "float32"},
    "full-f16": {"encoding": "full", "dtype": "float16"},
    "compact": {"encoding": "compact"},
    "compact-s2": {"encoding": "compact", "stride": 2},
}
FRAMES = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "spann3r" / "frames_A"


def load_jpegs(folder: Path, quality: int) -> list[bytes]:
    """Frames encoded once up front: the benchmark measures the service, not the client's encoder."""
    from spann3r.core.sources import iter_frames

    if folder.is_dir():
        images = [rgb for _, rgb in iter_frames(folder)]
    else:  # a textured synthetic sequence when the reference frames are not around
        rng = np.random.default_rng(0)
        base = rng.integers(0, 256, (480, 640 + 80, 3), dtype=np.uint8)
        base = cv2.GaussianBlur(base, (0, 0), 3)
        images = [np.ascontiguousarray(base[:, 10 * i : 10 * i + 640]) for i in range(8)]
    return [
        cv2.imencode(".jpg", cv2.cvtColor(im, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
        for im in images
    ]


async def one_client(url: str, jpegs: list[bytes], settings: dict, fps: float, duration: float, stats: dict):
    from spann3r.client import StreamClient
    from spann3r.server.protocol import DroppedMsg, ErrorMsg, ResultMsg, decode_server_message

    c = StreamClient(url)
    await c.create_session({**settings, "frame_policy": "latest"})
    await c.connect()
    sent: dict[int, float] = {}
    done = asyncio.Event()

    async def send():
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < duration:
            sent[i] = time.monotonic()
            await c.send_frame(jpegs[i % len(jpegs)], "jpeg", seq=i)
            i += 1
            await asyncio.sleep(max(0.0, t0 + i / fps - time.monotonic()))
        stats["sent"] += i
        return i

    async def receive(total_known: asyncio.Future):
        answered = 0
        while not (total_known.done() and answered >= total_known.result()):
            try:
                data = await asyncio.wait_for(c.ws.recv(), 60)
            except TimeoutError:
                break
            now = time.monotonic()
            msg = decode_server_message(data)
            if isinstance(msg, ResultMsg):
                answered += 1
                stats["latency"].append(now - sent[msg.seq])
                stats["processed"] += 1
                if msg.final is not None:  # a full result: a final and (when on) a preview
                    stats["bytes"].append(len(data))
                for key in ("decode_s", "encode_s", "pose_s", "queue_s", "server_s"):
                    stats[key].append(msg.timings.get(key, 0.0))
                stats["step_s"].append(msg.timings["step_s"])
                stats["batch"].append(msg.timings["batch"])
            elif isinstance(msg, DroppedMsg):
                answered += 1
                stats["dropped"] += 1
            elif isinstance(msg, ErrorMsg):
                answered += msg.seq is not None
                stats["errors"] += 1
        done.set()

    total = asyncio.get_running_loop().create_future()
    receiver = asyncio.create_task(receive(total))
    total.set_result(await send())
    await receiver
    await c.delete()
    await c.close()


async def run_phase(url, jpegs, settings, clients, fps, duration) -> dict:
    stats = {
        "sent": 0,
        "processed": 0,
        "dropped": 0,
        "errors": 0,
        "latency": [],
        "bytes": [],
        "decode_s": [],
        "encode_s": [],
        "pose_s": [],
        "queue_s": [],
        "server_s": [],
        "step_s": [],
        "batch": [],
    }
    t0 = time.monotonic()
    await asyncio.gather(*(one_client(url, jpegs, settings, fps, duration, stats) for _ in range(clients)))
    wall = time.monotonic() - t0
    lat = np.array(stats["latency"]) * 1000

    def ms(key):
        return round(float(np.mean(stats[key])) * 1000, 2) if stats[key] else None

    return {
        "frames_sent": stats["sent"],
        "frames_processed": stats["processed"],
        "frames_dropped": stats["dropped"],
        "errors": stats["errors"],
        "processed_fps": round(stats["processed"] / wall, 2),
        "drop_rate": round(stats["dropped"] / max(stats["sent"], 1), 3),
        "latency_ms": {p: round(float(np.percentile(lat, q)), 1) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))}
        if len(lat)
        else None,
        "bytes_per_result": int(np.mean(stats["bytes"])) if stats["bytes"] else None,
        "server_ms_per_frame": {
            "decode": ms("decode_s"),
            "encode_msgpack": ms("encode_s"),
            "pose": ms("pose_s"),
            "queue": ms("queue_s"),
            "received_to_sent": ms("server_s"),
        },
        "model_ms": {
            "step": ms("step_s"),
            "per_frame": round(float(np.mean(np.array(stats["step_s"]) / np.array(stats["batch"]))) * 1000, 2)
            if stats["step_s"]
            else None,
            "mean_batch": round(float(np.mean(stats["batch"])), 2) if stats["batch"] else None,
        },
    }


def start_server(args):
    """``spann3r serve`` in this process, on a free loopback port."""
    import socket
    import threading

    import uvicorn

    from spann3r.cli.serve import uvicorn_config
    from spann3r.server.app import create_app
    from spann3r.server.service import load_engine_for
    from spann3r.server.settings import ServeSettings

    settings = ServeSettings(
        weights=args.weights,
        model=args.model,
        device=args.device,
        port=0,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_sessions=args.clients + 4,
        max_fps=max(30.0, args.fps * 2),
        log_level="warning",
        threads=args.threads,
    )
    engine, weights = load_engine_for(settings)
    app = create_app(settings, engine, weights)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn_config(app, settings))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not (server.started and app.state.service.ready):
        time.sleep(0.05)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, str(engine.device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="benchmark a running server instead of starting one")
    p.add_argument("--model", default="tiny", choices=["tiny", "official"])
    p.add_argument("--weights", default="synthetic")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--fps", type=float, default=5.0, help="frames per second each client sends")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of sending per encoding")
    p.add_argument("--encodings", nargs="+", default=list(ENCODINGS), choices=list(ENCODINGS))
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--jpeg-quality", type=int, default=85)
    p.add_argument("--frames", type=Path, default=FRAMES, help="image folder to stream (default: golden set A)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)

    jpegs = load_jpegs(args.frames, args.jpeg_quality)
    server, device = None, "remote"
    url = args.url
    if url is None:
        url, server, device = start_server(args)
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": device,
        "host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "model": args.model,
        "clients": args.clients,
        "fps_per_client": args.fps,
        "duration_s": args.duration,
        "max_batch": args.max_batch,
        "jpeg_bytes_mean": int(np.mean([len(j) for j in jpegs])),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "results": {},
    }
    try:
        for name in args.encodings:
            report["results"][name] = asyncio.run(
                run_phase(url, jpegs, ENCODINGS[name], args.clients, args.fps, args.duration)
            )
            print(name, json.dumps(report["results"][name]), flush=True)
    finally:
        if server is not None:
            server.should_exit = True
    report["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)  # other work on the host skews every number
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Soak test: N healthy sessions at 30 fps for minutes, with fuzz traffic beside them from the middle on.

The server (the stand-in engine of bench/standin.py, or the tiny model with synthetic weights) runs in a child
process. Healthy sessions stream JPEG frames the whole time (bench/serving.py's clients, in a process of their
own); after a baseline, fuzz connections (sessions of their own) send mutated, random, deeply nested, text and
oversized messages, each followed by a ping, as fast as the server answers. The fuzz messages are the property
generators of tests/server/test_fuzz.py when it can be imported (hypothesis installed), else a small generator
here of the same kinds.

Reports p50/p99 latency and results/s of the healthy sessions before and during the attack, the server's RSS
over time, every answer, error code and close code counted (healthy and fuzz sides, and the server's own
protocol-error counters), and a timeline per window.

    python bench/soak.py --sessions 4 --minutes 10 --json bench/results/soak.json
    python bench/soak.py --engine tiny --sessions 2 --fps 10 --baseline-minutes 0.5 --minutes 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import random
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from itertools import count
from pathlib import Path

import msgpack
import numpy as np
from serving import ServerProcess, client_jpegs, client_process, parse_size
from serving import count as count_answer

REPO = Path(__file__).resolve().parents[1]
MAX_MESSAGE_BYTES = 256 * 1024  # the server's limit here: the fuzzer's oversized messages go just past it

FuzzSource = Callable[[], bytes | str]


# --------------------------------------------------------------------------------------------- fuzz messages


def test_fuzz_source(jpeg: bytes) -> FuzzSource | None:
    """The generators of tests/server/test_fuzz.py (hypothesis), one message per call; None when not importable."""
    sys.path.insert(0, str(REPO / "tests" / "server"))
    try:
        import test_fuzz
    except Exception:  # no hypothesis / pytest here: the builtin generator stands in
        return None
    finally:
        sys.path.pop(0)
    if test_fuzz.LIMIT != MAX_MESSAGE_BYTES:
        return None
    strategy = test_fuzz.fuzz_messages(jpeg)
    warnings.filterwarnings("ignore", message=".*example.*")  # .example() outside tests is what we mean here

    return strategy.example


def builtin_source(jpeg: bytes, seed: int = 0) -> FuzzSource:
    """Mutated valid messages, random bytes, random msgpack, deep nesting, text frames and oversized messages."""
    rng = random.Random(seed)
    valid: list[dict[str, object]] = [
        {"type": "frame", "seq": 1, "ts": 0.0, "format": "jpeg", "data": jpeg},
        {"type": "control", "action": "settings", "settings": {"encoding": "full", "stride": 2}},
        {"type": "control", "action": "reset"},
        {"type": "ping", "id": 1},
    ]
    junk: list[object] = [None, True, -(2**63), 2**64 - 1, float("nan"), float("inf"), "x" * 5000, b"\0" * 64, [], {}]

    def mutated() -> bytes:
        msg = dict(rng.choice(valid))
        for _ in range(rng.randint(1, 3)):
            key = rng.choice([*msg, "type", "seq", "zz"])
            if rng.random() < 0.2:
                msg.pop(key, None)
            else:
                msg[key] = rng.choice(junk)
        return msgpack.packb(msg)

    def deep() -> bytes:
        return b"\x81\xa4type" + b"\x91" * rng.randint(17, 3000) + b"\xc0"

    kinds: list[Callable[[], bytes | str]] = [
        mutated,
        mutated,
        lambda: rng.randbytes(rng.randint(0, 512)),
        lambda: msgpack.packb([rng.choice(junk) for _ in range(rng.randint(0, 6))]),
        deep,
        lambda: "".join(rng.choice('{}[]"abc ') for _ in range(rng.randint(0, 64))),  # a text frame
        lambda: msgpack.packb({"type": "frame", "data": bytes(MAX_MESSAGE_BYTES + rng.randint(1, 4096))}),
    ]
    return lambda: rng.choice(kinds)()


# --------------------------------------------------------------------------------------------- the fuzzer's side


async def fuzz_connection(url: str, source: FuzzSource, until: float, stats: dict) -> None:
    """A session of its own: one fuzz message, then a ping; every answer up to the pong is checked (a valid server
    message) and counted. A closed socket is counted by close code and reopened."""
    from websockets.exceptions import ConnectionClosed

    from spann3r.client import ServiceError, StreamClient
    from spann3r.server.protocol import ErrorMsg, PongMsg, decode_server_message

    c = StreamClient(url)
    pings = count(1)
    try:
        await c.create_session({"frame_policy": "latest", "encoding": "compact"})
        await c.connect()
        while time.monotonic() < until:
            data, ping = source(), next(pings)
            ws = c.ws
            assert ws is not None
            try:
                await ws.send(data)
                await ws.send(msgpack.packb({"type": "ping", "id": ping}))
                stats["sent_at"].append(time.monotonic())
                while True:
                    raw = await asyncio.wait_for(ws.recv(), 60)
                    try:
                        assert isinstance(raw, bytes), "a text message"
                        msg = decode_server_message(raw)
                    except Exception:  # not a valid server message: the bug this is looking for
                        count_answer(stats, "invalid_answer")
                        continue
                    count_answer(stats, f"error:{msg.code}" if isinstance(msg, ErrorMsg) else getattr(msg, "type", "?"))
                    if isinstance(msg, PongMsg) and msg.id == ping:
                        break
            except ConnectionClosed as exc:
                count_answer(stats, f"close:{exc.rcvd.code if exc.rcvd else 1006}")
                await c.disconnect()
                await c.connect()
            except TimeoutError:
                count_answer(stats, "no_pong")
                await c.disconnect()
                await c.connect()
    except ServiceError as exc:  # the session is gone (refused, evicted): counted, this fuzzer stops
        count_answer(stats, f"service_error:{exc.code}")
    finally:
        with contextlib.suppress(Exception):
            await c.delete()
        await c.close()


# --------------------------------------------------------------------------------------------- the run


def percentiles_ms(latencies: np.ndarray) -> dict[str, float] | None:
    if not len(latencies):
        return None
    return {q: round(float(np.percentile(latencies, v)) * 1000, 2) for q, v in (("p50", 50), ("p99", 99), ("max", 100))}


def window_of(times: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (times >= lo) & (times < hi)


async def attack_and_watch(server: ServerProcess, args, start: float, attack_at: float, end: float) -> dict:
    """The fuzz connections (from ``attack_at`` to ``end``) and the server's RSS (sampled throughout)."""
    tiny = client_jpegs((64, 48), 80)[0]  # the fuzzer's frames: small, so its model work stays small
    source = None if args.fuzz == "builtin" else test_fuzz_source(tiny)
    source_name = "tests/server/test_fuzz.py" if source is not None else "builtin"
    source = source or builtin_source(tiny)
    fuzz: dict = {"sent_at": [], "counts": {}}
    rss: list[tuple[float, int]] = []

    async def sample_rss() -> None:
        while time.monotonic() < end + 5:
            rss.append((time.monotonic() - start, server.rss_bytes()))
            await asyncio.sleep(args.rss_every)

    async def attack() -> None:
        await asyncio.sleep(max(0.0, attack_at - time.monotonic()))
        await asyncio.gather(*(fuzz_connection(server.url, source, end, fuzz) for _ in range(args.fuzz_conns)))

    await asyncio.gather(sample_rss(), attack())
    return {"source": source_name, "sent_at": fuzz["sent_at"], "counts": fuzz["counts"], "rss": rss}


def run(args) -> dict:
    size = parse_size(args.size)
    jpegs = client_jpegs(size, args.jpeg_quality)
    extra = {"max_message_bytes": MAX_MESSAGE_BYTES, "max_protocol_errors": args.max_protocol_errors}
    sessions_cap = args.sessions + args.fuzz_conns + 4
    server = ServerProcess(args.engine, args.threads, args.max_batch, args.max_wait_ms, sessions_cap, extra)
    baseline_s, attack_s = args.baseline_minutes * 60, args.minutes * 60
    settings = {"frame_policy": "latest", "encoding": args.encoding}
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        pool.submit(int).result()  # the client process is up before the clock starts
        rss_start = server.rss_bytes()
        start = time.monotonic()
        attack_at, end = start + baseline_s, start + baseline_s + attack_s
        healthy_future = pool.submit(
            client_process,
            server.url,
            jpegs,
            settings,
            args.sessions,
            args.fps,
            baseline_s + attack_s,
            0,
            args.sessions,
        )
        watched = asyncio.run(attack_and_watch(server, args, start, attack_at, end))
        healthy = healthy_future.result()
        server_metrics = server.metrics()
    finally:
        pool.shutdown()
        server.stop()
    return summarize(args, size, start, attack_at, end, rss_start, healthy, watched, server_metrics)


def summarize(args, size, start, attack_at, end, rss_start, healthy, watched, server_metrics) -> dict:
    at, lat = np.array(healthy["received_at"]), np.array(healthy["latency"])
    fuzz_at = np.array(watched["sent_at"])
    rss = watched["rss"]
    mib = 2**20

    def phase(lo: float, hi: float) -> dict:
        sel = window_of(at, lo, hi)
        return {
            "seconds": round(hi - lo, 1),
            "results": int(sel.sum()),
            "results_per_s": round(float(sel.sum()) / max(hi - lo, 1e-9), 1),
            "latency_ms": percentiles_ms(lat[sel]),
            "fuzz_messages": int(window_of(fuzz_at, lo, hi).sum()),
        }

    timeline = []
    for lo in np.arange(start, end, args.window_s):
        hi = min(lo + args.window_s, end)
        in_window = [r for t, r in rss if lo - start <= t < hi - start]
        timeline.append(
            {
                "t_s": round(lo - start, 1),
                "phase": "baseline" if hi <= attack_at else "attack",
                **phase(lo, hi),
                "rss_mib": round(max(in_window) / mib, 1) if in_window else None,
            }
        )
    before_attack = [r for t, r in rss if t < attack_at - start] or [rss_start]
    protocol_errors = {k: int(v[0]) for k, v in server_metrics.items() if k.startswith("spann3r_protocol_errors")}
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        "engine": args.engine,
        "healthy": {"sessions": args.sessions, "fps_each": args.fps, "size": f"{size[0]}x{size[1]}"},
        "fuzz": {"connections": args.fuzz_conns, "source": watched["source"], "messages": len(fuzz_at)},
        "baseline": phase(start, attack_at),
        "attack": phase(attack_at, end),
        "rss_mib": {
            "start": round(rss_start / mib, 1),
            "before_attack_max": round(max(before_attack) / mib, 1),
            "max": round(max(r for _, r in rss) / mib, 1) if rss else None,
            "end": round(rss[-1][1] / mib, 1) if rss else None,
            "growth_during_attack": round((rss[-1][1] - before_attack[-1]) / mib, 1) if rss else None,
        },
        "rss_over_time": [(round(t, 1), round(r / mib, 1)) for t, r in rss],
        "healthy_answers": healthy["counts"],
        "fuzz_answers": watched["counts"],
        "server_protocol_errors": protocol_errors,
        "timeline": timeline,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=4, help="healthy sessions")
    p.add_argument("--fps", type=float, default=30.0, help="frames per second of each healthy session")
    p.add_argument("--minutes", type=float, default=10.0, help="minutes under attack")
    p.add_argument("--baseline-minutes", type=float, default=1.0, help="minutes before the attack starts")
    p.add_argument("--engine", choices=["standin", "tiny"], default="standin")
    p.add_argument("--fuzz", choices=["auto", "builtin"], default="auto", help="auto: test_fuzz.py's generators")
    p.add_argument("--fuzz-conns", type=int, default=2, help="fuzz connections (a session each)")
    p.add_argument("--size", default="page", help="healthy clients' image size: WxH or 'page' (398x224)")
    p.add_argument("--encoding", choices=["compact", "full"], default="compact")
    p.add_argument("--jpeg-quality", type=int, default=80)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--max-protocol-errors", type=int, default=40, help="the server's strikes before a close")
    p.add_argument("--window-s", type=float, default=10.0, help="timeline window")
    p.add_argument("--rss-every", type=float, default=2.0, help="seconds between RSS samples")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    report = run(args)
    for name in ("baseline", "attack"):
        print(f"{name}: {json.dumps(report[name])}")
    print("rss MiB:", json.dumps(report["rss_mib"]))
    print("healthy answers:", json.dumps(report["healthy_answers"]))
    print("fuzz answers:", json.dumps(report["fuzz_answers"]))
    print("server protocol errors:", json.dumps(report["server_protocol_errors"]))
    print("load average at end:", report["load_avg_at_end"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

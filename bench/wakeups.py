"""What waking up costs on this host: process CPU per event-loop iteration that sleeps ``gap`` ms, with and without
one thread-pool hop (``run_in_executor``, as the service's decode, model and post-processing hops) per iteration.

A lone 30 fps session leaves the host idle between frames, so every thread that handles a result wakes from idle:
the loop for the frame, the decode thread, the loop, the model thread, the loop, a post-processing thread, the loop
to send. On a virtual machine a wake-up from idle can cost far more CPU time than the work it wakes for; this bench
measures that cost, so the service's CPU per result with one session (bench/serving.py) can be read against it.

    python bench/wakeups.py                 # gaps 0, 1, 10 and 33 ms (33: one frame at 30 fps)
    python bench/wakeups.py --gaps 0 33 --seconds 5

Prints, per gap: µs of process CPU per iteration without a hop and with one, and the hop's share (the difference).
Take numbers on an otherwise idle machine: the load average is printed next to them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor

import uvloop


def _nothing() -> None:
    return None


async def cpu_per_iteration(gap_s: float, hop: bool, seconds: float) -> float:
    """µs of process CPU per iteration of: (a hop to a thread pool,) then a sleep of ``gap_s``."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(2) as pool:
        await loop.run_in_executor(pool, _nothing)  # the pool's threads exist before anything is timed
        n = max(50, int(seconds / max(gap_s, 1e-4)))
        c0 = time.process_time()
        for _ in range(n):
            if hop:
                await loop.run_in_executor(pool, _nothing)
            await asyncio.sleep(gap_s)
        return (time.process_time() - c0) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gaps", type=float, nargs="+", default=[0.0, 1.0, 10.0, 33.0], help="idle ms per iteration")
    p.add_argument("--seconds", type=float, default=3.0, help="about how long each measurement runs")
    args = p.parse_args(argv)
    print("load average (1, 5, 15 min):", [round(x, 2) for x in os.getloadavg()])
    for gap in args.gaps:
        plain = uvloop.run(cpu_per_iteration(gap / 1000, False, args.seconds))
        hopped = uvloop.run(cpu_per_iteration(gap / 1000, True, args.seconds))
        print(
            f"gap {gap:g} ms: {plain:.1f} µs CPU per iteration without a hop, {hopped:.1f} with one "
            f"(the hop: {hopped - plain:.1f} µs)",
            flush=True,
        )
    print("load average (1, 5, 15 min):", [round(x, 2) for x in os.getloadavg()])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A robot's perception loop on the Spann3R service: camera frames in, camera poses and 3D points out.

Frames come from OpenCV (a camera index, a video file, or a folder of images); the Python client streams them to a
running service (``spann3r serve``) and yields its results as they arrive; each final frame gives the camera's
pose in the world frame (the first camera, OpenCV axes) and the confident points it saw. The loop prints where
the camera is and how far the nearest point ahead is (what a robot would feed its planner), and optionally
publishes everything live to Foxglove, logs it to rerun, or records it as ROS 2 messages in MCAP.

    python examples/robot_loop.py 0 --url http://127.0.0.1:8000 --foxglove 8765     # camera 0, live in Foxglove
    python examples/robot_loop.py walk.mp4 --max-frames 100 --mcap walk.mcap --rerun walk.rrd
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from spann3r.client import stream
from spann3r.client.foxglove_feed import FinalFrames, LiveFrame

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def opencv_frames(source: str, max_frames: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(name, RGB uint8) frames from a camera index ("0"), a video file or a folder of images (sorted by name)."""
    if Path(source).is_dir():
        files = sorted(p for p in Path(source).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for path in files[:max_frames]:
            yield path.name, cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return
    cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not cap.isOpened():
        raise SystemExit(f"cannot open {source}")
    try:
        index = 0
        while max_frames is None or index < max_frames:
            ok, bgr = cap.read()
            if not ok:
                return
            yield f"frame{index:06d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        cap.release()


def nearest_ahead(frame: LiveFrame) -> float | None:
    """Distance to the nearest point in front of the camera (z > 0 in its own frame), in model units."""
    if frame.c2w is None or not len(frame.xyz):
        return None
    w2c = np.linalg.inv(frame.c2w)
    in_camera = frame.xyz @ w2c[:3, :3].T + w2c[:3, 3]
    ahead = in_camera[in_camera[:, 2] > 0]
    return float(np.linalg.norm(ahead, axis=1).min()) if len(ahead) else None


def report(frame: LiveFrame) -> None:
    """What the robot does with each frame: here, print the camera position and the nearest obstacle."""
    where = "pose unknown" if frame.c2w is None else "camera at ({:+.3f}, {:+.3f}, {:+.3f})".format(*frame.c2w[:3, 3])
    nearest = nearest_ahead(frame)
    ahead = "" if nearest is None else f", nearest point ahead {nearest:.3f}"
    print(f"frame {frame.index}: {where}, {len(frame.xyz)} points{ahead}", flush=True)


async def robot_loop(
    url: str,
    frames,
    *,
    on_frame: Callable[[LiveFrame], None] = report,
    conf_thresh: float = 1e-3,
    foxglove_port: int | None = None,
    rerun_file: str | None = None,
    mcap_file: str | None = None,
    rate: float | None = None,
    live: bool = True,
    window: int = 4,
) -> list[LiveFrame]:
    """Stream ``frames`` to the service at ``url``; call ``on_frame`` with every final frame (in order) and
    publish it to the sinks asked for. ``live``: a camera, where the newest frame matters and older waiting ones
    are dropped (latest-frame-wins); else (files) every frame is queued and reconstructed. Returns the finals."""
    finals = FinalFrames(conf_thresh)
    got: list[LiveFrame] = []
    with contextlib.ExitStack() as sinks:
        outputs = []
        if foxglove_port is not None:
            from spann3r.client.foxglove_feed import FoxgloveFeed

            outputs.append(sinks.enter_context(FoxgloveFeed(foxglove_port, conf_thresh=conf_thresh)))
        if rerun_file is not None:
            from spann3r.client.rerun_log import RerunLog

            outputs.append(sinks.enter_context(RerunLog(path=rerun_file, conf_thresh=conf_thresh)))
        if mcap_file is not None:
            from spann3r.client.foxglove_feed import McapLog

            outputs.append(sinks.enter_context(McapLog(mcap_file, conf_thresh=conf_thresh)))
        # 'full' maps: every pixel's point with its confidence, and the image the model saw
        settings = {
            "encoding": "full",
            "preview": False,
            "frame_policy": "latest" if live else "queue",
            "queue_size": window,
        }
        async for msg in stream(url, frames, settings=settings, rate=rate, window=window):
            frame = finals(msg)
            if frame is None:
                continue
            on_frame(frame)
            for output in outputs:
                output.add_frame(frame)
            got.append(frame)
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="camera index (0), video file or folder of images")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service")
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--rate", type=float, default=None, help="frames per second to send at most")
    parser.add_argument("--conf-thresh", type=float, default=1e-3)
    parser.add_argument("--foxglove", type=int, metavar="PORT", help="serve a live Foxglove feed on this port")
    parser.add_argument("--rerun", metavar="FILE.rrd", help="log to a rerun recording")
    parser.add_argument("--mcap", metavar="FILE.mcap", help="record ROS 2 messages")
    args = parser.parse_args()
    asyncio.run(
        robot_loop(
            args.url,
            opencv_frames(args.source, args.max_frames),
            conf_thresh=args.conf_thresh,
            foxglove_port=args.foxglove,
            rerun_file=args.rerun,
            mcap_file=args.mcap,
            rate=args.rate,
            live=args.source.isdigit(),
        )
    )


if __name__ == "__main__":
    main()

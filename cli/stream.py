"""``spann3r stream``: send a folder, a video, a camera or an RTSP/HTTP stream to a running service and write
the results to OUT.npz (the layout of ``spann3r reconstruct``)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import time
import typing
from pathlib import Path

from ..client import Recording, ServiceError, StreamClient, is_live, iter_source
from ..client.client import ResumeGap, reconnecting_stream
from ..core.sources import SourceError
from ..server.protocol import DroppedMsg, ErrorMsg, FramePolicy, HelloMsg, PoseMethod, SessionSettings
from .errors import UserError
from .options import add_camera_args

log = logging.getLogger(__name__)

USER_ERRORS = (SourceError,)  # printed as one line by main


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(
        name,
        help=help_text,
        description="Create a session on the service at URL, stream INPUT's frames over its "
        "WebSocket and write the global pointmaps, confidences, colours and poses to "
        "OUT.npz. Files are sent without loss (the client waits for results); "
        "cameras and network streams are live (the server keeps the latest frame).",
    )
    p.add_argument("input", help="folder of images, video file, camera index (0) or rtsp://, http:// stream")
    p.add_argument("--url", required=True, help="the service's base address, http[s]://host:port")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="send at most this many frames per second (default: as fast as the server answers, within its limit)",
    )
    p.add_argument(
        "--encoding",
        default="jpeg",
        choices=["jpeg", "png", "webp", "rgb8"],
        help="image encoding on the wire (rgb8: raw, lossless; jpeg: default)",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="pointmaps on the wire")
    p.add_argument("--quality", type=int, default=90, help="JPEG/WebP quality")
    p.add_argument(
        "--policy",
        default=None,
        choices=["latest", "queue"],
        help="server frame policy (default: queue for files, latest for live sources)",
    )
    p.add_argument("--window", type=int, default=4, help="frames in flight at once")
    p.add_argument("--kf-every", type=int, default=1, help="send every N-th frame")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames (live sources)")
    p.add_argument("--api-key", default=None, help="API key, when the server requires one (or SPANN3R_API_KEY)")
    p.add_argument("--insecure", action="store_true", help="accept a self-signed TLS certificate")
    p.add_argument("--preview", action="store_true", help="ask for previews too (not saved)")
    p.add_argument(
        "--reconnect-timeout",
        type=float,
        default=60.0,
        help="while the server is away, keep reconnecting (with backoff) for this many seconds; files are sent "
        "again from where the session resumed (default 60)",
    )
    add_camera_args(p, typing.get_args(PoseMethod))
    robots = p.add_argument_group("robotics outputs (the 'robotics' extra; topics and frames: docs/robotics.md)")
    robots.add_argument("--mcap", default=None, metavar="OUT.mcap", help="record the finals as ROS 2 messages in MCAP")
    robots.add_argument(
        "--foxglove",
        type=int,
        nargs="?",
        const=8765,
        default=None,
        metavar="PORT",
        help="serve the finals live to Foxglove on 127.0.0.1:PORT (default 8765)",
    )
    robots.add_argument("--rerun", default=None, metavar="FILE.rrd", help="log the finals to a rerun recording")
    robots.add_argument(
        "--rerun-connect",
        default=None,
        metavar="URL",
        help="log the finals to a running rerun viewer ('' for the default address)",
    )
    p.set_defaults(func=run)


def open_sinks(args) -> list:
    """The live outputs the flags ask for; each takes every server message through ``add(msg)``."""
    sinks: list = []
    try:
        if args.mcap:
            from ..client.foxglove_feed import McapLog

            sinks.append(McapLog(args.mcap))
        if args.foxglove is not None:
            from ..client.foxglove_feed import FoxgloveFeed

            sinks.append(FoxgloveFeed(args.foxglove))
            log.info("Foxglove: open ws://127.0.0.1:%d in Foxglove", args.foxglove)
        if args.rerun or args.rerun_connect is not None:
            from ..client.rerun_log import RerunLog

            sinks.append(RerunLog(path=args.rerun) if args.rerun else RerunLog(connect=args.rerun_connect))
    except ImportError as exc:
        close_sinks(sinks)
        raise UserError(f"{exc}: install the robotics extra (pip install 'spann3r-service[robotics]')") from None
    return sinks


def close_sinks(sinks: list) -> None:
    for sink in sinks:
        sink.close()


def run(args) -> int:
    return asyncio.run(_run(args))


async def _run(args) -> int:
    out = Path(args.out)
    if not out.parent.exists():
        raise UserError(f"output folder does not exist: {out.parent}")
    live = is_live(args.input)
    frames = iter_source(args.input, args.kf_every)
    first = next(frames)  # a bad input fails before any session is created
    frames = itertools.islice(itertools.chain([first], frames), args.max_frames)

    def resend_from(position: int):  # a file source, read again from the frame a restarted server resumed at
        return itertools.islice(iter_source(args.input, args.kf_every), position, args.max_frames)

    policy: FramePolicy = args.policy or ("latest" if live else "queue")
    window = args.window if policy == "queue" else max(args.window, 8)
    settings = SessionSettings(
        frame_policy=policy,
        queue_size=min(max(args.window, 1), 64),
        encoding="full",
        dtype=args.dtype,
        preview=args.preview,
        intrinsics=None if args.intrinsics is None else list(dataclasses.astuple(args.intrinsics)),
        pose_method=args.pose_method,
    )
    client = StreamClient(args.url, args.api_key or os.environ.get("SPANN3R_API_KEY"), not args.insecure)
    recording, drops, errors, lost = Recording(), 0, 0, 0
    sinks = open_sinks(args)
    t0 = time.perf_counter()
    try:
        async for msg in reconnecting_stream(
            args.url,
            frames,
            resend_from=None if live else resend_from,
            reconnect_timeout=args.reconnect_timeout,
            settings=settings,
            encoding=args.encoding,
            quality=args.quality,
            window=window,
            rate=args.rate,
            client=client,
        ):
            if isinstance(msg, ResumeGap):
                lost += len(msg.seqs)
                log.warning(
                    "the server restarted: frames %d..%d were lost (a live source cannot send them again)",
                    msg.first,
                    msg.last,
                )
                continue
            if isinstance(msg, HelloMsg):
                if msg.resume is not None:
                    log.warning("the server restarted; the session resumed after frame %d", msg.resume.frames_processed)
                if msg.model.synthetic:
                    log.warning("%s", msg.model.notice)
                log.info(
                    "session %s on worker %s (%s model, %s)",
                    msg.session_id,
                    msg.worker_id,
                    msg.model.preset,
                    msg.model.device,
                )
            elif isinstance(msg, DroppedMsg):
                drops += 1
                log.info("frame %s dropped: %s", client.names.get(msg.seq, msg.seq), msg.reason)
            elif isinstance(msg, ErrorMsg):
                errors += 1
                log.warning("server error %s (seq %s): %s", msg.code, msg.seq, msg.message)
            recording.add(msg)
            for sink in sinks:
                sink.add(msg)
    except ServiceError as exc:
        raise UserError(f"{exc}; {out} not written") from None
    except OSError as exc:
        raise UserError(f"cannot reach {args.url}: {exc}") from None
    finally:
        close_sinks(sinks)
        await client.close()
    if not recording.finals:
        raise UserError("the server returned no final pointmaps (a stream needs at least two frames)")
    if not recording.finished:  # never a partial run as if it were the whole one
        raise UserError(f"the stream did not finish ({len(recording.finals)} frames reconstructed); {out} not written")
    rec = recording.reconstruction(client.names)
    rec.save_npz(out)
    dt = time.perf_counter() - t0
    log.info(
        "%d frames in %.1f s (%.2f frames/s), %d dropped, %d errors, %d lost in server restarts; %d/%d poses valid; "
        "wrote %s",
        len(rec.names),
        dt,
        len(rec.names) / dt,
        drops,
        errors,
        lost,
        rec.pose_valid.sum(),
        len(rec.names),
        out,
    )
    return 0

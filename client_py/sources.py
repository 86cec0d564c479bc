"""Frame sources of the streaming client: a folder of images, a video file, a camera index, or an RTSP/HTTP
stream. Files are finite and must not lose frames; cameras and network streams are live."""

from __future__ import annotations

from collections.abc import Iterator

import cv2

from ..core.sources import SourceError, iter_frames


def is_live(spec: str) -> bool:
    return spec.isdigit() or "://" in spec


def iter_source(spec: str, kf_every: int = 1) -> Iterator[tuple[str, object]]:
    """Yield (name, RGB uint8) frames. ``spec``: folder | video file | camera index ("0") | rtsp://, http://..."""
    if not is_live(spec):
        yield from iter_frames(spec, kf_every)
        return
    cap = cv2.VideoCapture(int(spec) if spec.isdigit() else spec)
    if not cap.isOpened():
        raise SourceError(f"cannot open {'camera ' + spec if spec.isdigit() else spec}")
    try:
        index = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                if index == 0:
                    raise SourceError(f"no frame from {spec}")
                return
            if index % kf_every == 0:
                yield f"{'camera' + spec if spec.isdigit() else 'stream'}#{index}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        cap.release()

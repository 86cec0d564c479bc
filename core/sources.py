"""Frame sources for offline runs: a folder of images (sorted by name) or a video file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from .preprocess import ImageError, read_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


class SourceError(ValueError):
    """An input that cannot be read as a sequence of frames. The message is user-facing."""


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def count_frames(source: str | Path, kf_every: int = 1) -> int | None:
    """Number of frames ``iter_frames`` will yield, when cheaply known (for progress bars)."""
    path = Path(source)
    if path.is_dir():
        return len(list_images(path)[::kf_every])
    cap = cv2.VideoCapture(str(path))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    cap.release()
    return (n + kf_every - 1) // kf_every if n > 0 else None


def iter_frames(source: str | Path, kf_every: int = 1) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, RGB uint8 image) for every ``kf_every``-th frame of a folder or a video file."""
    if kf_every < 1:
        raise SourceError(f"--kf-every must be >= 1, got {kf_every}")
    path = Path(source)
    if not path.exists():
        raise SourceError(f"input not found: {path}")
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise SourceError(f"no images in {path} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        for f in files[::kf_every]:
            try:
                yield f.name, read_image(f)
            except ImageError:
                raise SourceError(f"cannot read image {f}") from None
        return
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SourceError(f"cannot open {path} as a video (and it is not a folder of images)")
    try:
        index = 0
        got_any = False
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            got_any = True
            if index % kf_every == 0:
                yield f"{path.name}#{index}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1
        if not got_any:
            raise SourceError(f"cannot decode any frame of {path}")
    finally:
        cap.release()

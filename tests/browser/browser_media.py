"""Test media for the browser tests, made at test time from the reference frames (nothing binary committed)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(path)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_y4m(
    frames: list[np.ndarray], path: Path, width: int = 320, height: int = 240, fps: int = 10, hold: int = 2
) -> Path:
    """A YUV4MPEG2 (4:2:0) video for Chromium's fake camera (--use-file-for-fake-video-capture).

    Each frame is held for ``hold`` video frames so that a page sampling a few frames per second still
    sees every distinct image; Chromium loops the file.
    """
    if width % 2 or height % 2:
        raise ValueError("4:2:0 needs even sizes")
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            small = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
            i420 = cv2.cvtColor(small, cv2.COLOR_RGB2YUV_I420)  # planar Y, then U, then V
            for _ in range(hold):
                f.write(b"FRAME\n")
                f.write(i420.tobytes())
    return path


def reference_frames(directory: Path) -> list[Path]:
    frames = sorted(directory.glob("*.png"))
    if not frames:
        raise FileNotFoundError(f"no PNG frames in {directory}")
    return frames


def write_webm(frames: list[np.ndarray], path: Path, width: int = 320, height: int = 240, fps: int = 4) -> Path:
    """A VP8 WebM (which every Chromium plays) with one video frame per reference frame."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"VP80"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError("this OpenCV build cannot write VP8/WebM")
    try:
        for rgb in frames:
            writer.write(
                cv2.cvtColor(cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR)
            )
    finally:
        writer.release()
    return path

"""Image → model input, exactly as the official demo at resolution 224.

1. RGB uint8 (files are read with OpenCV and converted from BGR).
2. Crop to even width/height around the principal point (W//2, H//2).
3. Scale by s = max(224/W, 224/H) + 1e-8 to (floor(W·s), floor(H·s)) with Pillow's LANCZOS. OpenCV has no
   resampler within 25 grey levels of it, which moves outputs ~10⁴× the noise floor, so Pillow it is.
4. Centre crop 224×224 (offsets rounded half-to-even, as numpy does).
5. float32 / 255, then (x − 0.5) / 0.5 → [−1, 1], [3, 224, 224].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

RESOLUTION = 224
MAX_PIXELS = 64_000_000  # refuse absurd images before allocating them


class ImageError(ValueError):
    """An input image that cannot be used. The message is user-facing."""


@dataclass
class PreparedFrame:
    img: torch.Tensor  # [3, 224, 224] float32 in [-1, 1]
    colors: np.ndarray  # [224, 224, 3] uint8 RGB, the pixels the model sees


def crop_resize(rgb: np.ndarray, size: int = RESOLUTION) -> np.ndarray:
    """RGB uint8 [H, W, 3] → the size×size uint8 crop the model sees."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageError(f"expected an RGB uint8 image [H, W, 3], got {rgb.dtype} {list(rgb.shape)}")
    H, W = rgb.shape[:2]
    if H < 2 or W < 2:
        raise ImageError(f"image too small: {W}x{H}")
    if H * W > MAX_PIXELS:
        raise ImageError(f"image too large: {W}x{H} pixels (limit {MAX_PIXELS})")
    cx, cy = W // 2, H // 2
    rgb = rgb[: 2 * cy, : 2 * cx]
    H, W = rgb.shape[:2]
    s = max(size / W, size / H) + 1e-8
    new_w, new_h = math.floor(W * s), math.floor(H * s)
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((new_w, new_h), Image.LANCZOS))
    left = int(np.round((new_w - size) / 2))
    top = int(np.round((new_h - size) / 2))
    return np.ascontiguousarray(resized[top: top + size, left: left + size])


def to_model_input(colors: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(colors).permute(2, 0, 1).float().div(255)
    return (x - 0.5) / 0.5


def prepare(rgb: np.ndarray) -> PreparedFrame:
    colors = crop_resize(rgb)
    return PreparedFrame(to_model_input(colors), colors)


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, WebP, ...) → RGB uint8."""
    buf = np.frombuffer(data, dtype=np.uint8)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if bgr is None:
        raise ImageError("cannot decode image data (not a JPEG, PNG or WebP image, or truncated)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_image(path: str | Path) -> np.ndarray:
    """Image file → RGB uint8 (read with OpenCV, as the official demo)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_frame(path: str | Path) -> PreparedFrame:
    return prepare(read_image(path))

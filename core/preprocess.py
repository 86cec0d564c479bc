"""Image → model input, exactly as the official demo at resolution 224.

1. RGB uint8 (files are read with OpenCV and converted from BGR).
2. Crop to even width/height around the principal point (W//2, H//2).
3. Scale by s = max(224/W, 224/H) + 1e-8 to (floor(W·s), floor(H·s)) with Pillow's LANCZOS. OpenCV has no
   resampler within 25 grey levels of it, which moves outputs ~10⁴× the noise floor, so Pillow it is.
4. Centre crop 224×224 (offsets rounded half-to-even, as numpy does).
5. float32 / 255, then (x − 0.5) / 0.5 → [−1, 1], [3, 224, 224].
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

# torch and Pillow are imported where they are used: reading frames (``read_image``, used by the Python client's
# sources) and the image errors must work with the client's base install, which has neither.
if TYPE_CHECKING:
    import torch

RESOLUTION = 224
MAX_PIXELS = 64_000_000  # refuse absurd images before allocating them
# Longest side / shortest side. The resize target is 224 × 224·aspect, so this also bounds what step 3 allocates
# (a 2×10000 image would be resized to 224×1,120,000 pixels).
MAX_ASPECT = 4.0


class ImageError(ValueError):
    """An input image that cannot be used. The message is user-facing; ``code`` is the protocol's error code
    (``bad_image``, ``image_too_large``, ``bad_aspect_ratio``)."""

    def __init__(self, message: str, code: str = "bad_image"):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class PreparedFrame:
    img: torch.Tensor  # [3, 224, 224] float32 in [-1, 1]
    colors: np.ndarray  # [224, 224, 3] uint8 RGB, the pixels the model sees
    source_size: tuple[int, int] = (RESOLUTION, RESOLUTION)  # (width, height) of the image before crop and resize


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
    if (new_w, new_h) == (W, H):  # already at the size (e.g. the live page's uploads): Pillow would only copy it
        resized = rgb
    else:
        from PIL import Image

        image = Image.fromarray(np.ascontiguousarray(rgb))
        resized = np.asarray(image.resize((new_w, new_h), Image.Resampling.LANCZOS))
    left = int(np.round((new_w - size) / 2))
    top = int(np.round((new_h - size) / 2))
    return np.ascontiguousarray(resized[top : top + size, left : left + size])


def to_model_input(colors: np.ndarray) -> torch.Tensor:
    """[224, 224, 3] uint8 → [3, 224, 224] float32 in [-1, 1], as the official ToTensor and Normalize(0.5, 0.5)
    compute it (the same float32 operations, bit for bit). In numpy: decoding threads start no torch thread team."""
    import torch

    x = colors.transpose(2, 0, 1).astype(np.float32)
    x /= np.float32(255)
    x -= np.float32(0.5)
    x /= np.float32(0.5)
    return torch.from_numpy(x)


def prepare(rgb: np.ndarray) -> PreparedFrame:
    colors = crop_resize(rgb)
    return PreparedFrame(to_model_input(colors), colors, (rgb.shape[1], rgb.shape[0]))


def check_image_size(w: int, h: int, max_pixels: int, max_aspect: float = MAX_ASPECT) -> None:
    """Refuse sizes the pipeline must not allocate: zero or one pixel wide, too many pixels, too extreme an aspect."""
    if w < 2 or h < 2:
        raise ImageError(f"image too small: {w}x{h}")
    if w * h > max_pixels:
        raise ImageError(f"{w}x{h} exceeds the limit of {max_pixels} pixels", "image_too_large")
    if max(w, h) > max_aspect * min(w, h):
        raise ImageError(f"{w}x{h}: aspect ratio beyond 1:{max_aspect:g}", "bad_aspect_ratio")


def check_image_header(
    data: bytes,
    fmt: str,
    width: int | None = None,
    height: int | None = None,
    max_pixels: int = MAX_PIXELS,
    max_aspect: float = MAX_ASPECT,
) -> tuple[int, int]:
    """Size of an image from its header only (no pixel decoded, nothing allocated) → (w, h), or ImageError.
    ``fmt``: ``rgb8`` (raw pixels; ``width`` and ``height`` given) or any encoded format Pillow can identify."""
    if fmt == "rgb8":
        if not width or not height:
            raise ImageError("rgb8 frames need width and height")
        check_image_size(width, height, max_pixels, max_aspect)
        if len(data) != width * height * 3:
            raise ImageError(f"rgb8 {width}x{height} needs {width * height * 3} bytes, got {len(data)}")
        return width, height
    if not data:
        raise ImageError("empty image data")
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Image.DecompressionBombError as exc:
        raise ImageError(str(exc), "image_too_large") from None
    except Exception:
        raise ImageError("cannot decode image data (not a JPEG, PNG or WebP image, or truncated)") from None
    check_image_size(w, h, max_pixels, max_aspect)
    return w, h


def decode_and_prepare(
    data: bytes,
    fmt: str,
    width: int | None = None,
    height: int | None = None,
    max_pixels: int = MAX_PIXELS,
    max_aspect: float = MAX_ASPECT,
) -> PreparedFrame:
    """Image bytes → model input, the one path of every network input (stream frames and job uploads): the
    header is checked before any pixel is decoded. Raises ImageError (with a code)."""
    w, h = check_image_header(data, fmt, width, height, max_pixels, max_aspect)
    if fmt == "rgb8":
        rgb = np.frombuffer(data, np.uint8).reshape(h, w, 3)
    else:
        rgb = decode_image(data)
        check_image_size(rgb.shape[1], rgb.shape[0], max_pixels, max_aspect)  # the header may have lied
    return prepare(rgb)


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

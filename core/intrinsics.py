"""Known camera intrinsics, carried through preprocessing to the model's 224² pixel grid.

A client that knows its camera (a calibration, ARKit / ARCore, EXIF) gives ``FX,FY,CX,CY`` in pixels of the image
it sends, in OpenCV's convention: pixel centres at integer coordinates, (0, 0) the centre of the top-left pixel,
x right, y down. Preprocessing (``preprocess.crop_resize``) keeps the top-left 2⌊W/2⌋ × 2⌊H/2⌋ pixels
(coordinates unchanged), resizes them to W' × H' = ⌊2⌊W/2⌋·s⌋ × ⌊2⌊H/2⌋·s⌋ with Pillow, whose output pixel j is
centred on input coordinate (j + ½)·W/W' − ½, and crops 224² at (left, top). So the model pixel of an original
pixel u is (u + ½)·W'/W − ½ − left: focal lengths scale by W'/W (and H'/H: the two differ by the flooring),
principal points shift by the half-pixel terms and the crop.

Without known intrinsics the service estimates one focal (``camera.estimate_focal``) and puts the principal point
at (112, 112), the official demo's convention (``focal_intrinsics``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .preprocess import RESOLUTION


def centred_intrinsics(focal: float, h: int, w: int) -> np.ndarray:
    """K [3, 3] float64 of square pixels with the principal point at the image centre (w/2, h/2), as the
    official demo builds it for its PnP."""
    return np.array([[focal, 0, w / 2], [0, focal, h / 2], [0, 0, 1]], dtype=np.float64)


class IntrinsicsError(ValueError):
    """Unusable intrinsics; the message is one user-facing line."""


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels of an image (OpenCV convention, no skew)."""

    fx: float
    fy: float
    cx: float
    cy: float

    def matrix(self) -> np.ndarray:
        """[3, 3] float64 K."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class CropResize:
    """Where preprocessing puts an original pixel: model = (original + ½)·scale − ½ − offset, per axis."""

    scale_x: float
    scale_y: float
    left: int
    top: int

    def to_model(self, u: np.ndarray | float, v: np.ndarray | float) -> tuple[np.ndarray | float, np.ndarray | float]:
        """Original pixel coordinates → model pixel coordinates (any real values)."""
        return (u + 0.5) * self.scale_x - 0.5 - self.left, (v + 0.5) * self.scale_y - 0.5 - self.top


def parse_intrinsics(text: str) -> Intrinsics:
    """``"FX,FY,CX,CY"`` (pixels of the original image) → Intrinsics, or IntrinsicsError saying what is wrong."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 4:
        raise IntrinsicsError(
            f"intrinsics must be FX,FY,CX,CY (four numbers, pixels of the original image), got {text!r}"
        )
    try:
        fx, fy, cx, cy = (float(p) for p in parts)
    except ValueError:
        raise IntrinsicsError(f"intrinsics must be four numbers FX,FY,CX,CY, got {text!r}") from None
    if not all(math.isfinite(x) for x in (fx, fy, cx, cy)):
        raise IntrinsicsError(f"intrinsics must be finite numbers, got {text!r}")
    if fx <= 0 or fy <= 0:
        raise IntrinsicsError(f"focal lengths FX and FY must be positive, got {text!r}")
    return Intrinsics(fx, fy, cx, cy)


def crop_resize_geometry(width: int, height: int, size: int = RESOLUTION) -> CropResize:
    """The pixel mapping of ``preprocess.crop_resize`` for a width × height image (the same arithmetic)."""
    if width < 2 or height < 2:
        raise IntrinsicsError(f"image too small for intrinsics: {width}x{height}")
    w, h = 2 * (width // 2), 2 * (height // 2)  # odd sizes lose their last column / row
    s = max(size / w, size / h) + 1e-8
    new_w, new_h = math.floor(w * s), math.floor(h * s)
    left, top = int(np.round((new_w - size) / 2)), int(np.round((new_h - size) / 2))
    return CropResize(new_w / w, new_h / h, left, top)


def model_intrinsics(intr: Intrinsics, width: int, height: int, size: int = RESOLUTION) -> np.ndarray:
    """Intrinsics of a width × height original image → [3, 3] float64 K of the size² model image (same convention,
    pixel (u, v) at column u, row v, as ``camera.pixel_grid`` and ``camera.solve_poses`` use)."""
    g = crop_resize_geometry(width, height, size)
    cx, cy = g.to_model(intr.cx, intr.cy)
    return Intrinsics(intr.fx * g.scale_x, intr.fy * g.scale_y, float(cx), float(cy)).matrix()


def focal_intrinsics(focal: float, size: int = RESOLUTION) -> np.ndarray:
    """K [3, 3] float64 from an estimated focal at the model resolution: square pixels, principal point at
    (size/2, size/2) as the official demo (and ``camera.estimate_focal``) assume. A failed estimate (0, NaN) gives
    a K that ``solve_poses`` flags invalid."""
    return centred_intrinsics(focal, size, size)

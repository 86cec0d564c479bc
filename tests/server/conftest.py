"""Fixtures of the server tests (helpers live in service_helpers.py)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def small_frames(frames_A) -> list[tuple[str, np.ndarray]]:
    """Set A's frames at 320x240: same scene, quicker to decode and encode on the wire."""
    import cv2

    return [(n, cv2.resize(rgb, (320, 240), interpolation=cv2.INTER_AREA)) for n, rgb in frames_A]

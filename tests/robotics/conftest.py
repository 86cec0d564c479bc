"""Fixtures of the robotics tests."""

from __future__ import annotations

import numpy as np
import pytest
from robotics_data import synthetic_run


@pytest.fixture
def run_arrays() -> dict[str, np.ndarray]:
    """A synthetic run of 4 frames of 24×24 maps (see ``robotics_data.synthetic_run``)."""
    return synthetic_run()

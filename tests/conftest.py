"""Shared fixtures. The full-size model is built once per test session (synthetic weights, ~10 s) and shared."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("SPANN3R_GOLDEN_DIR", REPO.parent / "shared" / "reference" / "spann3r"))


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not (GOLDEN / "golden_A.npz").is_file():
        pytest.fail(f"golden reference not found at {GOLDEN} (expected ../shared/reference/spann3r)")
    return GOLDEN


@pytest.fixture(scope="session")
def golden_A(golden_dir):
    return dict(np.load(golden_dir / "golden_A.npz"))


@pytest.fixture(scope="session")
def golden_B(golden_dir):
    return dict(np.load(golden_dir / "golden_B.npz"))


@pytest.fixture(scope="session")
def frames_A(golden_dir) -> list[tuple[str, np.ndarray]]:
    """Golden set A's frames (640x480 PNG) as (name, RGB uint8), in file order."""
    from spann3r.core.sources import iter_frames

    return list(iter_frames(golden_dir / "frames_A"))


@pytest.fixture(scope="session")
def frames_D(golden_dir) -> list:
    """Golden set D's frames as (name, PreparedFrame): model inputs exactly as the reference's."""
    from spann3r.core.preprocess import load_frame

    return [(f.name, load_frame(f)) for f in sorted((golden_dir / "frames_D").glob("*.png"))]


@pytest.fixture(scope="session")
def official_model():
    """Full-size Spann3R with the reference's synthetic weights, on CPU, as the CLI builds it."""
    from spann3r.core.weights import build_model

    model, _ = build_model("synthetic")
    return model


@pytest.fixture(scope="session")
def official_engine(official_model):
    from spann3r.core.engine import Engine

    return Engine(official_model)


@pytest.fixture(scope="session")
def tiny_model():
    from spann3r.core.config import ModelConfig
    from spann3r.core.weights import build_model

    model, _ = build_model("synthetic", ModelConfig.tiny())
    return model


@pytest.fixture(scope="session")
def tiny_engine(tiny_model):
    from spann3r.core.engine import Engine

    return Engine(tiny_model)


@pytest.fixture(autouse=True, scope="session")
def _threads():
    torch.set_num_threads(max(1, os.cpu_count() or 1))

"""Shared fixtures. The full-size model is built once per test session (synthetic weights, ~10 s) and shared."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """A real ``redis-server`` on a free loopback port, in a temporary folder, without persistence of its own."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server, or scripts/setup.sh --test)")
    port, folder = _free_port(), tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    from spann3r.server.store import RedisStore

    store = RedisStore(url)
    deadline = time.monotonic() + 20
    while True:
        try:
            store.client.ping()
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait()


@pytest.fixture(scope="session")
def small_frames(frames_A) -> list[tuple[str, np.ndarray]]:
    """Set A's frames at 320x240: same scene, quicker to decode and encode on the wire."""
    import cv2

    return [(n, cv2.resize(rgb, (320, 240), interpolation=cv2.INTER_AREA)) for n, rgb in frames_A]

"""Harness of the browser tests (conftest.py exposes its fixtures): a real ``spann3r serve`` (synthetic weights,
tiny model) on a free loopback port, the built client, the fake-camera video, and a runner for the Playwright
driver client_js/e2e/live-view.mjs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from browser_media import read_rgb, reference_frames, write_webm, write_y4m

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "client_js"
ARTIFACTS = REPO / "test-artifacts" / "browser"
REFERENCE = Path(os.environ.get("SPANN3R_GOLDEN_DIR", REPO.parent / "shared" / "reference" / "spann3r"))
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def chromium_available() -> bool:
    return Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    port: int
    process: subprocess.Popen
    log: Path
    args: list[str]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # graceful: sessions are snapshotted with --state-dir
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def restart(self) -> None:
        self.stop()
        self.process = _spawn(self.args, self.log, append=True)
        _wait_ready(self)


def _spawn(args: list[str], log: Path, append: bool = False) -> subprocess.Popen:
    with open(log, "ab" if append else "wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "spann3r.cli", *args],
            cwd=REPO,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_ready(server: Server, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.process.poll() is not None:
            raise RuntimeError(f"spann3r serve exited ({server.process.returncode}):\n{server.log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{server.base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"spann3r serve not ready after {timeout} s:\n{server.log.read_text()[-3000:]}")


def start_server(tmp: Path, *extra: str) -> Server:
    port = free_port()
    args = [
        "serve",
        "--weights",
        "synthetic",
        "--model",
        "tiny",
        # the tiny synthetic model's pointmaps fit no pinhole camera: the robust solver (rightly) reports every pose
        # invalid, while the demo's PnP-RANSAC always finds one, which the page needs to draw its frustums
        "--default-pose-method",
        "pnp_ransac",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--threads",
        "1",
        "--log-level",
        "warning",
        *extra,
    ]
    log = tmp / f"serve-{port}.log"
    server = Server(port, _spawn(args, log), log, args)
    try:
        _wait_ready(server)
    except Exception:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def client_build() -> Path:
    """The page's build (server/page), built when missing (CI's setup builds it; a fresh checkout may not have)."""
    if not (CLIENT / "node_modules" / "playwright-core").is_dir():
        pytest.fail("client_js/node_modules is missing: run `cd client_js && npm ci` (scripts/setup.sh does)")
    page = REPO / "server" / "page"
    if not (page / "index.html").is_file():
        subprocess.run(["npm", "run", "build", "--silent"], cwd=CLIENT, check=True)
    return page


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def camera_y4m(media_dir) -> Path:
    """The fake camera's video: frames_A, 320x240, each frame held 2 video frames at 10 fps (looped)."""
    frames = [read_rgb(p) for p in reference_frames(REFERENCE / "frames_A")]
    return write_y4m(frames, media_dir / "frames_A.y4m")


@pytest.fixture(scope="session")
def replay_video(media_dir) -> Path:
    """frames_A as a 4 fps VP8 WebM: 8 frames, 2 s."""
    frames = [read_rgb(p) for p in reference_frames(REFERENCE / "frames_A")]
    return write_webm(frames, media_dir / "frames_A.webm", fps=4)


@pytest.fixture(scope="session")
def replay_images() -> Path:
    return REFERENCE / "frames_A"


@pytest.fixture(scope="module")
def server(client_build, tmp_path_factory):
    """One server for the module; a short idle timeout so that eviction can be observed."""
    s = start_server(tmp_path_factory.mktemp("serve"), "--idle-timeout-s", "4")
    yield s
    s.stop()


def run_driver(scenario: str, base: str, *extra: str, timeout: float = 240, on_line=None) -> dict:
    """Runs the Playwright driver; returns its JSON report. ``on_line(line, process)`` sees each stdout line."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    cmd = [
        "node",
        "e2e/live-view.mjs",
        "--base",
        base,
        "--scenario",
        scenario,
        "--out",
        str(ARTIFACTS),
        "--chromium",
        CHROMIUM,
        *extra,
    ]
    err = ARTIFACTS / f"{scenario}-driver.log"
    with open(err, "wb") as errf:
        proc = subprocess.Popen(
            cmd, cwd=CLIENT, stdout=subprocess.PIPE, stdin=subprocess.PIPE, stderr=errf, text=True, bufsize=1
        )
        last = ""
        start = time.monotonic()
        try:
            for line in proc.stdout:
                last = line if line.strip() else last
                if on_line:
                    on_line(line.rstrip("\n"), proc)
                if time.monotonic() - start > timeout:
                    raise TimeoutError(f"driver scenario {scenario} ran over {timeout} s")
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
    try:
        report = json.loads(last)
    except json.JSONDecodeError:
        pytest.fail(f"driver printed no report (exit {proc.returncode}); stderr: {err.read_text()[-3000:]}")
    (ARTIFACTS / f"{scenario}-report.json").write_text(json.dumps(report, indent=1))
    assert report["ok"], f"scenario {scenario} failed: {report.get('error')}"
    return report

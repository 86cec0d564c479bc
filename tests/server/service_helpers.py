"""Helpers of the server tests: a real uvicorn server on a loopback port, in a thread of the test process (so
it can reuse the session's models), and async runners. The reference README's acceptance checks are in
tests/golden.py."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from contextlib import contextmanager


class LiveServer:
    def __init__(self, app, settings):
        import uvicorn

        from spann3r.cli.serve import uvicorn_config

        self.app, self.settings = app, settings
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", settings.port))
        self.port = self.sock.getsockname()[1]
        config = uvicorn_config(app, settings)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def service(self):
        return self.app.state.service

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not (self.server.started and self.service.ready):
            if self.service.load_error:
                raise RuntimeError(self.service.load_error)
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.sock.close()


@contextmanager
def live_server(engine, weights_kind: str = "synthetic", **overrides):
    """``spann3r serve`` on 127.0.0.1:<free port> with ``engine``; settings overrides as keyword arguments."""
    from spann3r.core.weights import LoadedWeights
    from spann3r.server.app import create_app
    from spann3r.server.settings import ServeSettings

    settings = ServeSettings(**{"port": 0, "max_fps": 1000.0, "log_level": "warning", **overrides})
    app = create_app(settings, engine, LoadedWeights(weights_kind, weights_kind, weights_kind == "synthetic"))
    server = LiveServer(app, settings).start()
    try:
        yield server
    finally:
        server.stop()


def run(coro, timeout: float = 120):
    """Run client coroutine code from a sync test, with a timeout so a hang fails instead of blocking."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def answers_by_seq(messages) -> dict[int, list]:
    """seq → every result / dropped / error naming it (each frame must get exactly one)."""
    from spann3r.server.protocol import DroppedMsg, ErrorMsg, ResultMsg

    out: dict[int, list] = {}
    for m in messages:
        if isinstance(m, (ResultMsg, DroppedMsg)) or (isinstance(m, ErrorMsg) and m.seq is not None):
            out.setdefault(m.seq, []).append(m)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_subprocess(*flags: str, port: int | None = None, env: dict[str, str] | None = None):
    """``spann3r serve`` (tiny model, synthetic weights) in a subprocess on 127.0.0.1; returns ``(process, url)``
    once /readyz answers. ``env`` adds to (and overrides) the environment; frames are not rate-limited by default."""
    import os
    import subprocess
    import sys

    import httpx
    import pytest

    port = port or free_port()
    cmd = [
        sys.executable,
        "-m",
        "spann3r.cli",
        "serve",
        "--model",
        "tiny",
        "--weights",
        "synthetic",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *flags,
    ]
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, "SPANN3R_MAX_FPS": "1000", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"spann3r serve did not become ready:\n{proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.2)

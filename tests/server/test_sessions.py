"""Session lifecycle and the REST surface on a loopback server (tiny model): authentication, capacity, idle
eviction, snapshot + restore across a restart, health, metrics, OpenAPI docs, static client, CORS."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pytest
from service_helpers import live_server, run

from spann3r.client import Recording, ServiceError, StreamClient, stream
from spann3r.core.reconstruct import reconstruct
from spann3r.server.protocol import (
    CLOSE_DELETED,
    CLOSE_IDLE,
    CLOSE_NOT_FOUND,
    CLOSE_UNAUTHORIZED,
    AckMsg,
    ErrorMsg,
)


async def close_code(client: StreamClient) -> str:
    try:
        while True:
            await client.receive()
    except ServiceError as exc:
        return exc.code


def test_auth_refusals(tiny_engine):
    with live_server(tiny_engine, api_key="sesame") as srv:
        url = f"{srv.url}/v1/sessions"
        assert httpx.post(url).status_code == 401
        r = httpx.post(url, headers={"X-API-Key": "wrong"})
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        assert httpx.post(url, headers={"Authorization": "Bearer sesame"}).status_code == 201
        created = httpx.post(url, headers={"X-API-Key": "sesame"}, json={"encoding": "full"}).json()
        sid, token, watch = created["id"], created["token"], created["watch_token"]
        assert created["settings"]["encoding"] == "full" and created["stream_url"].startswith("ws://127.0.0.1:")
        assert token != watch

        def get(path, tok=None, **kw):
            return httpx.get(f"{url}/{sid}{path}", headers={"Authorization": f"Bearer {tok}"} if tok else {}, **kw)

        assert get("").status_code == 401
        assert get("", "not-the-token").status_code == 401
        assert get("", token).status_code == 200 and get("", watch).status_code == 200
        assert get("", params={"token": watch}).status_code == 200  # query form, for links and browsers
        assert get("/export/cloud.ply", watch).status_code == 403
        assert get("/export/secrets.txt", token).status_code == 422  # only the four export names exist
        assert get("/export/cloud.ply", token).status_code == 409  # nothing streamed yet
        assert httpx.delete(f"{url}/{sid}", headers={"Authorization": f"Bearer {watch}"}).status_code == 403
        assert httpx.get(f"{url}/{'0' * 32}", headers={"Authorization": f"Bearer {token}"}).status_code == 404

        async def sockets():
            codes = []
            for sid_, tok in ((sid, "wrong"), (sid, None), ("0" * 32, token), ("../../etc", token)):
                c = StreamClient(srv.url)
                c.attach(sid_, tok or "")
                try:
                    await c.connect()
                    codes.append("connected")
                except ServiceError as exc:
                    codes.append(exc.code)
                await c.close()
            return codes

        # a path-like id matches no route at all: refused before the WebSocket opens
        assert run(sockets()) == [str(CLOSE_UNAUTHORIZED), str(CLOSE_UNAUTHORIZED), str(CLOSE_NOT_FOUND), "http 403"]


def test_capacity_refusal_and_delete(tiny_engine):
    with live_server(tiny_engine, max_sessions=2) as srv:

        async def main():
            a, b, c = StreamClient(srv.url), StreamClient(srv.url), StreamClient(srv.url)
            await a.create_session()
            await b.create_session()
            try:
                await c.create_session()
                refused = None
            except ServiceError as exc:
                refused = (exc.status, exc.code)
            await a.connect()
            await a.delete()  # frees a slot and closes a's socket
            code = await close_code(a)
            await c.create_session()
            for x in (a, b, c):
                await x.close()
            return refused, code

        refused, code = run(main())
        assert refused == (503, "capacity")
        assert code == str(CLOSE_DELETED)
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert "spann3r_sessions_refused_total 1.0" in metrics and "spann3r_active_sessions 2.0" in metrics


def test_idle_sessions_are_evicted(tiny_engine, small_frames, tmp_path):
    with live_server(tiny_engine, idle_timeout_s=0.6, state_dir=tmp_path) as srv:

        async def main():
            c = StreamClient(srv.url)
            await c.create_session()
            await c.connect()
            await c.send_frame(small_frames[0][1], "png")
            await c.receive()
            await c.snapshot()  # leaves files behind that eviction must remove
            assert (tmp_path / f"{c.session.id}.json").exists()
            code = await asyncio.wait_for(close_code(c), 10)
            try:
                await c.stats()
                status = 200
            except ServiceError as exc:
                status = exc.status
            await c.close()
            return code, status

        code, status = run(main())
        assert code == str(CLOSE_IDLE) and status == 404
        # the memory and its snapshot are gone; the files go right after the connections are closed (a stalled
        # client must not hold the close up), so the client can see its close code a moment before they are
        deadline = time.monotonic() + 10
        while list(tmp_path.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(tmp_path.iterdir()) == []
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert "spann3r_sessions_evicted_total 1.0" in metrics and "spann3r_active_sessions 0.0" in metrics


def test_snapshot_and_restore_across_restart(tiny_engine, small_frames, tmp_path):
    """A session saved at graceful shutdown continues after a restart exactly as if never interrupted."""
    frames = small_frames[:6]
    rec = Recording()

    with live_server(tiny_engine, state_dir=tmp_path) as srv:

        async def first_half():
            c = StreamClient(srv.url)
            created = await c.create_session({"encoding": "full", "frame_policy": "queue"})
            await c.connect()
            for _, rgb in frames[:3]:
                await c.send_frame(rgb, "png")
            while set(rec.finals) != {0, 1}:
                rec.add(await c.receive())
            await c.control("snapshot")
            ack = await c.receive()
            await c.close()
            return created, ack

        created, ack = run(first_half())
        assert isinstance(ack, AckMsg) and ack.action == "snapshot" and ack.snapshot_bytes > 0
    # shutdown snapshotted the session: its files are there, tokens only as hashes
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{created.id}.d", f"{created.id}.json"]
    assert all(created.token.encode() not in p.read_bytes() for p in (tmp_path / f"{created.id}.d").iterdir())

    with live_server(tiny_engine, state_dir=tmp_path) as srv:

        async def second_half():
            c = StreamClient(srv.url)
            c.attach(created.id, created.token)
            stats = await c.stats()
            hello = None
            async for m in stream(srv.url, frames[3:], client=c, encoding="png"):
                hello = hello or m
                rec.add(m)
            traj = json.loads(await c.export("trajectory.json"))
            await c.close()
            return stats, hello, traj

        stats, hello, traj = run(second_half())
    assert stats.frames_processed == 3 and hello.frames_processed == 3 and hello.last_seq == 2
    assert [f["index"] for f in traj["frames"]] == list(range(6))  # the export buffer survived too
    ours, ref = rec.reconstruction(), reconstruct(tiny_engine, frames)
    np.testing.assert_array_equal(ours.pts3d, ref.pts3d)
    np.testing.assert_array_equal(ours.conf, ref.conf)
    np.testing.assert_array_equal(ours.skipped, ref.skipped)
    np.testing.assert_array_equal(ours.mem_tokens, ref.mem_tokens)


def test_snapshot_needs_a_state_dir(tiny_engine, small_frames):
    with live_server(tiny_engine) as srv:

        async def main():
            c = StreamClient(srv.url)
            await c.create_session()
            await c.connect()
            await c.control("snapshot")
            err = await c.receive()
            try:
                await c.snapshot()
            except ServiceError as exc:
                status = exc.status
            await c.close()
            return err, status

        err, status = run(main())
        assert isinstance(err, ErrorMsg) and err.code == "snapshot_unavailable" and status == 409


def test_health_metrics_docs_and_static_client(tiny_engine, small_frames, tmp_path):
    with live_server(tiny_engine, static_dir=tmp_path) as srv:
        assert httpx.get(f"{srv.url}/healthz").json() == {"status": "ok"}
        ready = httpx.get(f"{srv.url}/readyz").json()
        assert ready["status"] == "ready" and ready["model"]["synthetic"] is True and ready["model"]["preset"] == "tiny"
        page = httpx.get(f"{srv.url}/")
        assert page.status_code == 200 and "npm ci &amp;&amp; npm run build" in page.text
        assert httpx.get(f"{srv.url}/docs").status_code == 200
        paths = httpx.get(f"{srv.url}/openapi.json").json()["paths"]
        assert {
            "/v1/sessions",
            "/v1/sessions/{session_id}",
            "/v1/sessions/{session_id}/export/{kind}",
            "/healthz",
            "/readyz",
            "/metrics",
        } <= set(paths)

        async def main():
            c = StreamClient(srv.url)
            async for _ in stream(srv.url, small_frames[:3], client=c, settings={"frame_policy": "queue"}):
                pass
            await c.close()

        run(main())
        m = httpx.get(f"{srv.url}/metrics").text
        for line in (
            "spann3r_frames_received_total 3.0",
            "spann3r_frames_processed_total 3.0",
            "spann3r_batch_size_count",
            "spann3r_step_seconds_bucket",
            "spann3r_queue_depth 0.0",
            'spann3r_device_memory_bytes{kind="resident"}',
            "spann3r_decode_seconds_count 3.0",
        ):
            assert line in m, line

    (tmp_path / "index.html").write_text("<title>live view</title>")
    with live_server(tiny_engine, static_dir=tmp_path) as srv:
        assert "live view" in httpx.get(f"{srv.url}/").text


def test_not_ready_while_the_model_is_missing(tmp_path):
    """A server whose weights cannot load answers /healthz, and refuses work with 503 saying why."""
    from service_helpers import LiveServer

    from spann3r.server.app import create_app
    from spann3r.server.settings import ServeSettings

    settings = ServeSettings(port=0, weights=str(tmp_path / "missing.pth"), model="tiny", log_level="error")
    srv = LiveServer(create_app(settings), settings)
    srv.thread.start()
    try:
        for _ in range(500):
            if srv.server.started and srv.service.load_error:
                break
            import time

            time.sleep(0.02)
        assert httpx.get(f"{srv.url}/healthz").status_code == 200
        r = httpx.get(f"{srv.url}/readyz")
        assert r.status_code == 503 and "missing.pth" in r.json()["detail"]
        r = httpx.post(f"{srv.url}/v1/sessions")
        assert r.status_code == 503 and r.json()["code"] == "not_ready"
    finally:
        srv.stop()


def test_cors_origins(tiny_engine):
    with live_server(tiny_engine, cors_origins=["https://viewer.example"]) as srv:

        def preflight(origin):
            return httpx.options(
                f"{srv.url}/v1/sessions", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
            ).headers

        assert preflight("https://viewer.example").get("access-control-allow-origin") == "https://viewer.example"
        assert "access-control-allow-origin" not in preflight("https://evil.example")


def test_tls_serves_https_and_wss(tiny_engine, small_frames, tmp_path):
    """Phones only open the camera on HTTPS pages: with a certificate the service speaks HTTPS and WSS."""
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    with live_server(tiny_engine, tls_cert=cert, tls_key=key) as srv:
        url = srv.url.replace("http://", "https://")

        async def main():
            c = StreamClient(url, verify_tls=False)
            messages = [
                m
                async for m in stream(
                    url, small_frames[:2], client=c, encoding="jpeg", settings={"frame_policy": "queue"}
                )
            ]
            await c.close()
            return c.session, messages

        created, messages = run(main())
        assert created.stream_url.startswith("wss://127.0.0.1:")
        assert [m.type for m in messages] == ["hello", "result", "result", "finished"]
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/healthz")  # a self-signed certificate is refused by default
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{srv.url}/healthz")  # and plain HTTP is not served

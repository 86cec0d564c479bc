"""A session's life: created → streaming → finished in its stats (the page derives itself from the same enum), and
abandoned sessions: one whose stream connection went away is released after ``orphan_grace_s`` (not the idle
timeout); a reconnect within the grace keeps it; a capacity refusal says when the first orphan is released."""

from __future__ import annotations

import asyncio
import time

import httpx
from service_helpers import live_server, run

from spann3r.client import StreamClient
from spann3r.server.protocol import ErrorMsg, FinishedMsg
from spann3r.server.sessions import CAPACITY_RETRY_AFTER_S


async def connect_and_leave(base: str) -> tuple[str, str]:
    """Create a session, open its stream connection, then go away; returns the session's id and token."""
    client = StreamClient(base)
    created = await client.create_session()
    await client.connect()
    await client.close()
    return created.id, created.token


def wait_for(predicate, timeout: float) -> float:
    """Seconds until ``predicate()`` held; fails after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.05)
    return time.monotonic() - start


def test_an_abandoned_session_is_released_after_the_grace(tiny_engine):
    with live_server(tiny_engine, orphan_grace_s=1.0) as srv:
        held = httpx.post(f"{srv.url}/v1/sessions").json()  # never connected: not an orphan
        sid, _ = run(connect_and_leave(srv.url))
        assert sid in srv.service.manager.sessions
        took = wait_for(lambda: sid not in srv.service.manager.sessions, timeout=5)
        assert 0.7 < took < 3.0, took  # the grace, not the 300 s idle timeout
        assert held["id"] in srv.service.manager.sessions


def test_a_reconnect_within_the_grace_keeps_the_session(tiny_engine):
    async def leave_and_come_back(base: str, away_s: float, stay_s: float) -> tuple[str, str, bool]:
        sid, token = await connect_and_leave(base)
        await asyncio.sleep(away_s)
        async with StreamClient(base) as client:
            client.attach(sid, token)
            hello = await client.connect()
            await asyncio.sleep(stay_s)  # connected for longer than the grace: still held
            return sid, hello.session_id, sid in srv.service.manager.sessions

    with live_server(tiny_engine, orphan_grace_s=1.0) as srv:
        sid, resumed, held = run(leave_and_come_back(srv.url, away_s=0.5, stay_s=2.0))
        assert resumed == sid and held
        # gone again for good: released after the grace
        took = wait_for(lambda: sid not in srv.service.manager.sessions, timeout=5)
        assert took < 3.0, took


def test_capacity_refusal_says_when_the_orphan_is_released(tiny_engine):
    with live_server(tiny_engine, max_sessions=1, orphan_grace_s=20.0) as srv:
        full = httpx.post(f"{srv.url}/v1/sessions").json()
        r = httpx.post(f"{srv.url}/v1/sessions")
        assert r.status_code == 503 and r.json()["code"] == "capacity"
        assert r.headers["Retry-After"] == str(CAPACITY_RETRY_AFTER_S)  # no orphan: the documented default
        auth = {"Authorization": f"Bearer {full['token']}"}
        assert httpx.delete(f"{srv.url}/v1/sessions/{full['id']}", headers=auth).status_code == 204
        run(connect_and_leave(srv.url))
        time.sleep(1.0)
        r = httpx.post(f"{srv.url}/v1/sessions")
        assert r.status_code == 503
        retry_after = int(r.headers["Retry-After"])
        assert 18 <= retry_after <= 20 + 5, retry_after  # the grace left (plus one release tick at most)


def test_the_session_life_in_its_stats(tiny_engine, small_frames):
    async def lives(base: str) -> list[str]:
        async with StreamClient(base) as client:
            await client.create_session({"frame_policy": "queue"})  # both frames are taken: a finish can run
            seen = [(await client.stats()).life]
            await client.connect()
            seen.append((await client.stats()).life)
            for _, rgb in small_frames[:2]:
                await client.send_frame(rgb)
            await client.finish()
            async for msg in client.messages():
                if isinstance(msg, FinishedMsg | ErrorMsg):
                    assert isinstance(msg, FinishedMsg), msg
                    break
            seen.append((await client.stats()).life)
            await client.reset()
            await asyncio.sleep(0.3)  # the reset's ack
            seen.append((await client.stats()).life)
            return seen

    with live_server(tiny_engine) as srv:
        assert run(lives(srv.url)) == ["created", "streaming", "finished", "streaming"]

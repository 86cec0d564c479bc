"""A stream connection that replaces another first gets the session's latest results again (sessions.REPLAY_RESULTS):
a broken connection may have swallowed them while the stream moved past their frames."""

from __future__ import annotations

import asyncio

from service_helpers import live_server, run

from spann3r.client import StreamClient
from spann3r.server.protocol import AckMsg, HelloMsg, ResultMsg
from spann3r.server.sessions import REPLAY_RESULTS


async def results_after_hello(url: str, session, token: str, timeout: float = 2.0) -> list[int]:
    """Attach a new stream connection; the seqs of the results it gets before anything new happens."""
    c = StreamClient(url)
    c.attach(session.id, token)
    assert isinstance(await c.connect(), HelloMsg)
    seqs = []
    try:
        while True:
            m = await asyncio.wait_for(c.receive(), timeout)
            if isinstance(m, ResultMsg):
                seqs.append(m.seq)
    except TimeoutError:
        pass
    await c.close()
    return seqs


def test_a_new_stream_connection_gets_the_latest_results_again(tiny_engine, small_frames):
    n = REPLAY_RESULTS + 2
    with live_server(tiny_engine) as srv:

        async def main():
            c = StreamClient(srv.url)
            created = await c.create_session({"encoding": "compact", "frame_policy": "queue", "preview": False})
            await c.connect()
            got = []
            for seq, (_, rgb) in enumerate(small_frames[:n]):  # one at a time: none is dropped
                await c.send_frame(rgb, seq=seq, encoding="png")
                while not isinstance(m := await c.receive(), ResultMsg):
                    pass
                got.append(m.seq)
            replayed = await results_after_hello(srv.url, created, created.token)  # replaces c's connection
            again = await results_after_hello(srv.url, created, created.token)
            c2 = StreamClient(srv.url)
            c2.attach(created.id, created.token)
            await c2.connect()
            await c2.control("reset")
            while not isinstance(await c2.receive(), AckMsg):
                pass
            await c2.close()
            after_reset = await results_after_hello(srv.url, created, created.token)
            await c.close()
            return got, replayed, again, after_reset

        got, replayed, again, after_reset = run(main())
    assert got == list(range(n))
    assert replayed == list(range(n - REPLAY_RESULTS, n))  # the latest ones, in order
    assert again == replayed  # every reconnect, not only the first
    assert after_reset == []  # a reset starts a new stream: nothing of the old one comes back

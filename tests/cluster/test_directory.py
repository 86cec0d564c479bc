"""The session directory in the store (owner + ownership epoch) and its fence, in a folder and in Redis: a claim is
a compare-and-set, and once another worker claimed a session, its old owner can write nothing more; in a live
cluster worker, the session is then let go (its connections closed with 1012 so the client finds the new owner)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from service_helpers import live_server, run

from spann3r.client import StreamClient
from spann3r.server.protocol import CLOSE_SHUTDOWN
from spann3r.server.store import FolderStore, Owner, OwnershipLost, RedisStore, SessionStore


@pytest.fixture(params=["folder", "redis"])
def store(request, tmp_path) -> SessionStore:
    if request.param == "folder":
        return FolderStore(tmp_path / "state")
    s = RedisStore(request.getfixturevalue("redis_url"))
    s.client.flushdb()
    return s


def sid() -> str:
    return uuid.uuid4().hex


def test_a_claim_is_a_compare_and_set_with_a_growing_epoch(store):
    a = sid()
    assert store.owner(a) is None
    first = store.claim(a, "w0", None)
    assert first == Owner("w0", 1) == store.owner(a)
    with pytest.raises(OwnershipLost):
        store.claim(a, "w1", None)  # not new any more
    with pytest.raises(OwnershipLost):
        store.claim(a, "w1", Owner("w0", 2))  # not the current epoch
    second = store.claim(a, "w1", first)
    assert second == Owner("w1", 2)
    with pytest.raises(OwnershipLost):
        store.claim(a, "w2", first)  # a second taker of the same dead owner loses
    b = sid()
    store.claim(b, "w0", None)
    assert store.owners() == {a: Owner("w1", 2), b: Owner("w0", 1)}


def test_the_old_owner_is_fenced_out_of_every_write(store):
    a = sid()
    old = store.claim(a, "w0", None)
    store.commit(a, {"record": b"v1"}, fence=old)
    new = store.claim(a, "w1", old)
    with pytest.raises(OwnershipLost):
        store.commit(a, {"record": b"stale"}, fence=old)
    with pytest.raises(OwnershipLost):
        store.delete(a, fence=old)
    with pytest.raises(OwnershipLost):
        store.release(a, old)
    assert store.get(a) == {"record": b"v1"} and store.owner(a) == new
    store.commit(a, {"record": b"v2"}, fence=new)
    assert store.get(a) == {"record": b"v2"}
    store.delete(a, fence=new)  # the state goes; the directory entry stays until released
    assert store.get(a) == {} and store.owner(a) == new
    store.release(a, new)
    assert store.owner(a) is None and a not in store.owners()


def test_unfenced_writes_of_a_single_process_are_unchanged(store):
    a = sid()
    store.commit(a, {"record": b"x"})
    assert store.get(a) == {"record": b"x"} and store.owner(a) is None
    store.delete(a)
    assert store.get(a) == {}


def test_a_worker_whose_session_was_taken_over_lets_it_go(tiny_engine, small_frames, tmp_path):
    """A cluster worker presumed dead (its session claimed by another) keeps streaming: its next commit is refused,
    it closes the session with 1012 (reconnect), and the store keeps what the new owner has."""
    state = tmp_path / "state"
    with live_server(tiny_engine, state_dir=state, cluster_worker=True, worker_id="w0", persist_every=1) as srv:
        store = FolderStore(state)

        async def main():
            c = StreamClient(srv.url)
            created = await c.create_session({"encoding": "full", "frame_policy": "queue"})
            assert store.owner(created.id) == Owner("w0", 1)  # claimed at creation
            await c.connect()
            store.claim(created.id, "w1", Owner("w0", 1))  # another worker took it over
            store.commit(created.id, {"record": b"the new owner's"}, fence=Owner("w1", 2))
            for seq, (_, rgb) in enumerate(small_frames[:3]):
                await c.send_frame(rgb, seq=seq, encoding="png")
            deadline = time.monotonic() + 60
            code = None
            while code is None and time.monotonic() < deadline:
                try:
                    await asyncio.wait_for(c.receive(), 5)
                except Exception:
                    code = c.ws.close_code if c.ws is not None else None
            await c.close()
            return created, code

        created, code = run(main())
        assert code == CLOSE_SHUTDOWN
        assert store.get(created.id)["record"] == b"the new owner's"  # never overwritten by the old owner
        assert store.owner(created.id) == Owner("w1", 2)
        assert srv.service.manager.get(created.id) is None  # let go here


def test_creations_that_arrive_together_spread_over_the_workers(tmp_path):
    """A fleet starting at once: every creation is placed before any poll can count the sessions made by the
    others. Each placement holds its worker's slot until answered, so they spread instead of all going to the
    worker the last poll saw with the most room; a refused creation gives its slot back."""
    from spann3r.server.cluster import WorkerPool, WorkerView

    pool = WorkerPool(FolderStore(tmp_path / "state"))
    for name in ("w0", "w1"):
        pool.workers[name] = WorkerView(name, None, f"{name}-0", live=True, ready=True, max_sessions=4)
    placed = [pool.reserve() for _ in range(6)]
    assert [w.name for w in placed if w].count("w0") == 3 and [w.name for w in placed if w].count("w1") == 3
    pool.placed(placed[0], created=False)  # refused: its slot is free again
    assert [pool.workers[n].free for n in ("w0", "w1")] == [2, 1]
    for w in placed[1:]:
        pool.placed(w, created=True)
    assert [pool.workers[n].sessions for n in ("w0", "w1")] == [2, 3]
    more = [pool.reserve() for _ in range(4)]
    assert [w.name if w else None for w in more] == ["w0", "w0", "w1", None]  # then every slot is held


def test_a_dead_workers_sessions_are_adopted_at_once(tmp_path):
    """Failover moves a dead worker's sessions concurrently (each adoption is a store read and a restore on the
    target): all of them are in flight together, spread over the live workers, and a failed call frees its slot."""
    from spann3r.server.cluster import WorkerPool, WorkerView

    store = FolderStore(tmp_path / "state")
    orphans = [sid() for _ in range(4)]
    for s in orphans:
        store.claim(s, "w0-dead", None)
    in_flight, most = 0, 0
    all_started = asyncio.Event()

    class Adopt:
        def __init__(self, outcome: str):
            self.outcome = outcome

        async def _run(self, session_id: str, worker: str, epoch: int) -> str:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            if most == len(orphans):
                all_started.set()
            # one at a time, this would wait forever for the others
            await asyncio.wait_for(all_started.wait(), 5)
            in_flight -= 1
            if self.outcome == "raise":
                raise ConnectionError("the target died too")
            return self.outcome

        def remote(self, *args):
            return self._run(*args)

    class Actor:
        def __init__(self, outcome: str):
            self.adopt = Adopt(outcome)

    pool = WorkerPool(store)
    pool.workers["w0"] = WorkerView("w0", None, "w0-dead", dead=True)
    pool.workers["w1"] = WorkerView("w1", Actor("adopted"), "w1-a", live=True, ready=True, max_sessions=4)
    pool.workers["w2"] = WorkerView("w2", Actor("raise"), "w2-a", live=True, ready=True, max_sessions=4)
    report = run(pool.sweep(), timeout=30)
    assert most == len(orphans)
    # reserve spreads the four over both (two each); w2's calls fail, and those two wait for the next sweep
    assert len(report.adopted) == 2 and set(report.adopted.values()) == {"w1-a"} and report.lost == []
    # w1 counts its two adopted sessions until the next poll; w2's failed calls gave their slots back
    assert (pool.workers["w1"].sessions, pool.workers["w1"].placing) == (2, 0)
    assert (pool.workers["w2"].sessions, pool.workers["w2"].placing) == (0, 0)

"""The export buffer holds compact copies within its point budget: no per-frame array kept alive by a view."""

from __future__ import annotations

import numpy as np

from spann3r.server.exports import ExportBuffer

POINTS_PER_FRAME, FRAMES, BUDGET = 10_000, 60, 5_000
BYTES_PER_POINT = 3 * 4 + 3  # xyz float32 + rgb uint8


def held_bytes(buf: ExportBuffer) -> int:
    """Bytes the buffer's arrays keep alive: a view keeps its whole base array."""
    seen: dict[int, int] = {}
    for arrays in buf.points_by_frame.values():
        for a in arrays:
            owner = a if a.base is None else a.base
            while isinstance(owner, np.ndarray) and owner.base is not None:
                owner = owner.base
            seen[id(owner)] = owner.nbytes
    return sum(seen.values())


def fill(buf: ExportBuffer, frames: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(frames):
        xyz = rng.random((POINTS_PER_FRAME, 3), dtype=np.float32)
        rgb = rng.integers(0, 255, (POINTS_PER_FRAME, 3), dtype=np.uint8)
        buf.add(i, xyz, rgb, np.eye(4), True)


def test_export_buffer_holds_copies_within_the_point_budget():
    buf = ExportBuffer(BUDGET)
    fill(buf, FRAMES)
    assert buf.points <= BUDGET and buf.decimation > 1
    assert all(a.flags.owndata for arrays in buf.points_by_frame.values() for a in arrays)
    assert held_bytes(buf) <= BUDGET * BYTES_PER_POINT
    assert buf.nbytes == held_bytes(buf)


def test_a_restored_export_buffer_holds_copies_too():
    buf = ExportBuffer(BUDGET)
    fill(buf, 8)
    restored = ExportBuffer(BUDGET)
    restored.load_arrays(buf.arrays())
    assert restored.points == buf.points
    assert all(a.flags.owndata for arrays in restored.points_by_frame.values() for a in arrays)
    assert held_bytes(restored) <= BUDGET * BYTES_PER_POINT
    np.testing.assert_array_equal(restored.cloud()[0], buf.cloud()[0])


def test_the_point_count_follows_every_change():
    """``points`` is kept as frames come (a sum over every frame on each add would grow with the session), through
    decimation, a final that replaces its frame's points, a frozen copy and a restore."""

    def held(b: ExportBuffer) -> int:
        return sum(len(x) for x, _ in b.points_by_frame.values())

    buf = ExportBuffer(BUDGET)
    rng = np.random.default_rng(1)
    for i in [0, 1, 2, 2, 3, 1, *range(4, 40)]:  # frames 1 and 2 replaced (a resumed stream re-sends them)
        n = int(rng.integers(0, 2_000))
        buf.add(i, rng.random((n, 3), dtype=np.float32), np.zeros((n, 3), np.uint8), np.eye(4), True)
        assert buf.points == held(buf) <= BUDGET
    assert buf.decimation > 1
    assert buf.frozen().points == buf.points
    restored = ExportBuffer(BUDGET)
    restored.load_arrays(buf.arrays())
    assert restored.points == held(restored) == buf.points


def test_the_service_s_fresh_arrays_are_taken_over_without_a_copy():
    """The service adds export items on its event loop: fresh arrays made for it are held as they are (a copy of
    every final's points there cost the loop ~10 % of its time); anything else, and anything decimated, is
    copied compact."""
    rng = np.random.default_rng(1)
    xyz = rng.random((POINTS_PER_FRAME, 3), dtype=np.float32)
    rgb = rng.integers(0, 255, (POINTS_PER_FRAME, 3), dtype=np.uint8)
    buf = ExportBuffer(BUDGET * 3)
    buf.add(0, xyz, rgb, np.eye(4), True, take=True)
    assert buf.points_by_frame[0][0] is xyz and buf.points_by_frame[0][1] is rgb
    buf.add(1, xyz, rgb, np.eye(4), True)  # not taken: a copy, the caller keeps its arrays
    assert buf.points_by_frame[1][0] is not xyz and buf.points_by_frame[1][0].flags.owndata
    assert buf.decimation > 1  # 20,000 points over a budget of 15,000
    buf.add(2, xyz, rgb, np.eye(4), True, take=True)  # decimated: a compact copy of every n-th point
    kept = buf.points_by_frame[2][0]
    assert kept.flags.owndata and len(kept) == POINTS_PER_FRAME // buf.decimation
    assert buf.points <= BUDGET * 3 and buf.nbytes == held_bytes(buf)

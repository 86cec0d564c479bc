"""The export buffer holds its points within a budget, as compact copies (a view would keep a frame's whole array
alive), and no add copies much more than the points it adds."""

from __future__ import annotations

import numpy as np

from spann3r.server.exports import COMPACT_PER_ADD, ExportBuffer

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


def views(buf: ExportBuffer) -> list[int]:
    return [i for i, arrays in buf.points_by_frame.items() if not all(a.flags.owndata for a in arrays)]


def test_export_buffer_holds_copies_within_the_point_budget():
    """At every add the points fit the budget. A doubling of the decimation thins every frame as a view (a copy of
    millions of points held the service's event loop for tens of ms); each add then makes COMPACT_PER_ADD of them
    compact, so the memory held stays below twice the budget plus a frame, and is the budget's once they are."""
    buf = ExportBuffer(BUDGET)
    rng = np.random.default_rng(0)
    doublings = views_left = 0
    for i in range(FRAMES):
        decimation = buf.decimation
        xyz = rng.random((POINTS_PER_FRAME, 3), dtype=np.float32)
        buf.add(i, xyz, rng.integers(0, 255, (POINTS_PER_FRAME, 3), dtype=np.uint8), np.eye(4), True)
        if buf.decimation != decimation:
            doublings += 1
            views_left = len(buf.points_by_frame)
        views_left = max(0, views_left - COMPACT_PER_ADD)
        assert len(views(buf)) == views_left, i
        assert buf.points <= BUDGET
        assert buf.nbytes == held_bytes(buf) <= (2 * BUDGET + POINTS_PER_FRAME) * BYTES_PER_POINT
    assert doublings >= 4 and buf.decimation > 1
    # frame 0 again (as a resumed stream re-sends it: as many points as it holds, no doubling) until the views
    # left are compact
    xyz0, rgb0 = (np.repeat(a, buf.decimation, axis=0) for a in buf.points_by_frame[0])
    for _ in range(views_left // COMPACT_PER_ADD + 1):
        buf.add(0, xyz0, rgb0, np.eye(4), True)
    assert not views(buf)
    assert buf.nbytes == held_bytes(buf) <= BUDGET * BYTES_PER_POINT


def test_a_buffer_of_more_frames_than_points_in_its_budget_stops_thinning():
    """Frames of one confident point each, more of them than the budget has points: no thinning can fit them (a
    frame keeps its one point), so an add stops trying rather than loop forever on the service's event loop."""
    buf = ExportBuffer(BUDGET)
    one = np.zeros((1, 3), np.float32), np.zeros((1, 3), np.uint8)
    for i in range(BUDGET + 10):
        buf.add(i, *one, np.eye(4), True)
    assert buf.points == BUDGET + 10 == len(buf.points_by_frame)


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
    buf.add(2, xyz, rgb, np.eye(4), True, take=True)  # not thinned as the buffer is: every n-th point, compact
    kept = buf.points_by_frame[2][0]
    assert kept.flags.owndata and len(kept) == POINTS_PER_FRAME // buf.decimation
    np.testing.assert_array_equal(kept, xyz[:: buf.decimation])
    # thinned where it was made (the post-processing thread) at the buffer's level: taken as it is (frame 2 again,
    # as a resumed stream re-sends it: the same number of points, no doubling)
    thinned, thinned_rgb = xyz[:: buf.decimation].copy(), rgb[:: buf.decimation].copy()
    buf.add(2, thinned, thinned_rgb, np.eye(4), True, every=buf.decimation, take=True)
    assert buf.points_by_frame[2][0] is thinned and buf.points_by_frame[2][1] is thinned_rgb
    assert buf.points <= BUDGET * 3 and buf.nbytes == held_bytes(buf)

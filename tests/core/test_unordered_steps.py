"""The unordered mode one unit at a time (``UnorderedSteps``, what the service's jobs run and what
``reconstruct_unordered`` loops over): the same numbers driven unit by unit from outside, unit counts, progress,
and refusals (tiny model)."""

from __future__ import annotations

import numpy as np
import pytest

from spann3r.core.unordered import (
    UnorderedError,
    UnorderedSteps,
    pair_count,
    reconstruct_unordered,
    step_decode_count,
    unit_count,
)


def assert_same_result(a, b) -> None:
    """Bit-identical arrays (NaN where NaN), same order and initial pair."""
    arrays_a, arrays_b = a.arrays(), b.arrays()
    assert arrays_a.keys() == arrays_b.keys()
    for key, value in arrays_a.items():
        assert value.shape == arrays_b[key].shape, key
        if value.dtype.kind == "f":
            np.testing.assert_array_equal(value, arrays_b[key], err_msg=key)
        else:
            assert (value == arrays_b[key]).all(), key
    assert a.initial_pair == b.initial_pair
    for p, q in zip(a.previews, b.previews):
        assert p.index == q.index and np.array_equal(p.pts3d, q.pts3d) and np.array_equal(p.conf, q.conf)
    for s, t in zip(a.reconstruction.traces, b.reconstruction.traces):
        assert (s.step, s.frame_index, s.skipped, s.pruned, s.mem_tokens, s.similarity) == (
            t.step,
            t.frame_index,
            t.skipped,
            t.pruned,
            t.mem_tokens,
            t.similarity,
        )


@pytest.mark.parametrize("n, batch", [(4, 1), (3, 4)])
def test_stepwise_equals_reconstruct_unordered(tiny_engine, frames_D, n, batch):
    """Batches of 1 split a greedy step over several units (the running best across them); 4 is the default
    (the service's job test checks it on 4 images)."""
    frames = frames_D[:n]
    kw = dict(pair_batch=batch, candidate_batch=batch, encode_batch=batch)
    direct = reconstruct_unordered(tiny_engine, frames, **kw)
    run = UnorderedSteps(tiny_engine, frames, **kw)
    seen = []
    while not run.done:
        before = (run.stage, run.stage_done)
        run.run_unit()
        seen.append((before, run.stage, run.stage_done, run.units_done))
    stepwise = run.finish()
    assert_same_result(stepwise, direct)
    assert run.units_done == run.units_total == len(seen) == unit_count(n, batch, batch, batch)
    # each unit advances its stage by at most one batch; a stage ends at its own total
    per_stage = {}
    for (stage, done_before), stage_after, done_after, _ in seen:
        if stage_after == stage:
            assert 0 < done_after - done_before <= batch
        per_stage.setdefault(stage, 0)
        per_stage[stage] += 1
    assert per_stage["encode"] == -(-n // batch) and per_stage["pairs"] == -(-pair_count(n) // batch)
    assert per_stage["views"] == run.units_total - per_stage["encode"] - per_stage["pairs"]


def test_unit_count_and_totals():
    # 6 images, batch 4: 2 encode units, 30 pairs → 8 units, steps: 1 + ceil(4/4) + ceil(3/4) + ceil(2/4) + ceil(1/4)
    assert unit_count(6, 4, 4, 4) == 2 + 8 + 5
    assert unit_count(6, 1, 1, 1) == 6 + 30 + step_decode_count(6)
    assert unit_count(2) == 1 + 1 + 1 and unit_count(1) == 0


def test_finish_before_the_last_unit_and_too_few_images(tiny_engine, frames_D):
    run = UnorderedSteps(tiny_engine, frames_D[:2], pair_batch=1, candidate_batch=1, encode_batch=1)
    assert run.units_total == 2 + 2 + 1
    run.run_unit()
    with pytest.raises(RuntimeError, match="units have not run"):
        run.finish()
    with pytest.raises(UnorderedError, match="at least two"):
        UnorderedSteps(tiny_engine, frames_D[:1])
    while not run.done:
        run.run_unit()
    with pytest.raises(RuntimeError, match="every unit"):
        run.run_unit()
    r = run.finish()
    assert r.order.tolist() == list(r.initial_pair) and r.reconstruction.pts3d.shape == (2, 224, 224, 3)
    assert_same_result(
        r, reconstruct_unordered(tiny_engine, frames_D[:2], pair_batch=1, candidate_batch=1, encode_batch=1)
    )

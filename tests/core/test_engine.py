"""Streaming engine semantics on the tiny preset: the one-frame lag, previews on/off, the batched step, snapshots."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spann3r.core.config import MemoryConfig
from spann3r.core.engine import Engine, Session, StreamError
from spann3r.core.preprocess import PreparedFrame, load_frame, to_model_input


@pytest.fixture(scope="module")
def frames_A(golden_dir):
    return [load_frame(p) for p in sorted((golden_dir / "frames_A").glob("*.png"))]


@pytest.fixture(scope="module")
def frames_B(golden_dir):
    return [load_frame(p) for p in sorted((golden_dir / "frames_B").glob("*.png"))[:12]]


def run_stream(engine, frames, preview=True):
    s = Session(engine, preview=preview)
    results = [s.push(f) for f in frames]
    return results, s.finish(), s


def test_one_frame_lag(tiny_engine, frames_A):
    results, last, _ = run_stream(tiny_engine, frames_A)
    assert results[0].final is None and results[0].preview is None and results[0].memory is None
    for t, r in enumerate(results[1:], start=1):
        assert r.frame_index == t
        assert r.final.index == t - 1 and r.final.kind == "final"
        assert r.preview.index == t and r.preview.kind == "preview"
        assert r.memory.frame_index == t - 1
        np.testing.assert_array_equal(r.final.colors, frames_A[t - 1].colors)
        np.testing.assert_array_equal(r.preview.colors, frames_A[t].colors)
        assert r.final.pts3d.shape == (224, 224, 3) and r.final.conf.shape == (224, 224)
    # the last frame's final is its preview of the last step
    assert last.index == len(frames_A) - 1 and last.kind == "final"
    np.testing.assert_array_equal(last.pts3d, results[-1].preview.pts3d)


def test_previews_off_gives_identical_finals(tiny_engine, frames_A):
    on, last_on, _ = run_stream(tiny_engine, frames_A, preview=True)
    off, last_off, _ = run_stream(tiny_engine, frames_A, preview=False)
    for a, b in zip(on[1:], off[1:]):
        assert b.preview is None
        np.testing.assert_array_equal(a.final.pts3d, b.final.pts3d)
        np.testing.assert_array_equal(a.final.conf, b.final.conf)
    # finish() runs head 2 once on the kept tokens: the same numbers as the preview would have been
    np.testing.assert_allclose(last_off.pts3d, last_on.pts3d, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(last_off.conf, last_on.conf, rtol=1e-5, atol=1e-6)


def test_single_frame_stream_cannot_finish(tiny_engine, frames_A):
    s = Session(tiny_engine)
    s.push(frames_A[0])
    with pytest.raises(StreamError, match="at least two frames"):
        s.finish()


def test_no_push_after_finish(tiny_engine, frames_A):
    _, _, s = run_stream(tiny_engine, frames_A[:2])
    with pytest.raises(StreamError, match="finished"):
        s.push(frames_A[2])


def _close(a, b, what):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(b).max()), err_msg=what)


def test_batched_step_equals_sequential(tiny_model, frames_A, frames_B):
    """Three streams at different steps, different memory lengths, some with previews off, advanced together."""
    cfg = MemoryConfig(long_mem_size=400, work_mem_size=2)  # small budget so that the long stream prunes
    engine = Engine(tiny_model, cfg)
    streams = {"a": (frames_A, True), "b": (frames_B, False), "c": (frames_A[::-1] + frames_B, True)}
    start = {"a": 0, "b": 3, "c": 5}  # stream b joins at tick 3, c at tick 5

    seq = {}
    for name, (frames, preview) in streams.items():
        seq[name] = run_stream(engine, frames, preview)

    states = {name: engine.new_stream(preview) for name, (_, preview) in streams.items()}
    got = {name: [] for name in streams}
    for tick in range(max(start[n] + len(f) for n, (f, _) in streams.items())):
        batch, names = [], []
        for name, (frames, _) in streams.items():
            i = tick - start[name]
            if 0 <= i < len(frames):
                batch.append((states[name], frames[i]))
                names.append(name)
        for name, r in zip(names, engine.step(batch)):
            got[name].append(r)
    assert any(len(b) > 1 for b in [got])  # sanity: the loop ran
    for name in streams:
        ref_results, ref_last, _ = seq[name]
        assert len(got[name]) == len(ref_results)
        for r, ref in zip(got[name][1:], ref_results[1:]):
            assert r.memory.skipped == ref.memory.skipped and r.memory.pruned == ref.memory.pruned
            assert r.memory.mem_tokens == ref.memory.mem_tokens
            _close(r.final.pts3d, ref.final.pts3d, f"{name} final {r.final.index}")
            _close(r.final.conf, ref.final.conf, f"{name} conf {r.final.index}")
            if ref.preview is not None:
                _close(r.preview.pts3d, ref.preview.pts3d, f"{name} preview {r.preview.index}")
        _close(engine.finish(states[name]).pts3d, ref_last.pts3d, f"{name} last")
    assert any(r.memory and r.memory.pruned for r in got["c"]), "the long stream should have pruned"


def test_skip_is_decided_per_stream(tiny_engine, frames_A):
    """An exact repeat in one stream must not make the other stream skip (the official max spans the batch)."""
    a, b = tiny_engine.new_stream(), tiny_engine.new_stream()
    seq_a = [frames_A[0], frames_A[1], frames_A[1], frames_A[2]]  # repeat: step 2 writes frame 2 = frame 1
    seq_b = [frames_A[4], frames_A[5], frames_A[7], frames_A[2]]
    out_a, out_b = [], []
    for fa, fb in zip(seq_a, seq_b):
        ra, rb = tiny_engine.step([(a, fa), (b, fb)])
        out_a.append(ra)
        out_b.append(rb)
    ref_b, _, _ = run_stream(tiny_engine, seq_b)
    assert [r.memory.skipped for r in out_b[1:]] == [r.memory.skipped for r in ref_b[1:]]
    assert any(r.memory.skipped for r in out_a[1:]), "the repeated frame should be skipped in stream a"
    assert not any(r.memory.skipped for r in out_b[1:])


def test_batched_step_rejects_two_frames_of_one_stream(tiny_engine, frames_A):
    s = tiny_engine.new_stream()
    with pytest.raises(StreamError):
        tiny_engine.step([(s, frames_A[0]), (s, frames_A[1])])


@pytest.mark.parametrize("preview", [True, False])
def test_snapshot_restore_continues_identically(tiny_model, frames_B, preview):
    cfg = MemoryConfig(long_mem_size=400, work_mem_size=2)  # prunes, so the restored token order matters
    engine = Engine(tiny_model, cfg)
    full, last_full, _ = run_stream(engine, frames_B, preview)

    s = Session(engine, preview)
    for f in frames_B[:7]:
        s.push(f)
    blob = engine.snapshot(s.state)
    assert isinstance(blob, bytes)
    restored = Session.__new__(Session)
    restored.engine, restored.state = Engine(tiny_model, cfg), None
    restored.state = restored.engine.restore(blob)
    cont = [restored.push(f) for f in frames_B[7:]]
    last = restored.finish()
    for r, ref in zip(cont, full[7:]):
        np.testing.assert_array_equal(r.final.pts3d, ref.final.pts3d)
        assert (r.memory.skipped, r.memory.pruned, r.memory.mem_tokens) == (
            ref.memory.skipped,
            ref.memory.pruned,
            ref.memory.mem_tokens,
        )
    np.testing.assert_array_equal(last.pts3d, last_full.pts3d)
    assert any(r.memory and r.memory.pruned for r in full), "scenario should prune"


def test_restore_rejects_garbage_and_mismatch(tiny_engine):
    with pytest.raises(ValueError, match="snapshot"):
        tiny_engine.restore(b"not a snapshot at all")
    s = tiny_engine.new_stream()
    blob = tiny_engine.snapshot(s)
    other = Engine(tiny_engine.model, MemoryConfig(long_mem_size=1234))
    with pytest.raises(ValueError, match="memory configuration"):
        other.restore(blob)


def test_frame_from_raw_array_matches_file(frames_A):
    f = frames_A[0]
    x = to_model_input(f.colors)
    assert isinstance(f, PreparedFrame) and torch.equal(x, f.img)


def test_memory_budget_must_hold_the_working_memory(tiny_model):
    with pytest.raises(ValueError, match="long_mem_size"):
        Engine(tiny_model, MemoryConfig(long_mem_size=500)).new_stream()

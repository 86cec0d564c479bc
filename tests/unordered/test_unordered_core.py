"""Unordered mode (offline reconstruction) on the tiny model: the pair graph, the scores, the choice rules, and
the equivalence "choose the order, then stream" against the streaming engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spann3r.core.engine import Session
from spann3r.core.preprocess import load_frame
from spann3r.core.unordered import (
    UnorderedError,
    beats,
    complete_pair_list,
    encode_all,
    first_max,
    next_best,
    pair_count,
    pair_score,
    reconstruct_unordered,
    score_pairs,
    step_decode_count,
)

REL = 2e-5  # batch-layout noise of the tiny model (float32, different GEMM shapes)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def progress_log():
    return []


@pytest.fixture(scope="module")
def result_D(tiny_engine, frames_D, progress_log):
    return reconstruct_unordered(
        tiny_engine,
        frames_D,
        pair_batch=4,
        candidate_batch=3,
        keep_pairs=[(1, 0), (0, 1)],
        progress=lambda *a: progress_log.append(a),
    )


# ----------------------------------------------------------------------------- pure rules
def test_complete_pair_list_is_the_official_symmetrised_graph(golden_dir):
    assert complete_pair_list(4) == [
        (1, 0),
        (2, 0),
        (2, 1),
        (3, 0),
        (3, 1),
        (3, 2),
        (0, 1),
        (0, 2),
        (1, 2),
        (0, 3),
        (1, 3),
        (2, 3),
    ]
    golden = np.load(golden_dir / "golden_D.npz")["pair_list"]
    assert complete_pair_list(6) == [tuple(p) for p in golden.tolist()]
    assert len(set(complete_pair_list(9))) == pair_count(9) == 72


def test_pair_score_is_sum_of_mean_certainties():
    conf1 = torch.full((2, 4, 4), 2.0)  # (c-1)/c = 0.5
    conf2 = torch.ones(2, 4, 4)  # 0
    conf2[1, :2] = 5.0  # half the pixels at 0.8 → mean 0.4
    assert pair_score(conf1, conf2).tolist() == pytest.approx([0.5, 0.9])


def test_first_max_reads_row_major_and_keeps_the_first_tie():
    m = np.zeros((4, 4), np.float32)
    m[2, 1] = m[1, 3] = m[3, 0] = 1.5
    assert first_max(m) == (1, 3)
    m[1, 3] = 1.4
    assert first_max(m) == (2, 1)


def test_candidate_rule_strictly_greater_from_zero():
    assert next_best([0.3, 0.7, 0.7, 0.2]) == 1  # tie → lowest index
    assert next_best([0.0, float("nan"), 0.0]) is None  # nothing beats 0
    assert next_best([float("nan"), 0.1]) == 1
    assert beats(0.5, None) and not beats(0.5, 0.5) and beats(0.50001, 0.5)


def test_step_decode_count():
    assert [step_decode_count(n) for n in (2, 3, 6)] == [1, 2, 11]


# ----------------------------------------------------------------------------- pair inference
def test_pair_scores_do_not_depend_on_batching(tiny_model, frames_D):
    imgs = torch.stack([f.img for _, f in frames_D[:4]])
    with torch.inference_mode():
        enc, pos = encode_all(tiny_model, imgs, batch=3)
        enc1, _ = encode_all(tiny_model, imgs, batch=1)
        assert rel_err(enc, enc1) < REL
        pairs = complete_pair_list(4)
        m4, kept4 = score_pairs(tiny_model, enc, pos, pairs, batch=4, keep=[(2, 1)])
        m1, kept1 = score_pairs(tiny_model, enc, pos, pairs, batch=1, keep=[(2, 1)])
        # independent: the plain DUSt3R pair path by hand
        dec1, dec2 = tiny_model.decode(enc[2:3], pos[2:3], enc[1:2], pos[1:2])
        r1, r2 = tiny_model.head(1, tiny_model.hooked(dec1)), tiny_model.head(2, tiny_model.hooked(dec2))
    assert np.all(np.diag(m4) == 0) and np.all(m4[~np.eye(4, dtype=bool)] > 0)
    assert np.abs(m4 - m1).max() < 1e-6
    expected = ((r1.conf - 1) / r1.conf).mean() + ((r2.conf - 1) / r2.conf).mean()
    assert m4[2, 1] == pytest.approx(float(expected), abs=1e-6)
    assert rel_err(kept4[(2, 1)].pts3d_in_other_view, r2.pts3d[0].numpy()) < REL
    assert rel_err(kept1[(2, 1)].conf1, r1.conf[0].numpy()) < REL
    assert not np.allclose(m4, m4.T)  # [i, j] and [j, i] are different decodes


# ----------------------------------------------------------------------------- the whole mode
def test_order_follows_the_scores(result_D):
    r = result_D
    n = 6
    assert sorted(r.order.tolist()) == list(range(n))
    assert tuple(r.order[:2]) == r.initial_pair == first_max(r.pair_conf)
    for k in range(1, n - 1):
        row = r.nbv_candidate_conf[k - 1]
        placed = r.order[: k + 1]
        assert np.isnan(row[placed]).all() and np.isfinite(np.delete(row, placed)).all()
        candidates = [i for i in range(n) if i not in placed]
        assert r.order[k + 1] == candidates[next_best(row[candidates].tolist())]
        assert r.nbv_best_conf[k - 1] == row[r.order[k + 1]]
    assert r.reconstruction.names == [f"frame_{i:03d}.png" for i in r.order]
    assert r.input_names == [f"frame_{i:03d}.png" for i in range(n)]


def test_equals_streaming_on_the_chosen_order(result_D, tiny_engine, frames_D):
    """Offline mode = choose the order, then stream: finals, previews and memory decisions of the streaming
    engine fed the images in ``order``."""
    session = Session(tiny_engine, preview=True)
    finals, previews, traces = [], [], []
    for i in result_D.order:
        step = session.push(frames_D[i][1])
        if step.final is not None:
            finals.append(step.final)
            previews.append(step.preview)
            traces.append(step.memory)
    finals.append(session.finish())
    rec = result_D.reconstruction
    assert rel_err(rec.pts3d, np.stack([f.pts3d for f in finals])) < REL
    assert rel_err(rec.conf, np.stack([f.conf for f in finals])) < REL
    assert rel_err(np.stack([p.pts3d for p in result_D.previews]), np.stack([p.pts3d for p in previews])) < REL
    assert rel_err(np.stack([p.conf for p in result_D.previews]), np.stack([p.conf for p in previews])) < REL
    assert (rec.colors == np.stack([f.colors for f in finals])).all()
    for ours, theirs in zip(rec.traces, traces):
        assert (ours.skipped, ours.pruned, ours.mem_tokens, ours.wm, ours.lm) == (
            theirs.skipped,
            theirs.pruned,
            theirs.mem_tokens,
            theirs.wm,
            theirs.lm,
        )
        if theirs.similarity is None:
            assert ours.similarity is None
        else:
            assert ours.similarity == pytest.approx(theirs.similarity, abs=1e-6)


def test_candidate_scores_equal_a_streaming_step_per_candidate(result_D, tiny_engine, frames_D):
    """Every next-best-view score is the score of the streaming step that would take that candidate next."""
    order = result_D.order.tolist()
    for k in (1, 3):
        session = Session(tiny_engine, preview=True)
        for i in order[: k + 1]:
            session.push(frames_D[i][1])
        snapshot = tiny_engine.snapshot(session.state)
        for cand in range(6):
            if cand in order[: k + 1]:
                continue
            state = tiny_engine.restore(snapshot)
            step = tiny_engine.step([(state, frames_D[cand][1])])[0]
            score = pair_score(torch.from_numpy(step.final.conf)[None], torch.from_numpy(step.preview.conf)[None])
            assert result_D.nbv_candidate_conf[k - 1, cand] == pytest.approx(float(score), abs=1e-5)


def test_kept_pair_outputs_and_progress(result_D, progress_log):
    assert set(result_D.pair_outputs) == {(1, 0), (0, 1)}
    p = result_D.pair_outputs[(1, 0)]
    assert p.pts3d.shape == (224, 224, 3) and p.conf2.shape == (224, 224)
    score = pair_score(torch.from_numpy(p.conf1)[None], torch.from_numpy(p.conf2)[None])
    assert result_D.pair_conf[1, 0] == pytest.approx(float(score), abs=1e-6)
    stages = {}
    for stage, done, total in progress_log:
        assert done <= total and done >= stages.get(stage, (0, 0))[0]
        stages[stage] = (done, total)
    assert stages == {"encode": (6, 6), "pairs": (30, 30), "views": (11, 11)}


def test_npz_layout(result_D, tmp_path):
    path = tmp_path / "u.npz"
    result_D.save_npz(path)
    data = np.load(path)
    for key in ("pts3d", "conf", "colors", "poses", "pose_valid", "focal", "skipped", "mem_tokens", "frame_names"):
        assert key in data
    assert data["order"].tolist() == result_D.order.tolist()
    assert data["pair_conf"].shape == (6, 6) and data["nbv_candidate_conf"].shape == (4, 6)
    assert [str(n) for n in data["frame_names"]] == [str(data["input_names"][i]) for i in data["order"]]
    assert data["skipped"][-1]  # the last frame is never written to memory


def test_two_images_and_too_few(tiny_engine, frames_D):
    r = reconstruct_unordered(tiny_engine, frames_D[:2], with_poses=False)
    assert tuple(r.order) == first_max(r.pair_conf)
    assert r.nbv_best_conf.shape == (0,) and r.reconstruction.pts3d.shape == (2, 224, 224, 3)
    with pytest.raises(UnorderedError, match="at least two"):
        reconstruct_unordered(tiny_engine, frames_D[:1])


def test_accepts_raw_rgb_like_the_ordered_mode(tiny_model, golden_dir):
    from spann3r.core.preprocess import read_image

    files = sorted((golden_dir / "frames_D").glob("*.png"))[:3]
    a = reconstruct_unordered(tiny_model, [(f.name, read_image(f)) for f in files], with_poses=False)
    b = reconstruct_unordered(tiny_model, [(f.name, load_frame(f)) for f in files], with_poses=False)
    assert a.order.tolist() == b.order.tolist()
    assert np.array_equal(a.reconstruction.pts3d, b.reconstruction.pts3d)

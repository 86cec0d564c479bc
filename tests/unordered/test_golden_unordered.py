"""Set D of the official reference (offline mode on an unordered collection) through ``reconstruct_unordered``
with the full-size model: the README's acceptance for unordered collections.

One run per test session (module fixture on the shared ``official_engine``), ~2-4 min on 2 CPU cores."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from golden import check_close, check_decisions

from spann3r.core.unordered import complete_pair_list, reconstruct_unordered

pytestmark = pytest.mark.golden

SCORE_TOL = 1e-5  # absolute, pair matrix and candidate scores (README "Tolerances (unordered)")
STORED_PAIRS = [(2, 1), (1, 2)]


@pytest.fixture(scope="module")
def golden_D(golden_dir):
    return dict(np.load(golden_dir / "golden_D.npz"))


@pytest.fixture(scope="module")
def run_D(official_engine, frames_D):
    return reconstruct_unordered(official_engine, frames_D, keep_pairs=STORED_PAIRS, with_poses=False)


def test_inputs_and_graph(frames_D, golden_D):
    assert [name for name, _ in frames_D] == golden_D["frame_files"].tolist()
    for (_, frame), digest in zip(frames_D, golden_D["inputs_img_sha256"]):
        assert hashlib.sha256(np.ascontiguousarray(frame.img.numpy(), "<f4").tobytes()).hexdigest() == digest
    assert [tuple(p) for p in golden_D["pair_list"].tolist()] == complete_pair_list(len(frames_D))
    assert [tuple(p) for p in golden_D["pair_outputs_stored"].tolist()] == STORED_PAIRS


def test_same_order_and_initial_pair(run_D, golden_D):
    assert run_D.initial_pair == tuple(golden_D["initial_pair"].tolist())
    assert run_D.order.tolist() == golden_D["order"].tolist()


def test_pair_matrix_and_next_best_view_scores(run_D, golden_D):
    assert np.abs(run_D.pair_conf - golden_D["pair_conf_matrix"]).max() <= SCORE_TOL
    ours, golden = run_D.nbv_candidate_conf, golden_D["nbv_candidate_conf"]
    assert np.array_equal(np.isnan(ours), np.isnan(golden))
    assert np.nanmax(np.abs(ours - golden)) <= SCORE_TOL
    assert np.abs(run_D.nbv_best_conf - golden_D["nbv_best_conf"]).max() <= SCORE_TOL


def test_finals_and_previews(run_D, golden_D):
    rec = run_D.reconstruction
    check_close("final_pts3d", rec.pts3d, golden_D["final_pts3d"])
    check_close("final_conf", rec.conf, golden_D["final_conf"])
    check_close("step_res2_pts3d", np.stack([p.pts3d for p in run_D.previews]), golden_D["step_res2_pts3d"])
    check_close("step_res2_conf", np.stack([p.conf for p in run_D.previews]), golden_D["step_res2_conf"])


def test_memory_trace(run_D, golden_D):
    check_decisions(run_D.reconstruction.traces, golden_D)
    traces = run_D.reconstruction.traces
    zeroed = np.array([np.nan if t.attn_zeroed_frac is None else t.attn_zeroed_frac for t in traces])
    assert np.array_equal(np.isnan(zeroed), np.isnan(golden_D["trace_attn_zeroed_frac"]))
    assert np.nanmax(np.abs(zeroed - golden_D["trace_attn_zeroed_frac"])) <= 1e-3


@pytest.mark.parametrize("pair", STORED_PAIRS)
def test_plain_dust3r_pair_outputs(run_D, golden_D, pair):
    i, j = pair
    out = run_D.pair_outputs[pair]
    check_close(f"pair_{i}_{j}_pts3d", out.pts3d, golden_D[f"pair_{i}_{j}_pts3d"])
    check_close(
        f"pair_{i}_{j}_pts3d_in_other_view", out.pts3d_in_other_view, golden_D[f"pair_{i}_{j}_pts3d_in_other_view"]
    )
    check_close(f"pair_{i}_{j}_conf", np.stack([out.conf1, out.conf2]), golden_D[f"pair_{i}_{j}_conf"])

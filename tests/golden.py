"""The reference README's acceptance checks, shared by every golden test."""

from __future__ import annotations

import numpy as np

SCALE_TOL = 1e-3  # max |Δ| ≤ 1e-3 · max|golden|
BULK_TOL = 1e-5  # p99 |Δ| ≤ 1e-5 · max|golden|
ELEM_REL, ELEM_ABS = 2e-3, 2e-4  # |Δ| ≤ 2e-3·|golden| + 2e-4·max|golden|


def check_close(name: str, ours: np.ndarray, golden: np.ndarray, bulk: bool = True) -> dict:
    """Checks 1-3 (scale, bulk, element; ``bulk=False`` leaves out check 2); raises AssertionError with the numbers
    on failure."""
    ours, golden = np.asarray(ours, np.float64), np.asarray(golden, np.float64)
    assert ours.shape == golden.shape, f"{name}: shape {ours.shape} != golden {golden.shape}"
    assert np.isfinite(ours).all(), f"{name}: non-finite values"
    scale = np.abs(golden).max()
    d = np.abs(ours - golden)
    stats = {
        "max_of_scale": d.max() / scale,
        "p99_of_scale": np.percentile(d, 99) / scale,
        "elements_over": int((d > ELEM_REL * np.abs(golden) + ELEM_ABS * scale).sum()),
    }
    assert stats["max_of_scale"] <= SCALE_TOL, f"{name}: scale check failed {stats}"
    assert not bulk or stats["p99_of_scale"] <= BULK_TOL, f"{name}: bulk check failed {stats}"
    assert stats["elements_over"] == 0, f"{name}: element check failed {stats}"
    return stats


def check_decisions(traces, golden: dict, sim_tol: float | None = 1e-4) -> None:
    """Check 4: identical skip and prune steps and memory counters; similarities close (``sim_tol=None``: the
    decisions alone)."""
    got = {
        "trace_skipped": [t.skipped for t in traces],
        "trace_pruned": [t.pruned for t in traces],
        "trace_mem_tokens": [t.mem_tokens for t in traces],
        "trace_wm": [t.wm for t in traces],
        "trace_lm": [t.lm for t in traces],
    }
    for key, values in got.items():
        assert values == golden[key].tolist(), f"{key}: {values} != golden {golden[key].tolist()}"
    sims = np.array([np.nan if t.similarity is None else t.similarity for t in traces])
    assert np.array_equal(np.isnan(sims), np.isnan(golden["trace_sim"]))
    if sim_tol is not None:
        err = np.nanmax(np.abs(sims - golden["trace_sim"]))
        assert err <= sim_tol, f"similarities: max error {err:.2e} > {sim_tol}"

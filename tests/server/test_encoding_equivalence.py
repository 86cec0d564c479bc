"""The service's fast encoders and export items give exactly what the straightforward numpy code gives: boolean
masks and ``astype`` (the encoder before it was vectorised), and ``core.export.fuse``."""

from __future__ import annotations

import numpy as np
import pytest

from spann3r.core.camera import CameraPose
from spann3r.core.engine import FrameOutput
from spann3r.core.export import fuse
from spann3r.server import protocol as P
from spann3r.server.encoding import INT16_MAX, confident, encode_map
from spann3r.server.results import export_item


def reference_compact(pts3d, conf, colors, stride, conf_thresh, scale):
    pts3d, conf, colors = pts3d[::stride, ::stride], conf[::stride, ::stride], colors[::stride, ::stride]
    keep = confident(conf, conf_thresh) & np.isfinite(pts3d).all(-1)
    q = np.rint(pts3d[keep] / scale)
    inside = (np.abs(q) <= INT16_MAX).all(-1)
    return (
        int((~inside).sum()),
        q[inside].astype(np.int16),
        colors[keep][inside],
        conf[keep][inside].astype(np.float16),
    )


def maps(seed: int, size: int = 224):
    """A network-like map with the awkward cases: non-finite points and confidences, confidences at and below 1,
    a few points far beyond the int16 range, confidences beyond float16's range."""
    rng = np.random.default_rng(seed)
    pts = rng.normal(0, 2, (size, size, 3)).astype(np.float32)
    conf = (1 + rng.exponential(3, (size, size))).astype(np.float32)
    flat_pts, flat_conf = pts.reshape(-1, 3), conf.reshape(-1)
    n = flat_conf.size
    for value in (np.nan, np.inf, -np.inf):
        flat_pts[rng.integers(0, n, 50), rng.integers(0, 3, 50)] = value
        flat_conf[rng.integers(0, n, 20)] = value
    flat_conf[rng.integers(0, n, 200)] = 1.0
    flat_conf[rng.integers(0, n, 20)] = rng.uniform(0, 1, 20)
    flat_conf[rng.integers(0, n, 20)] = 1e6  # float16 inf
    flat_pts[rng.integers(0, n, 30)] *= 1e4  # beyond the int16 range at the scales below
    colors = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return pts, conf, colors


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_compact_encoding_equals_the_mask_based_encoder(stride, seed):
    pts, conf, colors = maps(seed)
    clipped_seen = 0
    for conf_thresh, scale in ((1e-3, 5e-4), (0.5, 2e-3), (0.0, 1e-2)):
        settings = P.SessionSettings(encoding="compact", stride=stride, conf_thresh=conf_thresh)
        m = encode_map(pts, conf, colors, settings, scale)
        clipped, positions, rgb, c = reference_compact(pts, conf, colors, stride, conf_thresh, scale)
        assert m.clipped == clipped
        clipped_seen += clipped
        assert m.positions.data == positions.tobytes() and m.positions.shape == list(positions.shape)
        assert m.colors.data == rgb.tobytes() and m.colors.shape == list(rgb.shape)
        assert m.conf.data == c.tobytes() and m.conf.shape == list(c.shape)
    assert clipped_seen  # the case of points beyond the int16 range is exercised


def test_compact_encoding_with_nothing_kept():
    pts, conf, colors = maps(2, size=8)
    m = encode_map(pts, np.ones_like(conf), colors, P.SessionSettings(), 1e-3)
    assert m.clipped == 0 and m.positions.shape == [0, 3] and m.colors.shape == [0, 3] and m.conf.shape == [0]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_full_encoding_equals_astype(dtype):
    pts, conf, colors = maps(3)
    m = encode_map(pts, conf, colors, P.SessionSettings(encoding="full", dtype=dtype), 1.0)
    with np.errstate(over="ignore"):
        want_pts, want_conf = pts.astype(dtype), conf.astype(dtype)
    # NaN payloads aside (none differ for the quiet NaNs arithmetic makes), the same bits
    assert m.pts3d.data == want_pts.tobytes() and m.conf.data == want_conf.tobytes()
    assert m.colors.data == colors.tobytes()


@pytest.mark.parametrize("conf_thresh", [1e-3, 0.3])
def test_export_item_is_fuse(conf_thresh):
    pts, conf, colors = maps(4)
    item = export_item(FrameOutput(7, "final", pts, conf, colors), CameraPose(np.eye(4), True), conf_thresh)
    xyz, rgb = fuse(pts[None], conf[None], colors[None], conf_thresh)
    assert item.xyz.dtype == xyz.dtype and item.rgb.dtype == rgb.dtype
    np.testing.assert_array_equal(item.xyz, xyz)
    np.testing.assert_array_equal(item.rgb, rgb)

"""The service's encoders (torch, on the maps' device) and export items give exactly what the straightforward
numpy code gives: boolean masks, ``np.rint`` and ``astype`` (the encoder as it was on the host), and
``core.export.fuse``. Byte for byte, on maps with every awkward case."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spann3r.core.camera import CameraPose
from spann3r.core.engine import FrameOutput
from spann3r.core.export import fuse
from spann3r.server import protocol as P
from spann3r.server.encoding import INT16_MAX, confident, encode_map, encode_map_on_device
from spann3r.server.results import export_item

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
# the encoders the server runs: numpy for maps on the CPU (encode_map's choice there), torch on the maps' device
# (encode_map's choice on an accelerator; forced on the CPU here so that it is checked on every machine)
PATHS = [("cpu", encode_map), ("cpu", encode_map_on_device), *[("cuda", encode_map)] * torch.cuda.is_available()]
PATH_IDS = ["cpu-numpy", "cpu-torch", *["cuda-torch"] * torch.cuda.is_available()]
STRIDES = [1, 2, 3, 4]
# 0.2: float32(0.2) > 0.2, and one confidence's float32 ratio is float32(0.2) exactly: kept only if the comparison
# is in float64, not as numpy makes it (float32); 0 and 0.5 are met exactly too
THRESHOLDS = [0.0, 1e-3, 0.2, 0.5]


def reference_compact(pts3d, conf, colors, stride, conf_thresh, scale) -> P.CompactMap:
    """The compact encoding in plain numpy: the reference the device encoder must equal."""
    pts3d, conf, colors = pts3d[::stride, ::stride], conf[::stride, ::stride], colors[::stride, ::stride]
    keep = confident(conf, conf_thresh) & np.isfinite(pts3d).all(-1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = np.rint(pts3d[keep] / scale)
        inside = (np.abs(q) <= INT16_MAX).all(-1)
        conf16 = conf[keep][inside].astype(np.float16)  # confidences beyond float16's range: inf
    return P.CompactMap.model_construct(
        encoding="compact",
        scale=float(scale),
        stride=stride,
        clipped=int((~inside).sum()),
        positions=P.Array.of(q[inside].astype(np.int16)),
        colors=P.Array.of(colors[keep][inside]),
        conf=P.Array.of(conf16),
    )


def reference_full(pts3d, conf, colors, dtype) -> P.FullMap:
    with np.errstate(over="ignore"):
        return P.FullMap.model_construct(
            encoding="full",
            pts3d=P.Array.of(pts3d.astype(dtype)),
            conf=P.Array.of(conf.astype(dtype)),
            colors=P.Array.of(colors),
        )


def as_bytes(m: P.FullMap | P.CompactMap) -> bytes:
    """The map as it goes out (the message's msgpack of it)."""
    return P.pack(m)


def nan_with_bits(bits: int) -> np.float32:
    return np.array([bits], dtype=np.uint32).view(np.float32)[0]


# quiet NaNs of either sign (x86 arithmetic makes the negative one), CUDA's canonical NaN, payload and signalling NaNs
NANS = [np.float32(np.nan), -np.float32(np.nan), *(nan_with_bits(b) for b in (0x7FFFFFFF, 0x7FC12345, 0x7F800001))]


def at_threshold(conf_thresh: float, n: int = 3000) -> np.ndarray:
    """The 64 confidences within ``n`` float32 steps of 1 / (1 − conf_thresh) whose float32 (c − 1) / c lies
    nearest float32(conf_thresh): the filter's edge, on it where float32 allows."""
    c = np.array([1 / (1 - conf_thresh)], dtype=np.float32).view(np.int32)
    cs = (c + np.arange(-n, n + 1, dtype=np.int32)).view(np.float32)
    ratio = (cs - 1) / cs
    return cs[np.argsort(np.abs(ratio - np.float32(conf_thresh)), kind="stable")[:64]]


def maps(seed: int, shape: tuple[int, int] = (224, 224), scale: float = 1e-3):
    """A network-like map with the awkward cases: non-finite points (every kind of NaN) and confidences,
    confidences at and below 1, negative, at each tested threshold's edge, at float16 rounding ties and beyond
    float16's range, points far beyond the
    int16 range at ``scale`` and points exactly half a step between two int16 values (ties round to even)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    pts = rng.normal(0, 2, (h, w, 3)).astype(np.float32)
    conf = (1 + rng.exponential(3, (h, w))).astype(np.float32)
    flat_pts, flat_conf = pts.reshape(-1, 3), conf.reshape(-1)
    n = flat_conf.size

    def pick(k: int) -> np.ndarray:
        return rng.integers(0, n, k)

    for value in (*NANS, np.inf, -np.inf):
        flat_pts[pick(20), rng.integers(0, 3, 20)] = value
        flat_conf[pick(8)] = value
    flat_conf[pick(200)] = 1.0
    flat_conf[pick(20)] = rng.uniform(0, 1, 20)
    flat_conf[pick(10)] = 0.0
    flat_conf[pick(20)] = 1e6  # float16 inf
    # negative confidences (a broken output) are kept at thresholds ≥ 0 ((c − 1) / c > 1): float16 normals and
    # subnormals; and float16 rounding ties (2049 lies halfway between the halves 2048 and 2050)
    flat_conf[pick(20)] = -rng.exponential(3, 20)
    flat_conf[pick(6)] = np.array([-1e-6, -3e-8, -6.1e-5, -(2.0**-25), -3 * 2.0**-25, -1e-30], np.float32)
    flat_conf[pick(6)] = np.array([2049, 2051, 65504, 65519.996, 65520, 4097], np.float32)
    for t in THRESHOLDS:
        edge = at_threshold(t)
        flat_conf[pick(len(edge))] = edge
    with np.errstate(invalid="ignore"):
        flat_pts[pick(400)] *= 1e4  # beyond the int16 range at the scales below
    flat_pts[pick(50)] = 1e38
    ties = (rng.integers(-2000, 2000, (200, 3)) + 0.5).astype(np.float32) * np.float32(scale)
    flat_pts[pick(200)] = ties  # exact halves when scale is a power of two
    edges = np.array([INT16_MAX - 0.5, INT16_MAX + 0.5, -INT16_MAX - 0.5, INT16_MAX, INT16_MAX + 1], np.float32)
    flat_pts[pick(len(edges) * 3)] = np.repeat(edges, 3).reshape(-1, 1) * np.float32(scale)  # the range's edge
    colors = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return pts, conf, colors


def on_device(a: np.ndarray, device: str, batch: int = 3, at: int = 1) -> torch.Tensor:
    """``a`` on ``device`` as the engine leaves a map: one item of a batch output (a view)."""
    big = torch.from_numpy(np.stack([a] * batch)).to(device)
    return big[at]


CASES = [  # seed, shape, scale (powers of two: exact halves)
    (0, (224, 224), 2.0**-10),
    (1, (224, 224), 5e-4),
    (2, (224, 224), 2e-3),
    (3, (97, 131), 2.0**-8),
    (4, (224, 224), 1e-2),
    (5, (33, 16), 2.0**-12),
]


@pytest.mark.parametrize(("device", "encode"), PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("stride", STRIDES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"seed{c[0]}")
def test_compact_encoding_is_byte_identical_to_the_numpy_encoder(case, stride, device, encode):
    seed, shape, scale = case
    pts, conf, colors = maps(seed, shape, scale)
    pts_d, conf_d = on_device(pts, device), on_device(conf, device)
    clipped = edge_kept = 0
    for conf_thresh in THRESHOLDS:
        settings = P.SessionSettings(encoding="compact", stride=stride, conf_thresh=conf_thresh)
        for s in (scale, scale * 3.7):
            ours = encode(pts_d, conf_d, colors, settings, s)
            ref = reference_compact(pts, conf, colors, stride, conf_thresh, s)
            assert ours.clipped == ref.clipped and ours.positions.shape == ref.positions.shape
            assert ours.positions.data == ref.positions.data
            assert ours.colors.data == ref.colors.data
            assert ours.conf.data == ref.conf.data
            assert as_bytes(ours) == as_bytes(ref)
            clipped += ref.clipped
        sub = conf[::stride, ::stride]
        with np.errstate(divide="ignore", invalid="ignore"):
            edge_kept += int(((sub - 1) / sub == np.float32(conf_thresh)).sum())
    assert clipped  # points beyond the int16 range are exercised
    if shape[0] * shape[1] >= 224 * 224 and stride == 1:
        assert edge_kept  # confidences exactly at a threshold are exercised


def test_the_cases_are_exercised():
    pts, conf, _ = maps(0, scale=2.0**-10)
    with np.errstate(all="ignore"):
        q = pts.reshape(-1, 3) / np.float32(2.0**-10)
        assert (np.abs(q - np.trunc(q)) == 0.5).sum() > 100  # ties
        ratio = (conf - 1) / conf
    for t in (0.0, 0.2, 0.5):  # confidences exactly at these thresholds (in float32)
        assert (ratio == np.float32(t)).any()
    for nan in NANS:
        assert (pts.view(np.uint32) == np.float32(nan).view(np.uint32)).any()


def test_the_compiled_half_cast_is_numpys():
    """The compact pass casts confidences to float16 itself (``map_kernels.half_bits``): numpy's bits for every
    float32, checked on random bit patterns (every exponent, sign, NaN payload) and on every rounding tie and its
    neighbours, normal and subnormal."""
    from numba import njit

    from spann3r.server.map_kernels import half_bits

    @njit
    def cast(bits):
        out = np.empty(len(bits), np.uint16)
        for i in range(len(bits)):
            out[i] = half_bits(bits[i])
        return out

    rng = np.random.default_rng(0)
    patterns = [rng.integers(0, 2**32, 1_000_000, dtype=np.uint64).astype(np.uint32)]
    exponents = np.arange(256, dtype=np.uint32) << 23
    low = np.array([0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x3000, 0x7FE000, 0x7FEFFF, 0x7FF000, 0x7FFFFF])
    patterns.append((exponents[:, None] | low.astype(np.uint32)[None, :]).ravel())
    for exp in range(101, 113):  # float16 subnormals: ties at every shift, below and above them
        shift = 126 - exp
        quotients = np.arange(0, 1 << max(0, min(24 - shift, 6)))[:, None]
        sig = (quotients << shift) | ((1 << (shift - 1)) + np.array([-1, 0, 1]))
        patterns.append(((exp << 23) | (sig.ravel() & 0x7FFFFF)).astype(np.uint32))
    bits = np.concatenate(patterns)
    bits = np.concatenate([bits, bits | np.uint32(0x80000000)])
    with np.errstate(over="ignore", invalid="ignore"):
        expected = bits.view(np.float32).astype(np.float16).view(np.uint16)
    got = cast(bits)
    wrong = np.nonzero(got != expected)[0]
    assert len(wrong) == 0, [(hex(b), hex(e), hex(g)) for b, e, g in zip(bits[wrong], expected[wrong], got[wrong])][:5]


@pytest.mark.parametrize(("device", "encode"), PATHS, ids=PATH_IDS)
def test_compact_encoding_with_nothing_kept(device, encode):
    pts, conf, colors = maps(6, shape=(8, 8))
    settings = P.SessionSettings()
    m = encode(on_device(pts, device), torch.ones(8, 8, device=device), colors, settings, 1e-3)
    assert m.clipped == 0 and m.positions.shape == [0, 3] and m.colors.shape == [0, 3] and m.conf.shape == [0]
    ref = reference_compact(pts, np.ones_like(conf), colors, settings.stride, settings.conf_thresh, 1e-3)
    assert as_bytes(m) == as_bytes(ref)


@pytest.mark.parametrize(("device", "encode"), PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("seed", [7, 8, 9])
def test_full_encoding_is_byte_identical_to_astype(seed, dtype, device, encode):
    pts, conf, colors = maps(seed)
    settings = P.SessionSettings(encoding="full", dtype=dtype)
    m = encode(on_device(pts, device), on_device(conf, device), colors, settings, 1.0)
    ref = reference_full(pts, conf, colors, dtype)
    assert m.pts3d.data == ref.pts3d.data and m.conf.data == ref.conf.data  # NaN payloads included
    assert as_bytes(m) == as_bytes(ref)


def test_host_arrays_encode_as_device_tensors():
    pts, conf, colors = maps(10)
    for settings in (P.SessionSettings(), P.SessionSettings(encoding="full", dtype="float16")):
        a = encode_map(pts, conf, colors, settings, 1e-3)
        b = encode_map(torch.from_numpy(pts), torch.from_numpy(conf), colors, settings, 1e-3)
        assert as_bytes(a) == as_bytes(b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("conf_thresh", THRESHOLDS)
@pytest.mark.parametrize("every", [1, 4])
def test_export_item_is_fuse(conf_thresh, device, every):
    """The export item of a final is ``fuse`` of its map, thinned to every n-th point as the export buffer asks."""
    pts, conf, colors = maps(11)
    out = FrameOutput(7, "final", on_device(pts, device), on_device(conf, device), colors)
    item = export_item(out, CameraPose(np.eye(4), True), conf_thresh, every)
    with np.errstate(all="ignore"):
        xyz, rgb = fuse(pts[None], conf[None], colors[None], conf_thresh)
    xyz, rgb = xyz[::every], rgb[::every]
    assert item.every == every and len(xyz) > 10
    assert item.xyz.dtype == xyz.dtype and item.rgb.dtype == rgb.dtype
    assert item.xyz.shape == xyz.shape and item.xyz.tobytes() == xyz.tobytes()
    assert item.rgb.shape == rgb.shape and item.rgb.tobytes() == rgb.tobytes()


def test_frame_output_copies_to_the_host_once():
    pts, conf, colors = maps(12, shape=(16, 16))
    out = FrameOutput(3, "preview", torch.from_numpy(pts).clone(), torch.from_numpy(conf).clone(), colors)
    assert out.pts3d is out.pts3d and np.array_equal(out.pts3d.view(np.uint32), pts.view(np.uint32))
    assert np.array_equal(out.conf.view(np.uint32), conf.view(np.uint32))
    final = out.as_final()
    assert final.kind == "final" and final.index == 3 and final.pts3d is out.pts3d and final.conf is out.conf
    host = FrameOutput.from_numpy(3, "final", pts, conf, colors)
    assert host.pts3d is pts and host.conf is conf and host.pts3d_device.data_ptr() == pts.ctypes.data

"""Output encodings of a frame's maps: ``full`` (whole 224×224 maps) and ``compact`` (confident points, int16).

Encoding runs off the event loop (in the post-processing pool) on the maps where the model left them. On a GPU the
compact encoding's stride, filter, gather and quantisation and ``full``'s float16 cast run in torch on the device,
and only what is sent is copied to the host (``encode_map_on_device``). Maps on the CPU are encoded on the host
(``encode_map_on_host``: the compact encoding in one compiled pass, map_kernels.py): measured with
``bench/serving.py`` on the 2-core CPU, the torch formulation there cost ~27 ms per result against ~5 ms for numpy,
since its many small multi-threaded ops compete with the model thread's. All give the same bytes
(tests/server/test_encoding_equivalence.py). Decoding is for clients and tests (numpy only: this
module imports torch only where the server encodes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from .protocol import Array, CompactMap, FrameData, FullMap, Pose, SessionSettings

if TYPE_CHECKING:
    import torch

INT16_MAX = 32767
SCALE_HEADROOM = 4.0  # the first output's extent uses a quarter of the int16 range: the scene grows


def confident(conf: np.ndarray, conf_thresh: float) -> np.ndarray:
    """The demo's (and ``core.export.fuse``'s) filter: (conf − 1) / conf > conf_thresh."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (conf - 1) / conf > conf_thresh


def finite_points(pts3d: np.ndarray) -> np.ndarray:
    """[..., 3] → [...] bool, all three coordinates finite (``np.isfinite(pts3d).all(-1)``, without numpy's slow
    reduction over a length-3 last axis)."""
    x, y, z = (np.isfinite(pts3d[..., i]) for i in range(3))
    return x & y & z


def choose_scale(pts3d: np.ndarray, conf: np.ndarray, conf_thresh: float) -> float:
    """Model units per int16 step, from a first output: its largest confident |coordinate| × headroom."""
    finite = finite_points(pts3d)
    keep = confident(conf, conf_thresh) & finite
    pts = pts3d[keep] if keep.any() else pts3d[finite]
    extent = float(np.abs(pts).max()) if pts.size else 0.0
    return (extent if extent > 0 else 1.0) * SCALE_HEADROOM / INT16_MAX


def encode_map_on_host(
    pts3d: np.ndarray, conf: np.ndarray, colors: np.ndarray, settings: SessionSettings, scale: float
) -> FullMap | CompactMap:
    """``encode_map`` of host arrays: ``full`` in numpy, ``compact`` in one compiled pass (map_kernels.py). Nothing
    here calls torch: each torch call in a post-processing thread gives up the GIL and then waits to get it back
    behind the other threads, which cost more than numpy's float16 cast (measured with numpy 2.4: bench/results)."""
    if settings.encoding == "full":
        half = settings.dtype == "float16"
        return FullMap.model_construct(
            encoding="full",
            pts3d=Array.of(pts3d.astype(np.float16 if half else np.float32)),
            conf=Array.of(conf.astype(np.float16 if half else np.float32)),
            colors=Array.of(colors),
        )
    from .map_kernels import compact

    positions, kept_colors, kept_conf, clipped = compact(
        pts3d.astype(np.float32, copy=False),
        np.ascontiguousarray(conf, dtype=np.float32),
        colors,
        settings.stride,
        np.float32(settings.conf_thresh),
        np.float32(scale),
    )
    return CompactMap.model_construct(
        encoding="compact",
        scale=float(scale),
        stride=settings.stride,
        clipped=clipped,
        positions=Array.of(positions),
        colors=Array.of(kept_colors),
        conf=Array.of(kept_conf.view(np.float16)),
    )


def on_accelerator(a: object) -> bool:
    """A tensor on a device other than the CPU (duck-typed: numpy arrays have no ``device``)."""
    device = getattr(a, "device", None)
    return getattr(device, "type", "cpu") != "cpu"


def encode_map(
    pts3d: torch.Tensor | np.ndarray,
    conf: torch.Tensor | np.ndarray,
    colors: np.ndarray,
    settings: SessionSettings,
    scale: float,
) -> FullMap | CompactMap:
    """pts3d [H, W, 3], conf [H, W] float32 (tensors on any device, or host arrays), colors [H, W, 3] uint8 on the
    host → the map's encoding: on the device for maps on an accelerator (only the arrays sent leave it), with
    numpy for maps on the CPU (faster there). ``scale``: model units per int16 step (compact)."""
    if on_accelerator(pts3d):
        return encode_map_on_device(pts3d, conf, colors, settings, scale)
    return encode_map_on_host(np.asarray(pts3d), np.asarray(conf), colors, settings, scale)


# --------------------------------------------------------------------------------------------- server side, torch
# Every step is elementwise float32 as numpy computes it (a Python float meets a float32 array as float32, NEP 50),
# so the bytes are those of the numpy formulation (tests/server/test_encoding_equivalence.py): constants are 0-d
# float32 tensors on the maps' device (CUDA divides by a host scalar as a multiplication by its reciprocal), and
# rounding is half to even (``torch.round`` = ``np.rint``).


def _float32(x: float, like: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.full((), x, dtype=torch.float32, device=like.device)


def confident_pixels(pts3d: torch.Tensor, conf: torch.Tensor, conf_thresh: float) -> torch.Tensor:
    """pts3d [H, W, 3], conf [H, W] → [N] int64 flat (row-major) indices of the pixels whose point is finite and
    confident ((conf − 1) / conf > conf_thresh): the selection of the compact encoding and of
    ``core.export.fuse``. On the maps' device."""
    keep = (conf - 1) / conf > _float32(conf_thresh, conf)
    keep &= pts3d.isfinite().all(-1)
    return keep.flatten().nonzero()[:, 0]


def take_pixels(a: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Host ``a`` [H, W, ...] at flat pixel indices → [len(index), ...] (what ``a[mask]`` gives for the mask of
    ``index``, as a gather along one axis)."""
    return np.take(a.reshape(-1, *a.shape[2:]), index, axis=0)


def to_float16(a: torch.Tensor) -> np.ndarray:
    """float32 tensor → host float16 array, bit for bit numpy's ``astype(np.float16)`` (round to nearest even;
    a NaN keeps its sign and the top of its payload, as numpy writes it: devices differ there), cast on the
    tensor's device."""
    import torch

    half = a.half()
    nan = a.isnan()
    if bool(nan.any()):
        bits = a.view(torch.int32)
        payload = (bits & 0x7FFFFF) >> 13
        nan_bits = (bits >> 16) & 0x8000 | torch.where(payload == 0, 0x7C01, 0x7C00 + payload)
        half = torch.where(nan, nan_bits.to(torch.int16), half.view(torch.int16)).view(torch.float16)
    return half.cpu().numpy()


def encode_map_on_device(
    pts3d: torch.Tensor | np.ndarray,
    conf: torch.Tensor | np.ndarray,
    colors: np.ndarray,
    settings: SessionSettings,
    scale: float,
) -> FullMap | CompactMap:
    """``encode_map`` in torch on the maps' device; only the arrays sent leave it."""
    import torch

    with torch.inference_mode():
        pts3d, conf = torch.as_tensor(pts3d).float(), torch.as_tensor(conf).float()
        if settings.encoding == "full":
            half = settings.dtype == "float16"
            return FullMap.model_construct(
                encoding="full",
                pts3d=Array.of(to_float16(pts3d) if half else pts3d.float().cpu().numpy()),
                conf=Array.of(to_float16(conf) if half else conf.float().cpu().numpy()),
                colors=Array.of(colors),
            )
        s = settings.stride
        pts3d, conf = pts3d[::s, ::s], conf[::s, ::s]  # [h, w, 3], [h, w]
        index = confident_pixels(pts3d, conf, settings.conf_thresh)  # [N]
        q = torch.round(pts3d.reshape(-1, 3)[index] / _float32(scale, pts3d))  # [N, 3]
        inside = (q.abs() <= INT16_MAX).all(-1)  # rare misses: points beyond the int16 range (or NaN: scale 0)
        index, q = index[inside], q[inside]
        clipped = len(inside) - len(index)
        return CompactMap.model_construct(
            encoding="compact",
            scale=float(scale),
            stride=s,
            clipped=clipped,
            positions=Array.of(q.to(torch.int16).cpu().numpy()),
            colors=Array.of(take_pixels(colors[::s, ::s], index.cpu().numpy())),
            conf=Array.of(conf.reshape(-1)[index].half().cpu().numpy()),
        )


def encode_frame(
    index: int,
    seq: int,
    kind: Literal["final", "preview"],
    pts3d: torch.Tensor | np.ndarray,
    conf: torch.Tensor | np.ndarray,
    colors: np.ndarray,
    c2w: np.ndarray | None,
    valid: bool,
    focal: float | None,
    settings: SessionSettings,
    scale: float,
) -> FrameData:
    pose = Pose.model_construct(
        c2w=[float(x) for x in np.asarray(c2w).reshape(-1)] if valid else None, valid=bool(valid)
    )
    return FrameData.model_construct(
        index=index, seq=seq, kind=kind, pose=pose, focal=focal, map=encode_map(pts3d, conf, colors, settings, scale)
    )


# --------------------------------------------------------------------------------------------- client side


def decode_map(m: FullMap | CompactMap) -> dict[str, np.ndarray]:
    """``full`` → pts3d [H,W,3], conf [H,W], colors [H,W,3] (float32 / uint8); ``compact`` → points [N,3]
    float32, colors [N,3] uint8, conf [N] float32."""
    if m.encoding == "full":
        return {
            "pts3d": m.pts3d.to_numpy().astype(np.float32),
            "conf": m.conf.to_numpy().astype(np.float32),
            "colors": m.colors.to_numpy(),
        }
    return {
        "points": m.positions.to_numpy().astype(np.float32) * np.float32(m.scale),
        "colors": m.colors.to_numpy(),
        "conf": m.conf.to_numpy().astype(np.float32),
    }


def pose_matrix(p: Pose) -> np.ndarray:
    return np.asarray(p.c2w, dtype=np.float64).reshape(4, 4) if p.valid and p.c2w else np.full((4, 4), np.nan)

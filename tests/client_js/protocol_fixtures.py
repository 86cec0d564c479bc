"""Wire fixtures for the browser client's unit tests, written with server/protocol.py's real encoder.

``python tests/client_js/protocol_fixtures.py`` rewrites client_js/test/fixtures/; test_js_protocol_fixtures.py
fails when the committed files differ from what the current protocol produces, so a protocol change that
the JavaScript decoder has not seen cannot go unnoticed. Every map is small (a few dozen points) and built
from a fixed seed; expected.json holds the values the JavaScript side must decode, computed here with numpy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from spann3r.server import protocol as P

FIXTURE_DIR = Path(__file__).resolve().parents[2] / "client_js" / "test" / "fixtures"
FULL_STRIDE = 2  # the client-side stride the JS test applies to the full maps


def _pose(rng: np.random.Generator, valid: bool = True) -> P.Pose:
    if not valid:
        return P.Pose(c2w=None, valid=False)
    angle = float(rng.uniform(-0.3, 0.3))
    c, s = np.cos(angle), np.sin(angle)
    m = np.array([[c, 0, s, 0.1], [0, 1, 0, -0.02], [-s, 0, c, 0.3], [0, 0, 0, 1]], dtype=np.float64)
    return P.Pose(c2w=[float(v) for v in m.reshape(-1)], valid=True)


def _grid(rng: np.random.Generator, h: int, w: int):
    pts = rng.normal(0.0, 0.5, size=(h, w, 3)).astype(np.float32)
    pts[..., 2] += 2.0
    conf = (1.0 + rng.exponential(2.0, size=(h, w))).astype(np.float32)
    colors = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return pts, conf, colors


def _full(pts, conf, colors, dtype) -> P.FullMap:
    return P.FullMap(pts3d=P.Array.of(pts.astype(dtype)), conf=P.Array.of(conf.astype(dtype)),
                     colors=P.Array.of(colors))


def _expected_full(pts, conf, colors, dtype, stride: int) -> dict:
    """What decodeMap must return for a full map with the client-side stride."""
    p = pts.astype(dtype).astype(np.float32)[::stride, ::stride].reshape(-1, 3)
    c = conf.astype(dtype).astype(np.float32)[::stride, ::stride].reshape(-1)
    rgb = colors[::stride, ::stride].reshape(-1, 3)
    return {"count": int(c.size), "positions": p.reshape(-1).tolist(), "conf": c.tolist(),
            "colors": rgb.reshape(-1).tolist()}


def _frame(index: int, seq: int, kind: str, map_: P.FullMap | P.CompactMap, pose: P.Pose) -> P.FrameData:
    return P.FrameData(index=index, seq=seq, kind=kind, map=map_, pose=pose, focal=211.5)


def build() -> tuple[dict[str, bytes], dict]:
    rng = np.random.default_rng(20240605)
    files: dict[str, bytes] = {}
    expected: dict = {"protocol": P.PROTOCOL_VERSION, "full_stride": FULL_STRIDE}
    settings = P.SessionSettings(encoding="full", dtype="float16")

    model = P.ModelInfo(preset="tiny", weights="synthetic", synthetic=True, device="cpu",
                        notice="UNTRAINED MODEL: synthetic random weights; outputs are not a reconstruction")
    limits = P.Limits(max_message_bytes=16 << 20, max_pixels=40_000_000, max_fps=30.0, max_protocol_errors=5,
                      idle_timeout_s=300.0, max_batch=4)
    hello = P.HelloMsg(session_id="0123456789abcdef", role="watch", worker_id="w0", model=model, limits=limits,
                       settings=settings, frames_processed=12, last_seq=14, finished=False)
    files["hello.msgpack"] = P.pack(hello)
    expected["hello"] = json.loads(hello.model_dump_json())

    files["result_first.msgpack"] = P.pack(P.ResultMsg(seq=0, frame_index=0, ts=1718000000.125,
                                                       timings={"server_s": 0.05}))

    # full maps, float32 and float16, 6x8 images (odd sizes catch row/column mix-ups)
    for dtype, name in ((np.float32, "full_f32"), (np.float16, "full_f16")):
        pf, cf, rf = _grid(rng, 6, 8)
        pp, cp, rp = _grid(rng, 6, 8)
        msg = P.ResultMsg(
            seq=9, frame_index=7, ts=1718000001.5,
            final=_frame(6, 8, "final", _full(pf, cf, rf, dtype), _pose(rng)),
            preview=_frame(7, 9, "preview", _full(pp, cp, rp, dtype), _pose(rng, valid=False)),
            memory=P.MemoryInfo(step=6, frame_index=6, similarity=0.62, skipped=False, pruned=False,
                                mem_tokens=1960, wm=5, lm=980, attn_zeroed_frac=0.41),
            timings={"queue_s": 0.004, "step_s": 0.051, "server_s": 0.19})
        files[f"result_{name}.msgpack"] = P.pack(msg)
        expected[f"result_{name}"] = {
            "seq": 9, "frame_index": 7, "ts": 1718000001.5,
            "final": {"index": 6, "pose": msg.final.pose.c2w, **_expected_full(pf, cf, rf, dtype, FULL_STRIDE)},
            "final_unstrided": _expected_full(pf, cf, rf, dtype, 1),
            "preview": {"index": 7, "pose": None, **_expected_full(pp, cp, rp, dtype, FULL_STRIDE)},
        }

    # compact map: N confident points, int16 positions
    n, scale = 37, 0.00061
    q = rng.integers(-32000, 32000, size=(n, 3), dtype=np.int16)
    conf = (1.0 + rng.exponential(2.0, size=n)).astype(np.float16)
    colors = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    compact = P.CompactMap(scale=scale, stride=2, positions=P.Array.of(q), colors=P.Array.of(colors),
                           conf=P.Array.of(conf), clipped=3)
    msg = P.ResultMsg(seq=21, frame_index=20, ts=None,
                      preview=_frame(20, 21, "preview", compact, _pose(rng)))
    files["result_compact.msgpack"] = P.pack(msg)
    expected["result_compact"] = {
        "seq": 21, "frame_index": 20, "ts": None,
        "preview": {"index": 20, "pose": msg.preview.pose.c2w, "count": n,
                    "positions": (q.astype(np.float64) * scale).astype(np.float32).reshape(-1).tolist(),
                    "conf": conf.astype(np.float32).tolist(), "colors": colors.reshape(-1).tolist()},
    }

    # backfill: two earlier frames (the second with an invalid pose), float32 positions, no confidences
    shares = []
    for index, valid in ((0, True), (1, False)):
        xyz = rng.normal(0.0, 0.5, size=(5 + index, 3)).astype(np.float32)
        rgb = rng.integers(0, 256, size=xyz.shape, dtype=np.uint8)
        shares.append(P.BackfillFrame(index=index, positions=P.Array.of(xyz), colors=P.Array.of(rgb),
                                      pose=_pose(rng, valid=valid)))
    backfill = P.BackfillMsg(chunk=0, chunks=1, frames=shares, keep_every=4, focal=211.5)
    files["backfill.msgpack"] = P.pack(backfill)
    expected["backfill"] = {"frames": [{"index": f.index, "count": f.positions.shape[0],
                                        "positions": f.positions.to_numpy().reshape(-1).tolist(),
                                        "colors": f.colors.to_numpy().reshape(-1).tolist(), "pose": f.pose.c2w}
                                       for f in shares]}

    files["dropped.msgpack"] = P.pack(P.DroppedMsg(seq=3, reason="superseded"))
    files["error.msgpack"] = P.pack(P.ErrorMsg(code="bad_image", message="cannot decode image data", seq=17))
    files["finished.msgpack"] = P.pack(P.FinishedMsg(frames=2, final=None))
    files["ack.msgpack"] = P.pack(P.AckMsg(action="reset", settings=settings))
    files["pong.msgpack"] = P.pack(P.PongMsg(id=7, ts=1.5, server_ts=2.25))
    # a client message the Python side builds, to check the JS encoder uses the same field names
    files["client_frame.msgpack"] = P.pack(P.FrameMsg(seq=5, ts=1.25, format="jpeg", data=b"\xff\xd8\xff\xd9"))
    files["client_control.msgpack"] = P.pack(P.ControlMsg(
        action="settings", settings=P.SessionSettingsPatch(encoding="compact", stride=2)))
    files["expected.json"] = (json.dumps(expected, indent=1, sort_keys=True) + "\n").encode()
    return files, expected


def write(directory: Path = FIXTURE_DIR) -> list[Path]:
    files, _ = build()
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in files.items():
        path = directory / name
        path.write_bytes(data)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write(Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURE_DIR):
        print(p)

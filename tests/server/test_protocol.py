"""The wire format: message round trips, refusal codes, JSON Schema, and the two output encodings."""

from __future__ import annotations

import json
import subprocess
import sys

import msgpack
import numpy as np
import pytest

from spann3r.server import protocol as P
from spann3r.server.encoding import choose_scale, confident, decode_map, encode_map


def _frame(**kw) -> dict:
    return {"type": "frame", "seq": 3, "format": "jpeg", "data": b"\xff\xd8", **kw}


def test_client_messages_round_trip():
    msg = P.decode_client_message(msgpack.packb(_frame(ts=1.5)))
    assert isinstance(msg, P.FrameMsg) and msg.seq == 3 and msg.data == b"\xff\xd8" and msg.ts == 1.5
    ctl = P.decode_client_message(P.pack(P.ControlMsg(action="settings",
                                                      settings=P.SessionSettingsPatch(dtype="float16"))))
    assert ctl.settings.apply(P.SessionSettings()).dtype == "float16"
    assert ctl.settings.apply(P.SessionSettings(encoding="full")).encoding == "full"  # untouched fields stay
    assert isinstance(P.decode_client_message(msgpack.packb({"type": "ping", "id": 9})), P.PingMsg)


@pytest.mark.parametrize("data, code, seq", [
    (b"\xc1\x00", "malformed", None),  # 0xc1 is never valid msgpack
    (msgpack.packb([1, 2]), "malformed", None),
    (msgpack.packb({"seq": 1}), "unknown_type", 1),
    (msgpack.packb({"type": "video", "seq": 4}), "unknown_type", 4),
    (msgpack.packb(_frame(format="gif")), "bad_schema", 3),
    (msgpack.packb(_frame(seq="three")), "bad_schema", None),
    (msgpack.packb(_frame(seq=-1)), "bad_schema", -1),
    (msgpack.packb(_frame(colour="red")), "bad_schema", 3),  # unknown keys are refused, not ignored
    (msgpack.packb({"type": "control", "action": "explode"}), "bad_schema", None),
])
def test_refusal_codes(data, code, seq):
    with pytest.raises(P.ProtocolError) as err:
        P.decode_client_message(data)
    assert err.value.code == code and err.value.seq == seq


def test_size_limit_checked_before_parsing():
    data = msgpack.packb(_frame(data=b"x" * 5000))
    with pytest.raises(P.ProtocolError) as err:
        P.decode_client_message(data, max_bytes=4096)
    assert err.value.code == "message_too_large"
    assert P.decode_client_message(data, max_bytes=len(data)).seq == 3


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int16, np.uint8, np.uint16])
def test_array_round_trip(dtype):
    a = (np.arange(24).reshape(2, 3, 4) * 3).astype(dtype)
    wire = P.Array.of(a)
    assert wire.dtype == np.dtype(dtype).name and wire.shape == [2, 3, 4]
    back = P.Array.model_validate(msgpack.unpackb(msgpack.packb(wire.model_dump()))).to_numpy()
    np.testing.assert_array_equal(back, a)
    assert back.dtype == np.dtype(dtype)
    with pytest.raises(ValueError, match="bytes"):
        P.Array(dtype=wire.dtype, shape=[2, 3, 5], data=wire.data).to_numpy()


def test_json_schema_names_every_message():
    schema = P.protocol_json_schema()
    for name in ("FrameMsg", "ControlMsg", "PingMsg", "HelloMsg", "ResultMsg", "DroppedMsg", "FinishedMsg",
                 "AckMsg", "PongMsg", "ErrorMsg", "SessionSettings", "SessionCreated", "SessionStats", "FullMap",
                 "CompactMap", "Array", "Pose", "MemoryInfo"):
        assert name in schema["$defs"], name
    assert schema["protocol"] == P.PROTOCOL_VERSION
    # every $ref resolves inside the document
    refs = set()

    def walk(o):
        if isinstance(o, dict):
            if "$ref" in o:
                refs.add(o["$ref"].split("/")[-1])
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(schema)
    assert refs <= set(schema["$defs"])
    out = subprocess.run([sys.executable, "-m", "spann3r.server.protocol"], capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout) == json.loads(json.dumps(schema))


def _maps(seed=0):
    rng = np.random.default_rng(seed)
    pts = rng.normal(0, 1.0, (224, 224, 3)).astype(np.float32)
    conf = (1 + rng.exponential(0.01, (224, 224))).astype(np.float32)  # many below the threshold
    colors = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    return pts, conf, colors


def test_full_encoding_float32_exact_and_float16_close():
    pts, conf, colors = _maps()
    m32 = decode_map(encode_map(pts, conf, colors, P.SessionSettings(encoding="full"), None))
    np.testing.assert_array_equal(m32["pts3d"], pts)
    np.testing.assert_array_equal(m32["conf"], conf)
    np.testing.assert_array_equal(m32["colors"], colors)
    m16 = decode_map(encode_map(pts, conf, colors, P.SessionSettings(encoding="full", dtype="float16"), None))
    np.testing.assert_allclose(m16["pts3d"], pts, rtol=1e-3, atol=1e-4)
    assert not np.array_equal(m16["pts3d"], pts)  # it really went through half precision


def test_compact_encoding_keeps_confident_points_within_quantisation():
    pts, conf, colors = _maps()
    s = P.SessionSettings(encoding="compact", conf_thresh=0.01, stride=2)
    scale = choose_scale(pts, conf, s.conf_thresh)
    m = encode_map(pts, conf, colors, s, scale)
    out = decode_map(m)
    keep = confident(conf[::2, ::2], 0.01)
    assert 0 < keep.sum() < keep.size  # the threshold actually filters
    assert m.clipped == 0 and len(out["points"]) == keep.sum()
    np.testing.assert_allclose(out["points"], pts[::2, ::2][keep], atol=scale / 2 + 1e-7)
    np.testing.assert_array_equal(out["colors"], colors[::2, ::2][keep])
    np.testing.assert_allclose(out["conf"], conf[::2, ::2][keep], rtol=1e-3)
    # a scene that outgrows the scale: far points are left out and counted, never wrapped around
    far = pts.copy()
    far[:10] *= 1e4
    m = encode_map(far, conf, colors, s, scale)
    assert m.clipped > 0 and len(decode_map(m)["points"]) + m.clipped == keep.sum()
    assert np.abs(decode_map(m)["points"]).max() <= 32767 * scale

"""The wire format: message round trips, refusal codes, JSON Schema, and the two output encodings."""

from __future__ import annotations

import json
import subprocess
import sys
import typing

import msgpack
import numpy as np
import pytest
from pydantic import ValidationError

from spann3r.server import protocol as P
from spann3r.server.encoding import choose_scale, confident, decode_map, encode_map


def _frame(**kw) -> dict:
    return {"type": "frame", "seq": 3, "format": "jpeg", "data": b"\xff\xd8", **kw}


def test_client_messages_round_trip():
    msg = P.decode_client_message(msgpack.packb(_frame(ts=1.5)))
    assert isinstance(msg, P.FrameMsg) and msg.seq == 3 and msg.data == b"\xff\xd8" and msg.ts == 1.5
    ctl = P.decode_client_message(
        P.pack(P.ControlMsg(action="settings", settings=P.SessionSettingsPatch(dtype="float16")))
    )
    assert ctl.settings.apply(P.SessionSettings()).dtype == "float16"
    assert ctl.settings.apply(P.SessionSettings(encoding="full")).encoding == "full"  # untouched fields stay
    assert isinstance(P.decode_client_message(msgpack.packb({"type": "ping", "id": 9})), P.PingMsg)


@pytest.mark.parametrize(
    "data, code, seq",
    [
        (b"\xc1\x00", "malformed", None),  # 0xc1 is never valid msgpack
        (msgpack.packb([1, 2]), "malformed", None),
        (msgpack.packb({"seq": 1}), "unknown_type", 1),
        (msgpack.packb({"type": "video", "seq": 4}), "unknown_type", 4),
        (msgpack.packb(_frame(format="gif")), "bad_schema", 3),
        (msgpack.packb(_frame(seq="three")), "bad_schema", None),
        (msgpack.packb(_frame(seq=-1)), "bad_schema", -1),
        (msgpack.packb(_frame(colour="red")), "bad_schema", 3),  # unknown keys are refused, not ignored
        (msgpack.packb({"type": "control", "action": "explode"}), "bad_schema", None),
    ],
)
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
    # a big-endian or non-contiguous array goes out as the same little-endian C-order bytes
    for other in (a.astype(np.dtype(dtype).newbyteorder(">")), np.asfortranarray(a), a[:, ::-1][:, ::-1]):
        assert P.Array.of(other) == wire


def test_json_schema_names_every_message():
    schema = P.protocol_json_schema()
    for name in (
        "FrameMsg",
        "ControlMsg",
        "PingMsg",
        "HelloMsg",
        "ResultMsg",
        "DroppedMsg",
        "FinishedMsg",
        "AckMsg",
        "PongMsg",
        "ErrorMsg",
        "SessionSettings",
        "SessionCreated",
        "SessionStats",
        "FullMap",
        "CompactMap",
        "Array",
        "Pose",
        "MemoryInfo",
    ):
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
    out = subprocess.run([sys.executable, "-m", "spann3r.server.protocol"], capture_output=True, text=True, check=True)
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


# --------------------------------------------------------------------------------------------- derivation


def test_message_type_lists_come_from_the_message_classes():
    def literal_types(union) -> set[str]:
        return {m.model_fields["type"].default for m in typing.get_args(typing.get_args(union)[0])}

    assert set(P.CLIENT_TYPES) == literal_types(P.ClientMessage) == {"frame", "control", "ping"}
    assert set(P.SERVER_TYPES) == literal_types(P.ServerMessage)
    assert "job" in P.SERVER_TYPES and "error" in P.SERVER_TYPES
    assert set(P.ERROR_CODES) == set(typing.get_args(P.ErrorCode))


def test_settings_patch_has_every_setting_optional_with_the_same_bounds():
    assert set(P.SessionSettingsPatch.model_fields) == set(P.SessionSettings.model_fields)
    assert all(f.default is None for f in P.SessionSettingsPatch.model_fields.values())
    for name, value in [
        ("queue_size", 65),
        ("every_n", 0),
        ("conf_thresh", 1.0),
        ("stride", 17),
        ("compact_scale", 0.0),
        ("frame_policy", "newest"),
    ]:
        with pytest.raises(ValidationError):
            P.SessionSettings.model_validate({name: value})
        with pytest.raises(ValidationError):
            P.SessionSettingsPatch.model_validate({name: value})


def test_schema_carries_the_constants_the_clients_generate():
    constants = P.protocol_json_schema()["x-constants"]
    assert constants["CLIENT_MESSAGE_TYPES"] == list(P.CLIENT_TYPES)
    assert constants["SERVER_MESSAGE_TYPES"] == list(P.SERVER_TYPES)
    assert constants["ERROR_CODES"] == list(P.ERROR_CODES)
    assert constants["CLOSE_CODES"]["SHUTDOWN"] == P.CLOSE_SHUTDOWN
    assert constants["CLOSE_CODES"]["PROTOCOL_VIOLATION"] == P.CLOSE_PROTOCOL_VIOLATION
    assert constants["MAX_SEQ"] == 2**53 - 1


# --------------------------------------------------------------------------------------------- strict types


@pytest.mark.parametrize(
    "settings",
    [
        {"preview": "yes"},
        {"preview": 1},
        {"queue_size": "12"},
        {"queue_size": True},
        {"stride": 2.0},
        {"compact_scale": float("inf")},
        {"conf_thresh": float("nan")},
        {"compact_scale": float("nan")},
        {"intrinsics": [500.0, 500.0, 320.0]},
        {"intrinsics": [0.0, 500.0, 320.0, 240.0]},
        {"intrinsics": [500.0, -1.0, 320.0, 240.0]},
        {"intrinsics": [500.0, 500.0, float("nan"), 240.0]},
        {"intrinsics": "500,500,320,240"},
        {"pose_method": "ransac"},
    ],
)
def test_settings_are_strict_and_finite(settings):
    with pytest.raises(ValidationError):
        P.SessionSettings.model_validate(settings)
    with pytest.raises(P.ProtocolError) as err:
        P.decode_client_message(msgpack.packb({"type": "control", "action": "settings", "settings": settings}))
    assert err.value.code == "bad_schema"


@pytest.mark.parametrize(
    "fields",
    [
        {"seq": 2**53},
        {"seq": 2**64 - 1},
        {"seq": True},
        {"ts": float("nan")},
        {"ts": float("-inf")},
        {"width": "64", "format": "rgb8"},
    ],
)
def test_frames_are_strict(fields):
    with pytest.raises(P.ProtocolError) as err:
        P.decode_client_message(msgpack.packb(_frame(**fields)))
    assert err.value.code == "bad_schema"
    assert err.value.seq is None or abs(err.value.seq) <= P.MAX_SEQ  # an echoed seq always fits the protocol


def test_largest_seq_is_accepted_and_integral_floats_still_pass():
    assert P.decode_client_message(msgpack.packb(_frame(seq=P.MAX_SEQ))).seq == P.MAX_SEQ
    assert P.decode_client_message(msgpack.packb(_frame(ts=3))).ts == 3.0  # an int is a fine float


# --------------------------------------------------------------------------------------------- nesting, echo


def _nested(depth: int):
    obj: object = 1
    for _ in range(depth):
        obj = [obj]
    return obj


@pytest.mark.parametrize("where", ["type", "extra", "settings"])
def test_deep_nesting_is_malformed_not_a_crash(where):
    deep = _nested(1000)
    msg = (
        {"type": deep}
        if where == "type"
        else _frame(junk=deep)
        if where == "extra"
        else {"type": "control", "action": "settings", "settings": {"preview": deep}}
    )
    with pytest.raises(P.ProtocolError) as err:
        P.decode_client_message(msgpack.packb(msg))
    assert err.value.code == "malformed" and "nest" in err.value.message


def test_modest_nesting_is_judged_by_the_schema():
    with pytest.raises(P.ProtocolError) as err:
        P.decode_client_message(msgpack.packb(_frame(junk=_nested(P.MAX_DEPTH - 2))))
    assert err.value.code == "bad_schema"


@pytest.mark.parametrize(
    "msg",
    [
        {"type": "x" * 15_000_000},
        {"type": ["y" * 1_000_000] * 3},
        _frame(**{"k" * 5_000_000: 1}),
        _frame(format="z" * 5_000_000),
        {"type": "control", "action": "a" * 5_000_000},
    ],
)
def test_error_messages_never_echo_more_than_a_short_prefix(msg):
    with pytest.raises(P.ProtocolError) as err:
        P.decode_client_message(msgpack.packb(msg))
    assert len(err.value.message) <= P.MAX_ERROR_MESSAGE_CHARS
    assert len(P.pack(P.ErrorMsg(code=err.value.code, message=err.value.message))) < 1024


# --------------------------------------------------------------------------------------------- size bound


def test_largest_server_message_fits_the_derived_bound():
    """A result with full float32 final and preview maps and every optional field set."""
    pts, conf, colors = _maps()
    full = P.FullMap(pts3d=P.Array.of(pts), conf=P.Array.of(conf), colors=P.Array.of(colors))
    pose = P.Pose(c2w=[0.123456789] * 16, valid=True)

    def frame_data(kind: str) -> P.FrameData:
        return P.FrameData(index=P.MAX_SEQ, seq=P.MAX_SEQ, kind=kind, map=full, pose=pose, focal=123.456)

    memory = P.MemoryInfo(
        step=10**9,
        frame_index=10**9,
        similarity=0.5,
        skipped=False,
        pruned=True,
        mem_tokens=10**9,
        wm=10**9,
        lm=10**9,
        attn_zeroed_frac=0.25,
    )
    timings = {
        k: 1.0 for k in ("queue_s", "decode_s", "step_s", "batch", "pose_s", "encode_s", "server_s", "job_units")
    }
    msg = P.ResultMsg(
        seq=P.MAX_SEQ,
        frame_index=10**9,
        ts=1e9,
        final=frame_data("final"),
        preview=frame_data("preview"),
        memory=memory,
        timings=timings,
    )
    size = len(P.pack(msg))
    assert size > 2 * 2**20 - 300_000  # two full float32 maps: about 1.9 MB
    assert size <= P.MAX_SERVER_MESSAGE_BYTES


def test_python_client_accepts_the_largest_server_message():
    from spann3r.client import StreamClient

    assert StreamClient.max_message_bytes == P.MAX_SERVER_MESSAGE_BYTES


def test_client_containers_are_bounded_before_they_are_built():
    for obj in (
        _frame(junk=[None] * (P.MAX_CLIENT_CONTAINER + 1)),
        [None] * (8 * 2**20),
        _frame(junk={str(i): 0 for i in range(P.MAX_CLIENT_CONTAINER + 1)}),
    ):
        with pytest.raises(P.ProtocolError) as err:
            P.decode_client_message(msgpack.packb(obj))
        assert err.value.code == "malformed"
    with pytest.raises(P.ProtocolError) as err:
        P.decode_client_message(msgpack.packb(_frame(junk=[None] * P.MAX_CLIENT_CONTAINER)))
    assert err.value.code == "bad_schema"  # within the bound: judged by the schema


def test_pose_methods_are_the_solvers():
    """The protocol names the pose methods without importing the solver (torch); they must stay the same."""
    import typing

    from spann3r.core.camera import POSE_METHODS

    assert typing.get_args(P.PoseMethod) == POSE_METHODS


def test_known_intrinsics_are_accepted_by_settings_and_patches():
    ok = [500.0, 480.0, 330.5, 250.0]
    assert P.SessionSettings.model_validate({"intrinsics": ok}).intrinsics == ok
    msg = P.decode_client_message(
        msgpack.packb(
            {"type": "control", "action": "settings", "settings": {"intrinsics": ok, "pose_method": "pnp_ransac"}}
        )
    )
    assert msg.settings.apply(P.SessionSettings()).intrinsics == ok


def test_job_downloads_are_the_ones_the_server_serves():
    import typing

    from spann3r.server.jobs import JobDownloadName

    assert set(typing.get_args(P.JobDownload)) == {d.value for d in JobDownloadName}

"""The live Foxglove feed, seen by a WebSocket client speaking the Foxglove protocol: it subscribes to every
channel and decodes what arrives with the protobuf schemas the server advertises."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from robotics_data import server_messages
from websockets.asyncio.client import connect

from spann3r.client.foxglove_feed import FoxgloveFeed

CONF_THRESH = 0.01
SUBPROTOCOLS = ["foxglove.websocket.v1", "foxglove.sdk.v1"]  # the protocol's name before and since foxglove-sdk
MESSAGE_DATA = 0x01


def message_class(channel: dict):
    """The protobuf class of an advertised channel, from its schema (a base64 FileDescriptorSet)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(base64.b64decode(channel["schema"]))
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:
        pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(channel["schemaName"]))


async def subscribe_all(ws, feed: FoxgloveFeed) -> dict[int, tuple[str, type]]:
    """serverInfo, advertise → subscribe to every channel; subscription id → (topic, message class)."""
    info = json.loads(await ws.recv())
    assert info["op"] == "serverInfo" and info["name"] == "spann3r"
    advertised = json.loads(await ws.recv())
    assert advertised["op"] == "advertise"
    subs = {100 + c["id"]: c for c in advertised["channels"]}
    assert all(c["encoding"] == "protobuf" for c in subs.values())
    await ws.send(
        json.dumps({"op": "subscribe", "subscriptions": [{"id": sid, "channelId": c["id"]} for sid, c in subs.items()]})
    )
    channels = (feed.points, feed.pose, feed.tf, feed.camera_info, feed.image)
    deadline = time.monotonic() + 10
    while not all(ch.has_sinks() for ch in channels):  # the server has taken the subscriptions in
        assert time.monotonic() < deadline, "subscriptions not seen by the server"
        await asyncio.sleep(0.02)
    return {sid: (c["topic"], message_class(c)) for sid, c in subs.items()}


async def receive(ws, subs: dict, expected: dict[str, int]) -> dict[str, list]:
    """Decoded messages per topic until each topic has ``expected`` of them."""
    got: dict[str, list] = {topic: [] for topic in expected}
    while any(len(got[t]) < n for t, n in expected.items()):
        data = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(data, bytes) and data[0] == MESSAGE_DATA
        sid, log_time = struct.unpack_from("<IQ", data, 1)
        topic, cls = subs[sid]
        got.setdefault(topic, []).append((log_time, cls.FromString(data[13:])))
    return got


def cloud_points(msg) -> tuple[np.ndarray, np.ndarray]:
    fields = {f.name: f for f in msg.fields}
    n = len(msg.data) // msg.point_stride
    raw = np.frombuffer(msg.data, np.uint8).reshape(n, msg.point_stride)
    xyz = np.stack([raw[:, fields[a].offset : fields[a].offset + 4].copy().view("<f4")[:, 0] for a in "xyz"], -1)
    rgb = np.stack([raw[:, fields[c].offset] for c in ("red", "green", "blue")], -1)
    return xyz, rgb


def test_feed_publishes_clouds_transforms_poses_calibration_images(run_arrays):
    n = len(run_arrays["pts3d"])
    stamps = [1_700_000_000.5 + 0.1 * i for i in range(n)]
    valid = run_arrays["pose_valid"]

    async def scenario():
        with FoxgloveFeed(port=0, conf_thresh=CONF_THRESH) as feed:
            assert feed.port > 0
            async with connect(f"ws://127.0.0.1:{feed.port}", subprotocols=SUBPROTOCOLS, max_size=None) as ws:
                subs = await subscribe_all(ws, feed)
                frames = [f for m in server_messages(run_arrays, stamps) if (f := feed.add(m)) is not None]
                assert [f.index for f in frames] == list(range(n))
                return await receive(
                    ws,
                    subs,
                    {
                        "/spann3r/points": n,
                        "/tf": int(valid.sum()),
                        "/spann3r/camera/pose": int(valid.sum()),
                        "/spann3r/camera/camera_info": n,
                        "/spann3r/camera/image/compressed": n,
                    },
                )

    got = asyncio.run(asyncio.wait_for(scenario(), 60))
    for i, (log_time, cloud) in enumerate(got["/spann3r/points"]):
        assert log_time == round(stamps[i] * 1e9) and cloud.frame_id == "map"
        conf = run_arrays["conf"][i]
        keep = ((conf - 1) / conf > CONF_THRESH) & np.isfinite(run_arrays["pts3d"][i]).all(-1)
        xyz, rgb = cloud_points(cloud)
        np.testing.assert_array_equal(xyz, run_arrays["pts3d"][i][keep])
        np.testing.assert_array_equal(rgb, run_arrays["colors"][i][keep])
    for (log_time, tfs), (_, pose), i in zip(got["/tf"], got["/spann3r/camera/pose"], np.flatnonzero(valid)):
        (tf,) = tfs.transforms
        assert log_time == round(stamps[i] * 1e9)
        assert (tf.parent_frame_id, tf.child_frame_id) == ("map", "camera_optical")
        c2w = run_arrays["poses"][i]
        t, q = tf.translation, tf.rotation
        np.testing.assert_allclose([t.x, t.y, t.z], c2w[:3, 3], atol=1e-6)
        x, y, z, w = q.x, q.y, q.z, q.w  # rotation matrix of the quaternion
        rot = np.array(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
            ]
        )
        np.testing.assert_allclose(rot, c2w[:3, :3], atol=1e-6)
        p, o = pose.pose.position, pose.pose.orientation
        assert pose.frame_id == "map" and (p.x, p.y, p.z) == (t.x, t.y, t.z) and (o.x, o.y, o.z, o.w) == (x, y, z, w)
    size = run_arrays["conf"].shape[1]
    for _, calib in got["/spann3r/camera/camera_info"]:
        f = float(run_arrays["focal"])
        assert calib.frame_id == "camera_optical" and (calib.width, calib.height) == (size, size)
        np.testing.assert_allclose(np.reshape(calib.K, (3, 3)), [[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]])
    images = [img for _, img in got["/spann3r/camera/image/compressed"]]
    assert all(img.format == "jpeg" and img.data[:2] == b"\xff\xd8" for img in images)  # JPEG start of image


def test_compact_results_decode_to_the_confident_points(run_arrays):
    """``compact`` maps (int16 positions of the server's confident points) → the same points, within a step."""
    from spann3r.client.foxglove_feed import FinalFrames

    stamps = [10.0 + i for i in range(len(run_arrays["pts3d"]))]
    messages = server_messages(run_arrays, stamps, encoding="compact")
    to_frames = FinalFrames(conf_thresh=CONF_THRESH)
    frames = [f for m in messages if (f := to_frames(m)) is not None]
    assert [f.stamp for f in frames] == stamps
    scale = messages[1].final.map.scale
    for i, frame in enumerate(frames):
        conf = run_arrays["conf"][i]
        keep = ((conf - 1) / conf > CONF_THRESH) & np.isfinite(run_arrays["pts3d"][i]).all(-1)
        want = run_arrays["pts3d"][i][keep]
        assert frame.image is None
        assert abs(len(frame.xyz) - len(want)) <= 0.05 * len(want)  # float16 confidences move a few across it
        matched = np.abs(frame.xyz[:, None] - want[None]).max(-1).min(-1)
        assert (matched <= scale / 2 + 1e-6).all()

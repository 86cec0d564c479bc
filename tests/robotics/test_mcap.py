"""MCAP export with ROS 2 messages, read back with an independent reader (rosbags: its own MCAP reader and CDR
deserialiser) and compared with the arrays it was written from."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore
from scipy.spatial.transform import Rotation

from spann3r.core.ros_export import MSGDEFS, McapRosWriter, Topics, write_mcap

CONF_THRESH = 0.01
TOPICS = Topics()


def read_bag(path: Path) -> dict[str, list]:
    """topic → [(log time ns, message)] with rosbags' reader."""
    out: dict[str, list] = {}
    with AnyReader([path]) as reader:
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, reader.deserialize(raw, conn.msgtype)))
    return out


def cloud_arrays(msg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PointCloud2 → (xyz, rgb, confidence), through the message's own field table."""
    fields = {f.name: f for f in msg.fields}
    assert all(f.datatype == 7 and f.count == 1 for f in msg.fields)  # FLOAT32
    dtype = np.dtype(
        {
            "names": list(fields),
            "formats": ["<f4"] * len(fields),
            "offsets": [f.offset for f in fields.values()],
            "itemsize": msg.point_step,
        }
    )
    rec = np.frombuffer(msg.data.tobytes(), dtype=dtype, count=msg.width * msg.height)
    xyz = np.stack([rec["x"], rec["y"], rec["z"]], -1)
    bits = rec["rgb"].view("<u4")
    rgb = np.stack([(bits >> 16) & 255, (bits >> 8) & 255, bits & 255], -1).astype(np.uint8)
    assert not (bits >> 24).any()  # 0x00RRGGBB
    return xyz, rgb, rec["confidence"]


def expected_points(arrays: dict, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    conf = arrays["conf"][i]
    keep = ((conf - 1) / conf > CONF_THRESH) & np.isfinite(arrays["pts3d"][i]).all(-1)
    return arrays["pts3d"][i][keep], arrays["colors"][i][keep], conf[keep]


def test_message_definitions_are_the_standard_ros2_ones():
    store = get_typestore(Stores.ROS2_HUMBLE)
    for name, text in MSGDEFS.items():
        assert text == store.generate_msgdef(name, ros_version=2)[0], name


def test_mcap_round_trip_through_rosbags(tmp_path, run_arrays):
    stamps = [1_700_000_000.25 + 0.1 * i for i in range(len(run_arrays["pts3d"]))]
    path = tmp_path / "run.mcap"
    assert write_mcap(path, run_arrays, conf_thresh=CONF_THRESH, stamps=stamps) == 4
    bag = read_bag(path)
    n = len(run_arrays["pts3d"])
    valid = run_arrays["pose_valid"]

    assert len(bag[TOPICS.points]) == len(bag[TOPICS.camera_info]) == len(bag[TOPICS.image]) == n
    assert len(bag[TOPICS.pose]) == len(bag[TOPICS.tf]) == valid.sum()  # no pose for the invalid frame
    for i, (t, msg) in enumerate(bag[TOPICS.points]):
        assert t == round(stamps[i] * 1e9)
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == divmod(t, 1_000_000_000)
        assert msg.header.frame_id == "map" and msg.is_dense and not msg.is_bigendian
        xyz, rgb, conf = cloud_arrays(msg)
        want_xyz, want_rgb, want_conf = expected_points(run_arrays, i)
        assert 0 < len(want_xyz) < run_arrays["conf"][i].size  # the threshold keeps some and drops some
        np.testing.assert_array_equal(xyz, want_xyz)
        np.testing.assert_array_equal(rgb, want_rgb)
        np.testing.assert_array_equal(conf, want_conf)

    for (t, pose), (t_tf, tf), i in zip(bag[TOPICS.pose], bag[TOPICS.tf], np.flatnonzero(valid)):
        c2w = run_arrays["poses"][i].astype(np.float64)
        assert t == t_tf == round(stamps[i] * 1e9)
        assert pose.header.frame_id == "map"
        p, q = pose.pose.position, pose.pose.orientation
        np.testing.assert_allclose([p.x, p.y, p.z], c2w[:3, 3], atol=1e-6)
        np.testing.assert_allclose(Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix(), c2w[:3, :3], atol=1e-6)
        (transform,) = tf.transforms
        assert (transform.header.frame_id, transform.child_frame_id) == ("map", "camera_optical")
        tr, rot = transform.transform.translation, transform.transform.rotation
        np.testing.assert_allclose([tr.x, tr.y, tr.z], c2w[:3, 3], atol=1e-6)
        np.testing.assert_allclose([rot.x, rot.y, rot.z, rot.w], [q.x, q.y, q.z, q.w])

    size, f = run_arrays["conf"].shape[1], float(run_arrays["focal"])
    for _, info in bag[TOPICS.camera_info]:
        assert info.header.frame_id == "camera_optical" and (info.width, info.height) == (size, size)
        np.testing.assert_allclose(info.k.reshape(3, 3), [[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]])
        np.testing.assert_allclose(info.p.reshape(3, 4)[:, :3], info.k.reshape(3, 3))
        assert not info.d.any()

    for i, (_, image) in enumerate(bag[TOPICS.image]):
        assert image.format == "jpeg" and image.header.frame_id == "camera_optical"
        rgb = cv2.cvtColor(cv2.imdecode(image.data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert rgb.shape == run_arrays["colors"][i].shape
        assert np.abs(rgb.astype(int) - run_arrays["colors"][i]).mean() < 4  # JPEG of the model's input


def test_incremental_writer_with_given_images_intrinsics_and_synthetic_stamps(tmp_path, run_arrays):
    """Frames one at a time into a stream; original frame bytes and intrinsics as given; stamps from the rate."""
    buf = io.BytesIO()
    k = np.array([[180.0, 0, 110.0], [0, 190.0, 115.0], [0, 0, 1]])
    originals = [f"jpeg bytes of frame {i}".encode() for i in range(2)]
    with McapRosWriter(buf, conf_thresh=CONF_THRESH, rate=5.0, start_time=10.0) as writer:
        for i in range(2):
            writer.add_frame(
                run_arrays["pts3d"][i],
                run_arrays["conf"][i],
                run_arrays["colors"][i],
                run_arrays["poses"][i],
                intrinsics=k,
                image=originals[i],
            )
    path = tmp_path / "stream.mcap"
    path.write_bytes(buf.getvalue())
    bag = read_bag(path)
    assert [t for t, _ in bag[TOPICS.points]] == [10_000_000_000, 10_200_000_000]
    assert [bytes(m.data) for _, m in bag[TOPICS.image]] == originals
    for _, info in bag[TOPICS.camera_info]:
        np.testing.assert_allclose(info.k.reshape(3, 3), k)


def test_frames_without_pose_or_intrinsics_have_points_only(tmp_path, run_arrays):
    path = tmp_path / "bare.mcap"
    arrays = {k: run_arrays[k] for k in ("pts3d", "conf", "colors")}
    write_mcap(path, arrays, conf_thresh=CONF_THRESH)
    bag = read_bag(path)
    assert set(bag) == {TOPICS.points, TOPICS.image}


@pytest.mark.parametrize("encoding", ["full", "compact"])
def test_stream_results_into_mcap(tmp_path, run_arrays, encoding):
    """``McapLog``: a stream's messages (either map encoding) → the same ROS 2 topics, with the capture times."""
    from robotics_data import server_messages

    from spann3r.client.foxglove_feed import McapLog

    n = len(run_arrays["pts3d"])
    stamps = [1_700_000_000.0 + 0.5 * i for i in range(n)]
    path = tmp_path / "stream.mcap"
    with McapLog(path, conf_thresh=CONF_THRESH) as log:
        frames = [f for m in server_messages(run_arrays, stamps, encoding) if (f := log.add(m)) is not None]
    bag = read_bag(path)
    assert [t for t, _ in bag[TOPICS.points]] == [round(s * 1e9) for s in stamps]
    assert len(bag[TOPICS.tf]) == run_arrays["pose_valid"].sum() and len(bag[TOPICS.camera_info]) == n
    assert len(bag.get(TOPICS.image, [])) == (n if encoding == "full" else 0)  # compact maps carry no image
    for frame, (_, cloud) in zip(frames, bag[TOPICS.points]):
        xyz, rgb, conf = cloud_arrays(cloud)
        np.testing.assert_array_equal(xyz, frame.xyz)
        np.testing.assert_array_equal(rgb, frame.rgb)
        np.testing.assert_array_equal(conf, frame.conf)
    if encoding == "full":  # the points are the arrays' confident points themselves
        for i, (_, cloud) in enumerate(bag[TOPICS.points]):
            np.testing.assert_array_equal(cloud_arrays(cloud)[0], expected_points(run_arrays, i)[0])


def test_mcap_of_a_real_reconstruction(tmp_path, tiny_engine):
    """The arrays ``spann3r reconstruct`` saves (tiny model) → MCAP: a cloud per frame, poses where valid."""
    from spann3r.core.reconstruct import reconstruct

    rng = np.random.default_rng(2)
    scene = cv2.GaussianBlur(rng.integers(0, 256, (72, 160, 3), dtype=np.uint8), (5, 5), 0)
    rec = reconstruct(tiny_engine, [(f"{i}.png", scene[:, 8 * i : 8 * i + 96]) for i in range(3)])
    arrays = dict(rec.arrays())
    path = tmp_path / "rec.mcap"
    write_mcap(path, arrays, conf_thresh=0.0)
    bag = read_bag(path)
    assert len(bag[TOPICS.points]) == len(bag[TOPICS.camera_info]) == 3
    assert len(bag.get(TOPICS.tf, [])) == arrays["pose_valid"].sum()
    for i, (_, cloud) in enumerate(bag[TOPICS.points]):
        conf = arrays["conf"][i]
        keep = ((conf - 1) / conf > 0.0) & np.isfinite(arrays["pts3d"][i]).all(-1)
        np.testing.assert_array_equal(cloud_arrays(cloud)[0], arrays["pts3d"][i][keep])
        assert cloud.width == keep.sum() > 0


def test_points_without_confidence(tmp_path, run_arrays):
    """A session's export buffer keeps points and colours only: confidence is written as NaN."""
    xyz, rgb, _ = expected_points(run_arrays, 0)
    path = tmp_path / "session.mcap"
    with McapRosWriter(path) as writer:
        writer.add_points(xyz, rgb, None, run_arrays["poses"][0])
    bag = read_bag(path)
    ((_, cloud),) = bag[TOPICS.points]
    got_xyz, got_rgb, got_conf = cloud_arrays(cloud)
    np.testing.assert_array_equal(got_xyz, xyz)
    np.testing.assert_array_equal(got_rgb, rgb)
    assert np.isnan(got_conf).all() and set(bag) == {TOPICS.points, TOPICS.pose, TOPICS.tf}


def test_reconstruct_command_writes_the_npz_run_as_mcap(tmp_path):
    """``spann3r reconstruct --mcap``: every point, colour and pose of the MCAP equals the npz of the same run."""
    from spann3r.cli.main import main

    rng = np.random.default_rng(5)
    scene = cv2.GaussianBlur(rng.integers(0, 256, (72, 160, 3), dtype=np.uint8), (5, 5), 0)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        cv2.imwrite(str(frames / f"{i}.png"), scene[:, 8 * i : 8 * i + 96])
    out, mcap = tmp_path / "rec.npz", tmp_path / "rec.mcap"
    argv = ["reconstruct", str(frames), "--model", "tiny", "--weights", "synthetic", "--out", str(out)]
    assert main([*argv, "--mcap", str(mcap), "--conf-thresh", str(CONF_THRESH)]) == 0
    arrays = dict(np.load(out))
    bag = read_bag(mcap)
    assert len(bag[TOPICS.points]) == 3
    for i, (_, cloud) in enumerate(bag[TOPICS.points]):
        xyz, rgb, conf = cloud_arrays(cloud)
        want = expected_points(arrays, i)
        np.testing.assert_array_equal(xyz, want[0])
        np.testing.assert_array_equal(rgb, want[1])
        np.testing.assert_array_equal(conf, want[2])
    valid = np.flatnonzero(arrays["pose_valid"])
    poses = bag.get(TOPICS.pose, [])
    assert len(poses) == len(valid)
    for (_, msg), i in zip(poses, valid):
        p = msg.pose.position
        np.testing.assert_allclose([p.x, p.y, p.z], arrays["poses"][i][:3, 3], rtol=0, atol=1e-6)

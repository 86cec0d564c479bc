"""Live Foxglove feed of a stream's results: a ``foxglove-sdk`` WebSocket server publishing, per final frame,
the confident points, the camera pose and transform, its calibration and its image, with Foxglove's built-in
schemas, on the topics and frame ids of the MCAP export (``core.ros_export``, docs/robotics.md).

Also the client-side decoding of a result into plain arrays (``LiveFrame``, ``FinalFrames``), shared with
``rerun_log``, and ``McapLog``: the same stream into an MCAP file of ROS 2 messages. All three sinks take the
stream's messages through ``add(msg)``. No torch: only numpy, the protocol models and ``core.ros_export``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..core.ros_export import (
    CAMERA_FRAME,
    DEFAULT_TOPICS,
    MAP_FRAME,
    McapRosWriter,
    Topics,
    confident_points,
    encode_jpeg,
    intrinsics_matrix,
    rotation_to_quaternion,
)
from ..server.encoding import decode_map, pose_matrix
from ..server.protocol import FinishedMsg, FrameData, ResultMsg


@dataclass
class LiveFrame:
    """One final frame of a stream, decoded: confident points in the world frame, pose, intrinsics, image."""

    index: int  # frame index in the stream
    seq: int  # the client's seq of the frame
    stamp: float  # capture time in seconds (the client's ts, else the time it was received)
    xyz: np.ndarray  # [M, 3] float32, world frame (= first camera, OpenCV axes)
    rgb: np.ndarray  # [M, 3] uint8
    conf: np.ndarray  # [M] float32
    c2w: np.ndarray | None  # [4, 4] camera-to-world; None where the pose is invalid
    focal: float | None  # pixels at size × size
    image: np.ndarray | None  # [size, size, 3] uint8: the image the model saw ('full' maps only)
    size: int = 224

    @property
    def intrinsics(self) -> np.ndarray | None:
        return None if self.focal is None else intrinsics_matrix(self.focal, self.size)


def live_frame(frame: FrameData, stamp: float, conf_thresh: float = 1e-3, stride: int = 1) -> LiveFrame:
    """A final (or preview) ``FrameData`` of either map encoding → ``LiveFrame``. ``full`` maps are filtered
    with ``(conf − 1) / conf > conf_thresh`` and ``stride``; ``compact`` ones (already filtered by the server
    with the session's threshold) with ``conf_thresh`` again."""
    maps = decode_map(frame.map)
    if frame.map.encoding == "full":
        xyz, rgb, conf = confident_points(maps["pts3d"], maps["conf"], maps["colors"], conf_thresh, stride)
        image, size = maps["colors"], maps["conf"].shape[1]
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            keep = (maps["conf"] - 1) / maps["conf"] > conf_thresh
        xyz, rgb, conf = maps["points"][keep], maps["colors"][keep], maps["conf"][keep]
        image, size = None, 224
    c2w = pose_matrix(frame.pose) if frame.pose.valid else None
    return LiveFrame(frame.index, frame.seq, stamp, xyz, rgb, conf, c2w, frame.focal, image, size)


class FinalFrames:
    """Turns the stream's messages into ``LiveFrame``s of its finals, with their capture times: a result
    carries the final of the frame before it, whose ``ts`` arrived with that frame's own result."""

    def __init__(self, conf_thresh: float = 1e-3, stride: int = 1):
        self.conf_thresh, self.stride = conf_thresh, stride
        self._stamps: dict[int, float] = {}

    def __call__(self, msg) -> LiveFrame | None:
        if isinstance(msg, ResultMsg) and msg.ts is not None:
            self._stamps[msg.seq] = msg.ts
        final = msg.final if isinstance(msg, (ResultMsg, FinishedMsg)) else None
        if final is None:
            return None
        stamp = self._stamps.pop(final.seq, None)
        return live_frame(final, time.time() if stamp is None else stamp, self.conf_thresh, self.stride)


def _timestamp(stamp_s: float):
    from foxglove.messages import Timestamp

    ns = round(stamp_s * 1e9)
    return Timestamp(ns // 1_000_000_000, ns % 1_000_000_000)


def _cloud_fields():
    """x, y, z float32; red, green, blue, alpha uint8 (Foxglove colours by these); confidence float32."""
    from foxglove.messages import PackedElementField as Field
    from foxglove.messages import PackedElementFieldNumericType as T

    names = [
        ("x", 0, T.Float32),
        ("y", 4, T.Float32),
        ("z", 8, T.Float32),
        ("red", 12, T.Uint8),
        ("green", 13, T.Uint8),
        ("blue", 14, T.Uint8),
        ("alpha", 15, T.Uint8),
        ("confidence", 16, T.Float32),
    ]
    return [Field(name=n, offset=o, type=t) for n, o, t in names]


CLOUD_STRIDE = 20  # bytes per point of the feed's PointCloud


def cloud_bytes(xyz: np.ndarray, rgb: np.ndarray, conf: np.ndarray) -> bytes:
    """Packed points in the layout of ``_cloud_fields``."""
    rec = np.empty(len(xyz), dtype=[("xyz", "<f4", 3), ("rgba", "u1", 4), ("confidence", "<f4")])
    rec["xyz"], rec["rgba"][:, :3], rec["rgba"][:, 3], rec["confidence"] = xyz, rgb, 255, conf
    return rec.tobytes()


class FoxgloveFeed:
    """A Foxglove WebSocket server (``ws://host:port``; open it in Foxglove with *Open connection*) publishing
    every final frame fed to ``add``:

    - ``topics.points``: ``foxglove.PointCloud`` in ``map``
    - ``topics.pose``: ``foxglove.PoseInFrame`` (the camera in ``map``)
    - ``topics.tf``: ``foxglove.FrameTransforms`` (``map`` → ``camera_optical``)
    - ``topics.camera_info``: ``foxglove.CameraCalibration`` (224×224 pinhole)
    - ``topics.image``: ``foxglove.CompressedImage`` (JPEG of the model's input, or the original frame)

    >>> with FoxgloveFeed(port=8765) as feed:
    ...     async for msg in stream(url, frames, settings={"encoding": "full"}):
    ...         feed.add(msg)
    """

    def __init__(
        self,
        port: int = 8765,
        host: str = "127.0.0.1",
        *,
        conf_thresh: float = 1e-3,
        stride: int = 1,
        topics: Topics = DEFAULT_TOPICS,
        map_frame: str = MAP_FRAME,
        camera_frame: str = CAMERA_FRAME,
        name: str = "spann3r",
    ):
        import foxglove
        from foxglove import channels

        self.context = foxglove.Context()  # our own: the feed's channels go to its server only
        self.server = foxglove.start_server(name=name, host=host, port=port, context=self.context)
        self.map_frame, self.camera_frame = map_frame, camera_frame
        self.finals = FinalFrames(conf_thresh, stride)
        ctx = self.context
        self.points = channels.PointCloudChannel(topics.points, context=ctx)
        self.pose = channels.PoseInFrameChannel(topics.pose, context=ctx)
        self.tf = channels.FrameTransformsChannel(topics.tf, context=ctx)
        self.camera_info = channels.CameraCalibrationChannel(topics.camera_info, context=ctx)
        self.image = channels.CompressedImageChannel(topics.image, context=ctx)
        self.published = 0

    @property
    def port(self) -> int:
        """The port the server listens on (the one asked for, or the system's choice for port 0)."""
        return self.server.port

    def __enter__(self) -> FoxgloveFeed:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, msg, image: bytes | None = None) -> LiveFrame | None:
        """Feed any message of the stream; a final frame in it is published (and returned). ``image``: the
        original frame's JPEG bytes, if the caller kept them."""
        frame = self.finals(msg)
        if frame is not None:
            self.add_frame(frame, image)
        return frame

    def add_frame(self, frame: LiveFrame, image: bytes | None = None) -> None:
        """Publish one decoded final frame (``image``: the original frame's JPEG bytes, default the model's)."""
        from foxglove.messages import (
            CameraCalibration,
            CompressedImage,
            FrameTransform,
            FrameTransforms,
            PointCloud,
            Pose,
            PoseInFrame,
            Quaternion,
            Vector3,
        )

        ts, log_time = _timestamp(frame.stamp), round(frame.stamp * 1e9)
        self.points.log(
            PointCloud(
                timestamp=ts,
                frame_id=self.map_frame,
                point_stride=CLOUD_STRIDE,
                fields=_cloud_fields(),
                data=cloud_bytes(frame.xyz, frame.rgb, frame.conf),
            ),
            log_time=log_time,
        )
        if frame.c2w is not None:
            x, y, z, w = rotation_to_quaternion(frame.c2w[:3, :3])
            translation = Vector3(**dict(zip("xyz", (float(v) for v in frame.c2w[:3, 3]))))
            rotation = Quaternion(x=x, y=y, z=z, w=w)
            self.pose.log(
                PoseInFrame(
                    timestamp=ts, frame_id=self.map_frame, pose=Pose(position=translation, orientation=rotation)
                ),
                log_time=log_time,
            )
            self.tf.log(
                FrameTransforms(
                    transforms=[
                        FrameTransform(
                            timestamp=ts,
                            parent_frame_id=self.map_frame,
                            child_frame_id=self.camera_frame,
                            translation=translation,
                            rotation=rotation,
                        )
                    ]
                ),
                log_time=log_time,
            )
        if frame.intrinsics is not None:
            k = frame.intrinsics
            p = np.hstack([k, np.zeros((3, 1))])
            self.camera_info.log(
                CameraCalibration(
                    timestamp=ts,
                    frame_id=self.camera_frame,
                    width=frame.size,
                    height=frame.size,
                    distortion_model="plumb_bob",
                    D=[0.0] * 5,
                    K=k.reshape(-1).tolist(),
                    R=np.eye(3).reshape(-1).tolist(),
                    P=p.reshape(-1).tolist(),
                ),
                log_time=log_time,
            )
        if image is None and frame.image is not None:
            image = encode_jpeg(frame.image)
        if image is not None:
            self.image.log(
                CompressedImage(timestamp=ts, frame_id=self.camera_frame, data=image, format="jpeg"), log_time=log_time
            )
        self.published += 1

    def close(self) -> None:
        self.server.stop()


class McapLog:
    """A stream's final frames into an MCAP file of ROS 2 messages (``core.ros_export``: same topics and frame
    ids as the feed), stamped with the client's capture times."""

    def __init__(self, output, *, conf_thresh: float = 1e-3, stride: int = 1, topics: Topics = DEFAULT_TOPICS):
        self.finals = FinalFrames(conf_thresh, stride)
        self.writer = McapRosWriter(output, topics=topics)

    def __enter__(self) -> McapLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, msg, image: bytes | None = None) -> LiveFrame | None:
        """Feed any message of the stream; a final frame in it is written (and returned). ``image``: the
        original frame's JPEG bytes, if the caller kept them (default: the image the model saw)."""
        frame = self.finals(msg)
        if frame is not None:
            self.add_frame(frame, image)
        return frame

    def add_frame(self, frame: LiveFrame, image: bytes | None = None) -> None:
        """Write one decoded final frame."""
        if image is None and frame.image is not None:
            image = encode_jpeg(frame.image)
        self.writer.add_points(
            frame.xyz,
            frame.rgb,
            frame.conf,
            frame.c2w,
            intrinsics=frame.intrinsics,
            size=(frame.size, frame.size),
            stamp=frame.stamp,
            image=image,
        )

    def close(self) -> None:
        self.writer.close()

"""ROS 2 messages of a reconstruction in an MCAP file, written with ``mcap`` + ``mcap-ros2-support`` (no ROS install).

Per frame, on these topics (frame ids after REP-103/105: ``map`` is the world frame = the first camera's optical
frame; the camera frame ``camera_optical`` has x right, y down, z forward, which is already our pointmaps' axes):

- ``/spann3r/points`` (sensor_msgs/msg/PointCloud2): confident points in ``map``: x, y, z, rgb, confidence
- ``/spann3r/camera/pose`` (geometry_msgs/msg/PoseStamped): the camera pose (camera-to-world) in ``map``
- ``/tf`` (tf2_msgs/msg/TFMessage): ``map`` → ``camera_optical``
- ``/spann3r/camera/camera_info`` (sensor_msgs/msg/CameraInfo): K at the model resolution (224×224)
- ``/spann3r/camera/image/compressed`` (sensor_msgs/msg/CompressedImage): the input image (JPEG)

Pose and TF are left out for frames whose pose is invalid (PnP failed); points are always in ``map``. Stamps are
the client's capture times when given, else ``start_time + index / rate``. Pure numpy + mcap: no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

MAP_FRAME = "map"
CAMERA_FRAME = "camera_optical"
MODEL_SIZE = 224


@dataclass(frozen=True)
class Topics:
    """Topic names of the export (override to put several cameras side by side)."""

    points: str = "/spann3r/points"
    pose: str = "/spann3r/camera/pose"
    tf: str = "/tf"
    camera_info: str = "/spann3r/camera/camera_info"
    image: str = "/spann3r/camera/image/compressed"


DEFAULT_TOPICS = Topics()

# ROS 2 message definitions (the .msg files of ROS 2 Humble, comments dropped), in the concatenated form that
# rosbag2 stores as an MCAP schema: the type itself, then each dependency after a separator line.
_SEP = "=" * 80 + "\n"
_HEADER = "MSG: std_msgs/Header\nbuiltin_interfaces/Time stamp\nstring frame_id\n"
_TIME = "MSG: builtin_interfaces/Time\nint32 sec\nuint32 nanosec\n"
_POINT_FIELD = (
    "MSG: sensor_msgs/PointField\nuint8 INT8=1\nuint8 UINT8=2\nuint8 INT16=3\nuint8 UINT16=4\nuint8 INT32=5\n"
    "uint8 UINT32=6\nuint8 FLOAT32=7\nuint8 FLOAT64=8\nstring name\nuint32 offset\nuint8 datatype\nuint32 count\n"
)
_POSE = "MSG: geometry_msgs/Pose\ngeometry_msgs/Point position\ngeometry_msgs/Quaternion orientation\n"
_POINT = "MSG: geometry_msgs/Point\nfloat64 x\nfloat64 y\nfloat64 z\n"
_QUATERNION = "MSG: geometry_msgs/Quaternion\nfloat64 x\nfloat64 y\nfloat64 z\nfloat64 w\n"
_TRANSFORM_STAMPED = (
    "MSG: geometry_msgs/TransformStamped\nstd_msgs/Header header\nstring child_frame_id\n"
    "geometry_msgs/Transform transform\n"
)
_TRANSFORM = "MSG: geometry_msgs/Transform\ngeometry_msgs/Vector3 translation\ngeometry_msgs/Quaternion rotation\n"
_VECTOR3 = "MSG: geometry_msgs/Vector3\nfloat64 x\nfloat64 y\nfloat64 z\n"
_ROI = (
    "MSG: sensor_msgs/RegionOfInterest\nuint32 x_offset\nuint32 y_offset\nuint32 height\nuint32 width\n"
    "bool do_rectify\n"
)


def _msgdef(*parts: str) -> str:
    return _SEP.join(parts)


MSGDEFS: dict[str, str] = {
    "sensor_msgs/msg/PointCloud2": _msgdef(
        "std_msgs/Header header\nuint32 height\nuint32 width\nsensor_msgs/PointField[] fields\nbool is_bigendian\n"
        "uint32 point_step\nuint32 row_step\nuint8[] data\nbool is_dense\n",
        _HEADER,
        _TIME,
        _POINT_FIELD,
    ),
    "geometry_msgs/msg/PoseStamped": _msgdef(
        "std_msgs/Header header\ngeometry_msgs/Pose pose\n", _HEADER, _TIME, _POSE, _POINT, _QUATERNION
    ),
    "tf2_msgs/msg/TFMessage": _msgdef(
        "geometry_msgs/TransformStamped[] transforms\n",
        _TRANSFORM_STAMPED,
        _HEADER,
        _TIME,
        _TRANSFORM,
        _VECTOR3,
        _QUATERNION,
    ),
    "sensor_msgs/msg/CameraInfo": _msgdef(
        "std_msgs/Header header\nuint32 height\nuint32 width\nstring distortion_model\nfloat64[] d\nfloat64[9] k\n"
        "float64[9] r\nfloat64[12] p\nuint32 binning_x\nuint32 binning_y\nsensor_msgs/RegionOfInterest roi\n",
        _HEADER,
        _TIME,
        _ROI,
    ),
    "sensor_msgs/msg/CompressedImage": _msgdef("std_msgs/Header header\nstring format\nuint8[] data\n", _HEADER, _TIME),
}

# PointCloud2 layout: five little-endian float32 per point (PointField.FLOAT32 = 7)
POINT_FIELDS = ("x", "y", "z", "rgb", "confidence")
POINT_STEP = 4 * len(POINT_FIELDS)
_FLOAT32 = 7


# ------------------------------------------------------------------------------------------------ geometry


def confident_points(
    pts3d: np.ndarray, conf: np.ndarray, colors: np.ndarray, conf_thresh: float, stride: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame's maps [H, W, ...] → its points passing the demo's filter ``(conf − 1) / conf > conf_thresh``
    with finite coordinates, row-major. Returns (xyz float32 [M, 3], rgb uint8 [M, 3], conf float32 [M])."""
    pts3d, conf, colors = (np.asarray(a)[::stride, ::stride] for a in (pts3d, conf, colors))
    with np.errstate(divide="ignore", invalid="ignore"):
        keep = ((conf - 1) / conf > conf_thresh) & np.isfinite(pts3d).all(-1) & np.isfinite(conf)
    return pts3d[keep].astype(np.float32), colors[keep].astype(np.uint8), conf[keep].astype(np.float32)


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """uint8 [M, 3] → float32 [M] whose bits are 0x00RRGGBB, the packed ``rgb`` field of ROS / PCL clouds."""
    rgb = np.asarray(rgb, dtype=np.uint32)
    return ((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]).astype("<u4").view("<f4")


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """Inverse of ``pack_rgb``."""
    bits = np.asarray(packed, dtype="<f4").view("<u4")
    return np.stack([(bits >> 16) & 0xFF, (bits >> 8) & 0xFF, bits & 0xFF], -1).astype(np.uint8)


def point_records(xyz: np.ndarray, rgb: np.ndarray, conf: np.ndarray) -> bytes:
    """The ``data`` of a PointCloud2 with ``POINT_FIELDS`` (x, y, z, rgb, confidence), little-endian."""
    rec = np.empty((len(xyz), len(POINT_FIELDS)), dtype="<f4")
    rec[:, :3] = xyz
    rec[:, 3] = pack_rgb(rgb)
    rec[:, 4] = conf
    return rec.tobytes()


def rotation_to_quaternion(r: np.ndarray) -> tuple[float, float, float, float]:
    """3×3 rotation → unit quaternion (x, y, z, w), w ≥ 0 (Shepperd's method: stable for every rotation)."""
    r = np.asarray(r, dtype=np.float64)
    trace = np.trace(r)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = np.array([(r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, s / 4])
    else:
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + r[i, i] - r[j, j] - r[k, k])
        q = np.empty(4)
        q[i], q[j], q[k] = s / 4, (r[j, i] + r[i, j]) / s, (r[k, i] + r[i, k]) / s
        q[3] = (r[k, j] - r[j, k]) / s
    q /= np.linalg.norm(q)
    x, y, z, w = (float(v) for v in (q if q[3] >= 0 else -q))
    return x, y, z, w


def intrinsics_matrix(focal: float, size: int = MODEL_SIZE) -> np.ndarray:
    """K of the model's square image: focal in pixels, principal point at the image centre (as core.camera)."""
    return np.array([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1]], dtype=np.float64)


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """RGB uint8 [H, W, 3] → JPEG bytes (OpenCV)."""
    import cv2

    ok, buf = cv2.imencode(
        ".jpg",
        cv2.cvtColor(np.ascontiguousarray(rgb, np.uint8), cv2.COLOR_RGB2BGR),
        [cv2.IMWRITE_JPEG_QUALITY, quality],
    )
    if not ok:
        raise ValueError(f"cannot encode a {np.shape(rgb)} image as JPEG")
    return buf.tobytes()


# ------------------------------------------------------------------------------------------------ messages


def ros_time(stamp_s: float) -> dict[str, int]:
    """Seconds → builtin_interfaces/Time."""
    ns = round(stamp_s * 1e9)
    return {"sec": ns // 1_000_000_000, "nanosec": ns % 1_000_000_000}


def _header(stamp_s: float, frame_id: str) -> dict[str, Any]:
    return {"stamp": ros_time(stamp_s), "frame_id": frame_id}


def point_cloud_msg(
    xyz: np.ndarray, rgb: np.ndarray, conf: np.ndarray, stamp_s: float, frame_id: str = MAP_FRAME
) -> dict[str, Any]:
    """sensor_msgs/PointCloud2: one unordered row of points (height 1), NaNs already removed (dense)."""
    fields = [{"name": name, "offset": 4 * i, "datatype": _FLOAT32, "count": 1} for i, name in enumerate(POINT_FIELDS)]
    return {
        "header": _header(stamp_s, frame_id),
        "height": 1,
        "width": len(xyz),
        "fields": fields,
        "is_bigendian": False,
        "point_step": POINT_STEP,
        "row_step": POINT_STEP * len(xyz),
        "data": point_records(xyz, rgb, conf),
        "is_dense": True,
    }


def _pose_parts(c2w: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    c2w = np.asarray(c2w, dtype=np.float64)
    x, y, z, w = rotation_to_quaternion(c2w[:3, :3])
    tx, ty, tz = (float(v) for v in c2w[:3, 3])
    return {"x": tx, "y": ty, "z": tz}, {"x": x, "y": y, "z": z, "w": w}


def pose_stamped_msg(c2w: np.ndarray, stamp_s: float, frame_id: str = MAP_FRAME) -> dict[str, Any]:
    """geometry_msgs/PoseStamped: the camera (its optical frame) in ``frame_id``."""
    position, orientation = _pose_parts(c2w)
    return {"header": _header(stamp_s, frame_id), "pose": {"position": position, "orientation": orientation}}


def tf_msg(c2w: np.ndarray, stamp_s: float, parent: str = MAP_FRAME, child: str = CAMERA_FRAME) -> dict[str, Any]:
    """tf2_msgs/TFMessage with one transform parent → child (the child's pose in the parent: camera-to-world)."""
    translation, rotation = _pose_parts(c2w)
    return {
        "transforms": [
            {
                "header": _header(stamp_s, parent),
                "child_frame_id": child,
                "transform": {"translation": translation, "rotation": rotation},
            }
        ]
    }


def camera_info_msg(
    k: np.ndarray, stamp_s: float, frame_id: str = CAMERA_FRAME, width: int = MODEL_SIZE, height: int = MODEL_SIZE
) -> dict[str, Any]:
    """sensor_msgs/CameraInfo of an undistorted pinhole camera with intrinsics ``k`` (3×3)."""
    k = np.asarray(k, dtype=np.float64)
    p = np.zeros((3, 4))
    p[:, :3] = k
    return {
        "header": _header(stamp_s, frame_id),
        "height": height,
        "width": width,
        "distortion_model": "plumb_bob",
        "d": [0.0] * 5,
        "k": k.reshape(-1).tolist(),
        "r": np.eye(3).reshape(-1).tolist(),
        "p": p.reshape(-1).tolist(),
        "binning_x": 0,
        "binning_y": 0,
        "roi": {"x_offset": 0, "y_offset": 0, "height": 0, "width": 0, "do_rectify": False},
    }


def compressed_image_msg(
    data: bytes, stamp_s: float, fmt: str = "jpeg", frame_id: str = CAMERA_FRAME
) -> dict[str, Any]:
    """sensor_msgs/CompressedImage (``format``: jpeg | png)."""
    return {"header": _header(stamp_s, frame_id), "format": fmt, "data": bytes(data)}


# ------------------------------------------------------------------------------------------------ writer


class McapRosWriter:
    """Writes frames of a reconstruction as ROS 2 messages into an MCAP file, one ``add_frame`` at a time.

    >>> with McapRosWriter("out.mcap", conf_thresh=1e-3) as w:
    ...     w.add_frame(pts3d, conf, colors, c2w, focal=focal, stamp=t)
    """

    def __init__(
        self,
        output: str | Path | IO[bytes],
        *,
        conf_thresh: float = 1e-3,
        stride: int = 1,
        rate: float = 10.0,
        start_time: float = 0.0,
        topics: Topics = DEFAULT_TOPICS,
        map_frame: str = MAP_FRAME,
        camera_frame: str = CAMERA_FRAME,
        jpeg_quality: int = 90,
    ):
        from mcap_ros2.writer import Writer

        stream: IO[bytes]
        self._file: IO[bytes] | None = None
        if isinstance(output, (str, Path)):
            stream = self._file = open(output, "wb")  # noqa: SIM115 (kept open across add_frame calls; close())
        else:
            stream = output
        self._writer = Writer(stream)
        self._schemas = {name: self._writer.register_msgdef(name, text) for name, text in MSGDEFS.items()}
        self.conf_thresh, self.stride, self.rate, self.start_time = conf_thresh, stride, rate, start_time
        self.topics, self.map_frame, self.camera_frame = topics, map_frame, camera_frame
        self.jpeg_quality = jpeg_quality
        self.frames = 0
        self._closed = False

    def __enter__(self) -> McapRosWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, topic: str, datatype: str, msg: dict, stamp_s: float) -> None:
        ns = ros_time(stamp_s)
        self._writer.write_message(
            topic,
            self._schemas[datatype],
            msg,
            log_time=ns["sec"] * 1_000_000_000 + ns["nanosec"],
            sequence=self.frames,
        )

    def add_frame(
        self,
        pts3d: np.ndarray,
        conf: np.ndarray,
        colors: np.ndarray,
        c2w: np.ndarray | None = None,
        *,
        pose_valid: bool | None = None,
        focal: float | None = None,
        intrinsics: np.ndarray | None = None,
        stamp: float | None = None,
        image: bytes | None = None,
        image_format: str = "jpeg",
    ) -> None:
        """One frame from its maps [H, W, ...] in the world frame (filtered here with ``conf_thresh`` and
        ``stride``), camera-to-world ``c2w`` (None / NaN / ``pose_valid`` false: no pose or TF), ``focal``
        (pixels at H×W) or 3×3 ``intrinsics``, capture time ``stamp`` in seconds (default:
        ``start_time + index / rate``), and the original frame's encoded bytes ``image`` (default: ``colors``
        as JPEG)."""
        xyz, rgb, c = confident_points(pts3d, conf, colors, self.conf_thresh, self.stride)
        h, w = np.shape(conf)[:2]
        k = intrinsics if intrinsics is not None else intrinsics_matrix(focal, w) if focal is not None else None
        if c2w is not None and pose_valid is False:
            c2w = None
        if image is None:
            image, image_format = encode_jpeg(colors, self.jpeg_quality), "jpeg"
        self.add_points(
            xyz, rgb, c, c2w, intrinsics=k, size=(w, h), stamp=stamp, image=image, image_format=image_format
        )

    def add_points(
        self,
        xyz: np.ndarray,
        rgb: np.ndarray,
        conf: np.ndarray | None,
        c2w: np.ndarray | None = None,
        *,
        intrinsics: np.ndarray | None = None,
        size: tuple[int, int] = (MODEL_SIZE, MODEL_SIZE),
        stamp: float | None = None,
        image: bytes | None = None,
        image_format: str = "jpeg",
    ) -> None:
        """One frame from points already chosen (xyz float32 [M, 3] in the world frame, rgb uint8 [M, 3],
        confidence [M] or None where unknown, written as NaN; e.g. a stream's ``compact`` maps, or a session's
        export buffer): written as they are. ``size``: (width, height) of the image ``intrinsics`` belong to; no
        image message without ``image``."""
        if conf is None:
            conf = np.full(len(xyz), np.nan, np.float32)
        stamp_s = self.start_time + self.frames / self.rate if stamp is None else float(stamp)
        self._write(
            self.topics.points,
            "sensor_msgs/msg/PointCloud2",
            point_cloud_msg(xyz, rgb, conf, stamp_s, self.map_frame),
            stamp_s,
        )
        if c2w is not None and np.isfinite(c2w).all():
            self._write(
                self.topics.pose,
                "geometry_msgs/msg/PoseStamped",
                pose_stamped_msg(c2w, stamp_s, self.map_frame),
                stamp_s,
            )
            self._write(
                self.topics.tf,
                "tf2_msgs/msg/TFMessage",
                tf_msg(c2w, stamp_s, self.map_frame, self.camera_frame),
                stamp_s,
            )
        if intrinsics is not None:
            self._write(
                self.topics.camera_info,
                "sensor_msgs/msg/CameraInfo",
                camera_info_msg(intrinsics, stamp_s, self.camera_frame, *size),
                stamp_s,
            )
        if image is not None:
            self._write(
                self.topics.image,
                "sensor_msgs/msg/CompressedImage",
                compressed_image_msg(image, stamp_s, image_format, self.camera_frame),
                stamp_s,
            )
        self.frames += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.finish()
        if self._file is not None:
            self._file.close()


def write_mcap(
    output: str | Path | IO[bytes],
    arrays: Mapping[str, np.ndarray],
    *,
    conf_thresh: float = 1e-3,
    stride: int = 1,
    stamps: Sequence[float] | None = None,
    rate: float = 10.0,
    start_time: float = 0.0,
    images: Sequence[bytes] | None = None,
    topics: Topics = DEFAULT_TOPICS,
) -> int:
    """The arrays of ``OUT.npz`` (pts3d, conf, colors, poses, pose_valid, focal; see README) → an MCAP file.
    ``stamps``: capture time of each frame in seconds (default ``start_time + index / rate``); ``images``: the
    original frames' JPEG bytes (default: ``colors``). Returns the number of frames written."""
    pts3d, conf, colors = arrays["pts3d"], arrays["conf"], arrays["colors"]
    n = len(pts3d)
    poses = arrays.get("poses")
    valid = arrays.get("pose_valid")
    focal = float(arrays["focal"]) if "focal" in arrays else None
    with McapRosWriter(
        output, conf_thresh=conf_thresh, stride=stride, rate=rate, start_time=start_time, topics=topics
    ) as writer:
        for i in range(n):
            writer.add_frame(
                pts3d[i],
                conf[i],
                colors[i],
                None if poses is None else poses[i],
                pose_valid=None if valid is None else bool(valid[i]),
                focal=focal,
                stamp=None if stamps is None else stamps[i],
                image=None if images is None else images[i],
            )
    return n

"""A stream's results in rerun (``rerun-sdk``): per final frame the confident points with their colours, the camera
(pose and pinhole intrinsics) and the image it saw, to an ``.rrd`` file or to a running viewer.

Entity paths (world = the first camera, OpenCV axes: ``rr.ViewCoordinates.RDF``, x right, y down, z forward):

- ``world``: view coordinates (static)
- ``world/points/NNNNNN``: ``rr.Points3D`` of frame NNNNNN (one entity per frame, so the whole reconstruction
  stays visible; ``accumulate=False`` logs every frame to ``world/points`` instead), confidence as ``AnyValues``
- ``world/camera``: ``rr.Transform3D`` (camera-to-world; not logged where the pose is invalid) and ``rr.Pinhole``
- ``world/camera/image``: the image (``rr.EncodedImage`` of the original frame's bytes, else ``rr.Image``)

Timelines: ``frame`` (the frame index) and ``capture_time`` (the client's ``ts``). No torch.
"""

from __future__ import annotations

from pathlib import Path

from .foxglove_feed import FinalFrames, LiveFrame


class RerunLog:
    """Log a stream's final frames to rerun: ``path`` (an .rrd file) or ``connect`` (a viewer's gRPC URL, e.g.
    ``rerun+http://127.0.0.1:9876/proxy``; ``""`` for the default one).

    >>> with RerunLog(path="run.rrd") as log:
    ...     async for msg in stream(url, frames, settings={"encoding": "full"}):
    ...         log.add(msg)
    """

    def __init__(
        self,
        *,
        path: str | Path | None = None,
        connect: str | None = None,
        application_id: str = "spann3r",
        recording_id: str | None = None,
        conf_thresh: float = 1e-3,
        stride: int = 1,
        accumulate: bool = True,
    ):
        import rerun as rr

        if (path is None) == (connect is None):
            raise ValueError("give exactly one of path (an .rrd file) and connect (a viewer URL)")
        self.rr = rr
        self.rec = rr.RecordingStream(application_id, recording_id=recording_id)
        if path is not None:
            self.rec.save(path)
        else:
            self.rec.connect_grpc(connect or None)
        self.rec.log("world", rr.ViewCoordinates.RDF, static=True)
        self.finals = FinalFrames(conf_thresh, stride)
        self.accumulate = accumulate
        self.logged = 0

    def __enter__(self) -> RerunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, msg, image: bytes | None = None) -> LiveFrame | None:
        """Feed any message of the stream; a final frame in it is logged (and returned). ``image``: the original
        frame's JPEG bytes, if the caller kept them."""
        frame = self.finals(msg)
        if frame is not None:
            self.add_frame(frame, image)
        return frame

    def add_frame(self, frame: LiveFrame, image: bytes | None = None) -> None:
        """Log one decoded final frame (``image``: the original frame's JPEG bytes, default the model's)."""
        rr, rec = self.rr, self.rec
        rec.set_time("frame", sequence=frame.index)
        rec.set_time("capture_time", timestamp=frame.stamp)
        points = f"world/points/{frame.index:06d}" if self.accumulate else "world/points"
        rec.log(points, rr.Points3D(frame.xyz, colors=frame.rgb), rr.AnyValues(confidence=frame.conf))
        if frame.c2w is not None:
            rec.log("world/camera", rr.Transform3D(translation=frame.c2w[:3, 3], mat3x3=frame.c2w[:3, :3]))
        if frame.intrinsics is not None:
            rec.log(
                "world/camera",
                rr.Pinhole(
                    image_from_camera=frame.intrinsics,
                    resolution=[frame.size, frame.size],
                    camera_xyz=rr.ViewCoordinates.RDF,
                ),
            )
        if image is not None:
            rec.log("world/camera/image", rr.EncodedImage(contents=image, media_type="image/jpeg"))
        elif frame.image is not None:
            rec.log("world/camera/image", rr.Image(frame.image))
        self.logged += 1

    def close(self) -> None:
        """Flush everything logged and close the sink (the .rrd file is complete after this)."""
        self.rec.flush()
        self.rec.disconnect()

"""rerun logging of a stream's finals, read back with rerun's own .rrd reader (``rerun.chunk.RrdReader``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import rerun as rr
from robotics_data import server_messages

from spann3r.client.rerun_log import RerunLog

pytestmark = pytest.mark.filterwarnings("ignore:RRD file has no footer")

CONF_THRESH = 0.01


def rows_by_entity(path) -> dict[str, list[dict]]:
    """entity path → its logged rows (column name → value of the row), over every chunk of the recording."""
    out: dict[str, list[dict]] = {}
    for chunk in rr.chunk.RrdReader(path).stream():
        batch = chunk.to_record_batch()
        columns = {
            name: col.cast(pa.int64()) if pa.types.is_timestamp(col.type) else col  # ns since the epoch
            for name, col in zip(batch.schema.names, batch.columns)
        }
        for row in pa.table(columns).to_pylist():
            out.setdefault(chunk.entity_path, []).append(row)
    return out


def merged_by_frame(rows: list[dict]) -> dict[int, dict]:
    """Rows of one entity (components may come in separate chunks) → frame index → its components."""
    out: dict[int, dict] = {}
    for row in rows:
        out.setdefault(row["frame"], {}).update({k: v for k, v in row.items() if v is not None})
    return out


def test_rrd_holds_points_cameras_and_images_of_every_frame(tmp_path, run_arrays):
    n = len(run_arrays["pts3d"])
    stamps = [1_700_000_000.0 + 0.1 * i for i in range(n)]
    path = tmp_path / "run.rrd"
    with RerunLog(path=path, conf_thresh=CONF_THRESH) as log:
        frames = [f for m in server_messages(run_arrays, stamps) if (f := log.add(m)) is not None]
    assert log.logged == n and [f.index for f in frames] == list(range(n))

    entities = rows_by_entity(path)
    points = {f"/world/points/{i:06d}" for i in range(n)}
    assert points | {"/world", "/world/camera", "/world/camera/image"} <= set(entities)
    rdf = rr.components.ViewCoordinates.RDF.as_arrow_array().to_pylist()  # OpenCV: x right, y down, z forward
    assert [row["ViewCoordinates:xyz"] for row in entities["/world"]] == [rdf]
    for i in range(n):
        (row,) = entities[f"/world/points/{i:06d}"]
        conf = run_arrays["conf"][i]
        keep = ((conf - 1) / conf > CONF_THRESH) & np.isfinite(run_arrays["pts3d"][i]).all(-1)
        np.testing.assert_array_equal(np.array(row["Points3D:positions"], np.float32), run_arrays["pts3d"][i][keep])
        rgba = np.array(row["Points3D:colors"], np.uint32)
        np.testing.assert_array_equal(
            np.stack([rgba >> 24, (rgba >> 16) & 255, (rgba >> 8) & 255], -1), run_arrays["colors"][i][keep]
        )
        np.testing.assert_array_equal(np.array(row["confidence"], np.float32), conf[keep])
        assert (row["capture_time"], row["frame"]) == (round(stamps[i] * 1e9), i)

    camera = merged_by_frame(entities["/world/camera"])
    assert sorted(camera) == list(range(n))
    size, f = run_arrays["conf"].shape[1], float(run_arrays["focal"])
    for i, row in camera.items():
        k = np.array(row["Pinhole:image_from_camera"][0]).reshape(3, 3).T  # rerun stores matrices column-major
        np.testing.assert_allclose(k, [[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]])
        assert row["Pinhole:resolution"][0] == [size, size]
        if run_arrays["pose_valid"][i]:
            c2w = run_arrays["poses"][i]
            np.testing.assert_allclose(row["Transform3D:translation"][0], c2w[:3, 3], atol=1e-6)
            rot = np.array(row["Transform3D:mat3x3"][0]).reshape(3, 3).T
            np.testing.assert_allclose(rot, c2w[:3, :3], atol=1e-6)
        else:
            assert "Transform3D:translation" not in row
    assert sorted(merged_by_frame(entities["/world/camera/image"])) == list(range(n))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def entities_so_far(path: Path) -> set[str]:
    """Entity paths in an .rrd that rerun is still writing (no footer yet; nothing until its first store)."""
    try:
        return set(rows_by_entity(path))
    except ValueError:  # "No recording store found in RRD file"
        return set()
    except RuntimeError as exc:  # read while rerun writes: the file ends inside a frame; read again later
        if "exceeds file size" not in str(exc):
            raise
        return set()


def test_logging_to_a_running_viewer(tmp_path, run_arrays):
    """``connect``: the frames reach a rerun gRPC endpoint (the ``rerun`` CLI, saving what it receives)."""
    port, received = free_port(), tmp_path / "received.rrd"
    viewer = subprocess.Popen(
        [str(Path(sys.executable).parent / "rerun"), "--port", str(port), "--save", str(received)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # its own process group: the CLI wrapper runs a binary
    try:
        deadline = time.monotonic() + 30
        while not received.exists():  # created once the endpoint listens
            assert viewer.poll() is None and time.monotonic() < deadline, "rerun did not start"
            time.sleep(0.1)
        stamps = [100.0 + i for i in range(len(run_arrays["pts3d"]))]
        with RerunLog(connect=f"rerun+http://127.0.0.1:{port}/proxy", conf_thresh=CONF_THRESH) as log:
            for msg in server_messages(run_arrays, stamps):
                log.add(msg)
        want = {f"/world/points/{i:06d}" for i in range(len(stamps))}
        while not want <= entities_so_far(received):
            assert time.monotonic() < deadline, "the frames did not arrive"
            time.sleep(0.2)
    finally:
        os.killpg(viewer.pid, signal.SIGTERM)
        viewer.wait(10)

"""A session's reconstruction as files: fused cloud (PLY, GLB), trajectory JSON, nerfstudio transforms.json."""

from __future__ import annotations

from enum import Enum

from ..core.export import glb_bytes, ply_bytes, trajectory_json, transforms_json
from .sessions import ExportBuffer


class ExportKind(str, Enum):
    ply = "cloud.ply"
    glb = "cloud.glb"
    trajectory = "trajectory.json"
    transforms = "transforms.json"


MEDIA_TYPES = {ExportKind.ply: "application/octet-stream", ExportKind.glb: "model/gltf-binary",
               ExportKind.trajectory: "application/json", ExportKind.transforms: "application/json"}


def export_bytes(export: ExportBuffer, focal: float, kind: ExportKind, image_paths: list[str] | None = None
                 ) -> bytes:
    """Runs in a thread (GLB export of millions of points takes a while). ``image_paths``: transforms.json's
    file_path per frame index (default images/frame_00000.png, ...)."""
    if kind in (ExportKind.ply, ExportKind.glb):
        xyz, rgb = export.cloud()
        return ply_bytes(xyz, rgb) if kind is ExportKind.ply else glb_bytes(xyz, rgb)
    c2w, valid = export.trajectory()
    if kind is ExportKind.trajectory:
        return trajectory_json(c2w, valid, focal).encode()
    return transforms_json(c2w, valid, focal, ply_file_path="cloud.ply", image_paths=image_paths).encode()

"""Reconstruction metrics as the paper reports them (accuracy, completion, normal consistency).

Datasets are read in the layouts the official evaluation reads, with its frame sampling:
- **7-Scenes** (SimpleRecon's pre-processed copy): ``ROOT/<scene>/TestSplit.txt`` lists test sequences
  (``sequenceN`` → ``seq-0N``); ``ROOT/<scene>/seq-XX/frame-NNNNNN.{color.png, depth.proj.png, pose.txt}``,
  depth in millimetres (65535 = invalid), pose = camera-to-world 4×4, intrinsics (525, 525, 320, 240);
  every 20th frame.
- **Neural-RGBD**: ``ROOT/<scene>/images/img{i}.png``, ``depth/depth{i}.png`` (mm), ``poses.txt``
  (camera-to-world 4×4 matrices in OpenGL axes, stacked; a matrix whose first row holds ``nan`` becomes the
  identity), intrinsics (554.2562584220408, 554.2562584220408, 320, 240); every 40th frame.

Per frame (as the official data loader): depth / 1000, entries > 10 m or < 1 mm invalid; crop the largest
window centred on the principal point; scale by max(224/W, 224/H) + 1e-8 to (floor(W·s), floor(H·s)) —
image with Pillow LANCZOS, depth nearest-neighbour — then a centred 224×224 crop (offsets rounded half to
even); intrinsics follow; ground-truth points = depth back-projected and moved to world coordinates.

Per scene, with predictions in processing order (the first processed view's camera is their frame):
1. ground truth to the first view's camera; over the pixels with valid depth (all frames jointly),
   subtract from z the median z (torch's lower median) of the ground truth resp. the prediction;
2. scale the prediction by gt_scale / pred_scale, each the median distance of the points to their
   per-axis median (pred_scale clipped to [1e-3, 1e3]);
3. add the ground truth's median z back to both and move both to world coordinates with the first view's pose;
4. ICP point-to-point (Open3D, threshold 0.1 m for these datasets, identity start, default criteria) of the
   predicted cloud onto the ground truth; normals of both by Open3D's default estimate (30 neighbours);
5. accuracy = distances from predicted points to their nearest ground-truth point (mean, median);
   completion = the reverse; normal consistency = |n_gt · n_pred| of those nearest pairs (mean, median),
   for each direction; chamfer = (accuracy + completion) / 2.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .preprocess import RESOLUTION, PreparedFrame, read_image, to_model_input

log = logging.getLogger(__name__)


class EvalError(ValueError):
    """A dataset or prediction that cannot be evaluated. The message is user-facing."""


# ----------------------------------------------------------------------------- one ground-truth view
@dataclass
class GTView:
    name: str  # file name of the colour image
    frame: PreparedFrame  # model input (224×224) and its colours
    pts3d: np.ndarray  # [H, W, 3] float32 ground-truth points, world coordinates
    valid: np.ndarray  # [H, W] bool: valid depth
    c2w: np.ndarray  # [4, 4] float32 camera-to-world (OpenCV axes)
    intrinsics: np.ndarray  # [3, 3] float32 after crop and resize


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float32)


def crop_resize_rgbd(
    rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, size: int = RESOLUTION
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The official loader's crop and resize of an image, its depth map and intrinsics to size×size.

    rgb [H, W, 3] uint8, depth [H, W] float32, K [3, 3] → (rgb [size, size, 3], depth [size, size], K)."""
    H, W = depth.shape
    cx, cy = (int(v) for v in np.round(K[:2, 2]))
    mx, my = min(cx, W - cx), min(cy, H - cy)
    if not (mx > W / 5 and my > H / 5):
        raise EvalError(f"principal point ({cx}, {cy}) too far from the centre of a {W}x{H} image")
    left, top = cx - mx, cy - my
    rgb, depth = rgb[top : cy + my, left : cx + mx], depth[top : cy + my, left : cx + mx]
    K = K.astype(np.float64).copy()
    K[0, 2] -= left
    K[1, 2] -= top
    H, W = depth.shape
    if H > 1.1 * W:
        raise EvalError(f"portrait images ({W}x{H}) are not supported")
    # scale so that the size×size crop fits, then crop the centre
    s = max(size / W, size / H) + 1e-8
    new_w, new_h = math.floor(W * s), math.floor(H * s)
    rgb = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((new_w, new_h), Image.Resampling.LANCZOS))
    depth = cv2.resize(depth, (new_w, new_h), fx=s, fy=s, interpolation=cv2.INTER_NEAREST)
    # intrinsics of the rescale, in the pixel-centre convention (+0.5) the loader uses
    margin = np.array([W * s - new_w, H * s - new_h])
    K[:2, :] *= s
    K[:2, 2] += 0.5 * s - 0.5 * margin - 0.5
    off = np.array([new_w - size, new_h - size]) * 0.5
    left, top = (int(v) for v in np.round(off))
    rgb = rgb[top : top + size, left : left + size]
    depth = depth[top : top + size, left : left + size]
    K[0, 2] -= left
    K[1, 2] -= top
    return rgb.copy(), depth.copy(), K.astype(np.float32)


def depth_to_world(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """depth [H, W] (metres, 0 = invalid) → world points [H, W, 3] float32 and the valid mask [H, W]."""
    K = K.astype(np.float32)
    H, W = depth.shape
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    x = (u - K[0, 2]) * depth / K[0, 0]
    y = (v - K[1, 2]) * depth / K[1, 1]
    cam = np.stack((x, y, depth), axis=-1).astype(np.float32)
    world = cam @ c2w[:3, :3].T + c2w[:3, 3]
    world = world.astype(np.float32)
    valid = (depth > 0) & np.isfinite(world).all(axis=-1)
    return world, valid


def clean_depth(depth_mm: np.ndarray, invalid_value: int | None = None) -> np.ndarray:
    """uint16 depth in millimetres → float32 metres with the loader's validity rules (0 = invalid)."""
    depth = depth_mm.astype(np.float32)
    if invalid_value is not None:
        depth[depth_mm == invalid_value] = 0
    depth = np.nan_to_num(depth, nan=0.0) / 1000.0
    depth[(depth > 10) | (depth < 1e-3)] = 0
    return depth


def make_view(name: str, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> GTView:
    if rgb.shape[:2] != depth.shape:
        rgb = cv2.resize(rgb, (depth.shape[1], depth.shape[0]))  # the loader's cv2 default (bilinear)
    rgb, depth, K = crop_resize_rgbd(rgb, depth, K)
    pts, valid = depth_to_world(depth, K, c2w)
    return GTView(name, PreparedFrame(to_model_input(rgb), rgb), pts, valid, c2w.astype(np.float32), K)


def read_depth_png(path: Path) -> np.ndarray:
    depth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if depth is None:
        raise EvalError(f"cannot read depth map {path}")
    return depth


# ----------------------------------------------------------------------------- dataset layouts
@dataclass(frozen=True)
class DatasetLayout:
    name: str
    kf_every: int  # the official evaluation's frame sampling
    icp_threshold: float  # metres
    list_scenes: Callable[[Path], list[str]]
    load_views: Callable[[Path, str, int], list[GTView]]


def seven_scenes_list(root: Path) -> list[str]:
    """``scene/seq-XX`` for every test sequence listed in ``ROOT/<scene>/TestSplit.txt``."""
    scenes = []
    for scene in sorted(p for p in root.iterdir() if (p / "TestSplit.txt").is_file()):
        for line in (scene / "TestSplit.txt").read_text().splitlines():
            digits = "".join(ch for ch in line if ch.isdigit())
            if digits:
                scenes.append(f"{scene.name}/seq-{digits.zfill(2)}")
    return scenes


SEVEN_SCENES_K = (525.0, 525.0, 320.0, 240.0)


def seven_scenes_views(root: Path, scene_id: str, kf_every: int) -> list[GTView]:
    folder = root / scene_id
    if not folder.is_dir():
        raise EvalError(f"7-Scenes sequence folder not found: {folder}")
    # the official loader counts the colour files and assumes frames 000000 … N−1
    n = sum(1 for p in folder.iterdir() if "color" in p.name)
    K = intrinsics_matrix(*SEVEN_SCENES_K)
    views = []
    for i in range(0, n, kf_every):
        stem = folder / f"frame-{i:06d}"
        rgb = read_image(f"{stem}.color.png")
        depth = clean_depth(read_depth_png(Path(f"{stem}.depth.proj.png")), invalid_value=65535)
        c2w = np.loadtxt(f"{stem}.pose.txt").astype(np.float32)
        views.append(make_view(f"frame-{i:06d}.color.png", rgb, depth, K, c2w))
    return views


def nrgbd_list(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if (p / "images").is_dir())


NRGBD_K = (554.2562584220408, 554.2562584220408, 320.0, 240.0)


def read_nrgbd_poses(path: Path) -> list[np.ndarray]:
    """``poses.txt``: 4 lines per camera-to-world matrix (OpenGL axes). A matrix whose first line holds
    ``nan`` is replaced by the identity, as the official loader does. Returned in OpenCV axes."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    poses = []
    for start in range(0, len(lines), 4):
        if "nan" in lines[start]:
            pose = np.eye(4, dtype=np.float32)
        else:
            pose = np.array([[float(x) for x in line.split()] for line in lines[start : start + 4]], dtype=np.float32)
        pose[:, 1:3] *= -1.0  # OpenGL (y up, z backward) → OpenCV (y down, z forward)
        poses.append(pose)
    return poses


def nrgbd_views(root: Path, scene_id: str, kf_every: int) -> list[GTView]:
    folder = root / scene_id
    if not (folder / "images").is_dir():
        raise EvalError(f"Neural-RGBD scene folder not found: {folder}/images")
    n = len(list((folder / "images").iterdir()))
    poses = read_nrgbd_poses(folder / "poses.txt")
    K = intrinsics_matrix(*NRGBD_K)
    views = []
    for i in range(0, n, kf_every):
        rgb = read_image(folder / "images" / f"img{i}.png")
        depth = clean_depth(read_depth_png(folder / "depth" / f"depth{i}.png"))
        views.append(make_view(f"img{i}.png", rgb, depth, K, poses[i]))
    return views


DATASETS: dict[str, DatasetLayout] = {
    "7scenes": DatasetLayout("7scenes", 20, 0.1, seven_scenes_list, seven_scenes_views),
    "nrgbd": DatasetLayout("nrgbd", 40, 0.1, nrgbd_list, nrgbd_views),
}

# Chamfer distance (mean of accuracy and completion, metres), Spann3R v1.01, from the authors' README.
PAPER_CHAMFER = {"7scenes": 0.0255, "nrgbd": 0.0437}


# ----------------------------------------------------------------------------- alignment
def lower_median(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Median that takes the lower of the two middle values on an even count (torch.median's rule)."""
    n = x.shape[axis]
    k = (n - 1) // 2
    return np.take(np.partition(x, k, axis=axis), k, axis=axis)


def center_scale(pts: np.ndarray) -> float:
    """Median distance of points [M, 3] to their per-axis median."""
    center = lower_median(pts, axis=0)
    return float(lower_median(np.linalg.norm(pts - center, axis=-1)))


def align_to_gt(
    pred: np.ndarray, gt_world: np.ndarray, valid: np.ndarray, first_c2w: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Scale/shift alignment of the official evaluation.

    pred [N, H, W, 3] in the first view's camera, gt_world [N, H, W, 3], valid [N, H, W] →
    (aligned prediction, ground truth), both in world coordinates, [M, 3] float64 over the valid pixels."""
    if not valid.any():
        raise EvalError("no pixel with valid ground-truth depth")
    c2w = first_c2w.astype(np.float64)
    w2c = np.linalg.inv(c2w)
    gt = gt_world[valid].astype(np.float64) @ w2c[:3, :3].T + w2c[:3, 3]  # [M, 3] first camera
    pr = pred[valid].astype(np.float64)
    gt_shift = lower_median(gt[:, 2])
    pr_shift = lower_median(pr[:, 2])
    gt[:, 2] -= gt_shift
    pr[:, 2] -= pr_shift
    gt_scale = center_scale(gt)
    pr_scale = min(max(center_scale(pr), 1e-3), 1e3)
    pr *= gt_scale / pr_scale
    gt[:, 2] += gt_shift
    pr[:, 2] += gt_shift
    return pr @ c2w[:3, :3].T + c2w[:3, 3], gt @ c2w[:3, :3].T + c2w[:3, 3]


# ----------------------------------------------------------------------------- ICP, normals, metrics
def require_open3d():
    try:
        import open3d as o3d
    except ImportError:
        raise EvalError(
            "spann3r eval needs Open3D: pip install 'spann3r-service[eval]' "
            "(open3d-cpu on Linux x86-64, open3d elsewhere)"
        ) from None
    return o3d


def point_cloud(points: np.ndarray):
    o3d = require_open3d()
    pcd = o3d.geometry.PointCloud()
    pcd.points = o3d.utility.Vector3dVector(np.ascontiguousarray(points, dtype=np.float64))
    return pcd


def icp_refine(pred: np.ndarray, gt: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Point-to-point ICP of pred [M, 3] onto gt [K, 3] from the identity → (moved pred, 4×4 transform)."""
    o3d = require_open3d()
    reg = o3d.pipelines.registration
    result = reg.registration_icp(
        point_cloud(pred), point_cloud(gt), threshold, np.eye(4), reg.TransformationEstimationPointToPoint()
    )
    T = np.asarray(result.transformation)
    return pred @ T[:3, :3].T + T[:3, 3], T


def estimate_normals(points: np.ndarray) -> np.ndarray:
    """Open3D's default normal estimate (30 nearest neighbours); sign arbitrary."""
    pcd = point_cloud(points)
    pcd.estimate_normals()
    return np.asarray(pcd.normals)


def nearest(points_from: np.ndarray, points_to: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every point of ``points_from``: distance to and index of its nearest point in ``points_to``."""
    from scipy.spatial import cKDTree

    # sliding-midpoint tree: the balanced (median) build is pathologically slow for far-away queries
    tree = cKDTree(points_to, balanced_tree=False, compact_nodes=False)
    dist, idx = tree.query(points_from, workers=-1)
    return dist, idx


@dataclass
class SceneMetrics:
    dataset: str
    scene: str
    frames: int
    points: int
    acc: float
    acc_med: float
    comp: float
    comp_med: float
    nc_acc: float  # normal consistency of the accuracy pairs (official NC1)
    nc_acc_med: float
    nc_comp: float  # of the completion pairs (official NC2)
    nc_comp_med: float
    extra: dict = field(default_factory=dict)

    @property
    def nc(self) -> float:
        return (self.nc_acc + self.nc_comp) / 2

    @property
    def nc_med(self) -> float:
        return (self.nc_acc_med + self.nc_comp_med) / 2

    @property
    def chamfer(self) -> float:
        return (self.acc + self.comp) / 2

    @property
    def chamfer_med(self) -> float:
        return (self.acc_med + self.comp_med) / 2


def cloud_metrics(
    pred: np.ndarray, gt: np.ndarray, pred_normals: np.ndarray, gt_normals: np.ndarray
) -> dict[str, float]:
    """Accuracy, completion and both normal consistencies (mean and median) of two clouds [M, 3], [K, 3]."""
    d_acc, i_acc = nearest(pred, gt)
    nc_acc = np.abs(np.sum(gt_normals[i_acc] * pred_normals, axis=-1))
    d_comp, i_comp = nearest(gt, pred)
    nc_comp = np.abs(np.sum(gt_normals * pred_normals[i_comp], axis=-1))
    return {
        "acc": float(np.mean(d_acc)),
        "acc_med": float(np.median(d_acc)),
        "comp": float(np.mean(d_comp)),
        "comp_med": float(np.median(d_comp)),
        "nc_acc": float(np.mean(nc_acc)),
        "nc_acc_med": float(np.median(nc_acc)),
        "nc_comp": float(np.mean(nc_comp)),
        "nc_comp_med": float(np.median(nc_comp)),
    }


def evaluate_scene(
    pred: np.ndarray, views: list[GTView], icp_threshold: float, dataset: str = "", scene: str = "", icp: bool = True
) -> SceneMetrics:
    """pred [N, H, W, 3]: predicted points of ``views`` (in the order processed; the camera of views[0]
    is their frame) → metrics after alignment, ICP and normal estimation."""
    if len(pred) != len(views):
        raise EvalError(f"{scene}: {len(pred)} predicted frames for {len(views)} ground-truth frames")
    gt_world = np.stack([v.pts3d for v in views])
    valid = np.stack([v.valid for v in views])
    if pred.shape != gt_world.shape:
        raise EvalError(f"{scene}: predictions of shape {list(pred.shape)}, expected {list(gt_world.shape)}")
    valid &= np.isfinite(pred).all(axis=-1)
    pr, gt = align_to_gt(pred, gt_world, valid, views[0].c2w)
    transform = np.eye(4)
    if icp:
        pr, transform = icp_refine(pr, gt, icp_threshold)
    metrics = cloud_metrics(pr, gt, estimate_normals(pr), estimate_normals(gt))
    return SceneMetrics(dataset, scene, len(views), int(valid.sum()), **metrics, extra={"icp_transform": transform})


# ----------------------------------------------------------------------------- predictions on disk
def prediction_file(folder: Path, scene_id: str) -> Path:
    """``<folder>/<scene id with '/' → '_'>.npz`` (the official evaluation's naming of its outputs)."""
    return folder / f"{scene_id.replace('/', '_')}.npz"


def load_prediction(path: Path, views: list[GTView]) -> tuple[np.ndarray, list[GTView]]:
    """A ``spann3r reconstruct`` npz (``pts3d`` [N, H, W, 3] in processing order; ``order`` for unordered
    runs) → the predicted points and the ground-truth views in the same order."""
    if not path.is_file():
        raise EvalError(f"prediction file not found: {path}")
    with np.load(path) as data:
        if "pts3d" not in data:
            raise EvalError(f"{path} has no 'pts3d' array (expected the npz of spann3r reconstruct)")
        pred = data["pts3d"].astype(np.float32)
        order = data["order"].astype(int) if "order" in data else np.arange(len(views))
        names = [str(n) for n in data["frame_names"]] if "frame_names" in data else None
    if len(pred) != len(views) or len(order) != len(views) or sorted(order.tolist()) != list(range(len(views))):
        raise EvalError(
            f"{path}: {len(pred)} predicted frames (order {order.tolist()}) for the "
            f"{len(views)} sampled ground-truth frames"
        )
    ordered = [views[i] for i in order]
    if names is not None and names != [v.name for v in ordered]:
        log.warning(
            "%s: frame names %s… differ from the ground truth's %s…", path, names[:2], [v.name for v in ordered][:2]
        )
    return pred, ordered


# ----------------------------------------------------------------------------- report
COLUMNS = [
    "dataset",
    "scene",
    "frames",
    "points",
    "acc",
    "acc_med",
    "comp",
    "comp_med",
    "nc_acc",
    "nc_acc_med",
    "nc_comp",
    "nc_comp_med",
    "nc",
    "nc_med",
    "chamfer",
    "chamfer_med",
]
METRIC_COLUMNS = COLUMNS[4:]


def metrics_row(m: SceneMetrics) -> dict:
    row = {k: v for k, v in asdict(m).items() if k != "extra"}
    row.update(nc=m.nc, nc_med=m.nc_med, chamfer=m.chamfer, chamfer_med=m.chamfer_med)
    return row


def mean_row(rows: list[dict], dataset: str) -> dict:
    out = {
        "dataset": dataset,
        "scene": "mean",
        "frames": sum(r["frames"] for r in rows),
        "points": sum(r["points"] for r in rows),
    }
    for k in METRIC_COLUMNS:
        out[k] = float(np.mean([r[k] for r in rows]))
    return out


def format_table(rows: Iterable[dict]) -> str:
    rows = list(rows)
    header = COLUMNS
    cells = [
        [str(r[c]) if c in ("dataset", "scene", "frames", "points") else f"{r[c]:.4f}" for c in header] for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]

    def line(values: list[str]) -> str:  # text columns left-aligned, numbers right-aligned
        return "  ".join(v.rjust(w) if i > 1 else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(c) for c in cells])


def write_csv(rows: Iterable[dict], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})


def select_scenes(all_scenes: list[str], wanted: str | None) -> list[str]:
    """Comma-separated scene ids or shell-like patterns (``chess/*``); None → all."""
    if not wanted:
        return all_scenes
    chosen = []
    for pattern in (w.strip() for w in wanted.split(",") if w.strip()):
        regex = re.compile("^" + re.escape(pattern).replace(r"\*", ".*") + "$")
        hits = [s for s in all_scenes if regex.match(s)]
        if not hits:
            raise EvalError(f"no scene matches {pattern!r}; scenes: {', '.join(all_scenes[:10])}")
        chosen += [s for s in hits if s not in chosen]
    return chosen


__all__ = [
    "DATASETS",
    "PAPER_CHAMFER",
    "DatasetLayout",
    "EvalError",
    "GTView",
    "SceneMetrics",
    "align_to_gt",
    "cloud_metrics",
    "crop_resize_rgbd",
    "depth_to_world",
    "evaluate_scene",
    "format_table",
    "icp_refine",
    "load_prediction",
    "lower_median",
    "mean_row",
    "metrics_row",
    "prediction_file",
    "read_nrgbd_poses",
    "select_scenes",
    "write_csv",
]

"""The wire format of the streaming service: the one definition of every WebSocket message and REST body.

Transport: each WebSocket message is one binary frame holding one msgpack map with a ``type`` key.  Byte
strings are msgpack ``bin``; arrays travel as ``{"dtype", "shape", "data"}`` with little-endian C-order bytes.
``docs/protocol.md`` explains the exchange with examples; ``python -m spann3r.server.protocol`` prints the
JSON Schema of everything here (the browser client generates its TypeScript types from it).

This module depends on pydantic, msgpack and numpy only, so clients can import it without the server.
"""

from __future__ import annotations

import json
import reprlib
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args

import msgpack
import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

PROTOCOL_VERSION = 1
SUBPROTOCOL = "spann3r.v1"  # WebSocket subprotocol name a client offers (the server accepts it when offered)
TOKEN_SUBPROTOCOL_PREFIX = "spann3r.token."  # offered as spann3r.token.TOKEN next to SUBPROTOCOL: the token
MAX_SEQ = 2**53 - 1  # seq and ping ids stay exact in every client language (JavaScript numbers)
MAX_DEPTH = 16  # msgpack nesting refused beyond this ('malformed'); real messages nest 5 levels at most
MAX_CLIENT_CONTAINER = 1024  # items of one array or map in a client message (none needs more than ~10): a
#                              16 MiB array of nils would otherwise cost 128 MiB of pointers and a long walk
MAX_ERROR_MESSAGE_CHARS = 300  # error texts are capped: they quote at most a short prefix of the input
ECHO_CHARS = 100  # longest piece of input (value, key) quoted in an error text

# --------------------------------------------------------------------------------------------- shared parts


class _Msg(BaseModel):
    # Unknown keys are refused: a typo in a field name is an error the client hears about, not a silent no-op.
    model_config = ConfigDict(extra="forbid")


class _Inbound(_Msg):
    """What clients send: strict types (no "12" or true for an integer, no "yes" for a bool) and finite floats
    only (NaN and Infinity have no JSON form and no meaning in any setting)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


ArrayDtype = Literal["float32", "float16", "int16", "uint8", "uint16"]
_DTYPE_NAMES = {np.dtype(n): n for n in get_args(ArrayDtype)}  # native byte order → wire name


class Array(_Msg):
    """An n-d array: little-endian, C order. float16 is IEEE half precision."""

    dtype: ArrayDtype
    shape: list[int]
    data: bytes

    @classmethod
    def of(cls, a: np.ndarray) -> Array:
        a = np.ascontiguousarray(a)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        name = _DTYPE_NAMES.get(a.dtype) or a.dtype.name  # numpy's name lookup costs more than the rest of ``of``
        return cls.model_construct(dtype=name, shape=list(a.shape), data=a.tobytes())  # type: ignore[arg-type]

    def to_numpy(self) -> np.ndarray:
        dt = np.dtype(self.dtype).newbyteorder("<")
        n = int(np.prod(self.shape)) if self.shape else 1
        if len(self.data) != n * dt.itemsize:
            raise ValueError(
                f"array data holds {len(self.data)} bytes, shape {self.shape} {self.dtype} needs {n * dt.itemsize}"
            )
        return np.frombuffer(self.data, dtype=dt).reshape(self.shape).astype(dt.newbyteorder("="))


FramePolicy = Literal["latest", "queue", "every_nth"]
OutputEncoding = Literal["full", "compact"]
FloatDtype = Literal["float32", "float16"]
ImageFormat = Literal["jpeg", "png", "webp", "rgb8"]
ControlAction = Literal["finish", "reset", "settings", "snapshot"]
# a session's life, the same on the server and in its clients: created (no stream connection yet) → streaming →
# finished (takes no frames until a reset); evicted (close 4408) and lost (4404, 4410, 4409, 4401) are what a
# client concludes when the session ends, never reported by a live session
SessionLife = Literal["created", "streaming", "finished", "evicted", "lost"]
PoseMethod = Literal["robust", "pnp_ransac"]  # core.camera.POSE_METHODS (a test keeps them equal)


def _positive_focal(v: list[float]) -> list[float]:
    if v[0] <= 0 or v[1] <= 0:
        raise ValueError("fx and fy must be positive")
    return v


# [fx, fy, cx, cy]; the validator travels with the type, so the derived settings patch checks it too
CameraIntrinsics = Annotated[list[float], Field(min_length=4, max_length=4), AfterValidator(_positive_focal)]


class SessionSettings(_Inbound):
    """Per-session behaviour. Set when the session is created; changed later with a ``settings`` control."""

    frame_policy: FramePolicy = Field(
        "latest",
        description="what to do with frames that arrive while the worker is busy: 'latest' keeps only "
        "the newest waiting frame (latest-frame-wins), 'queue' keeps up to queue_size in order and drops new "
        "ones when full, 'every_nth' keeps every every_n-th received frame, then queues",
    )
    queue_size: int = Field(4, ge=1, le=64, description="waiting frames kept by 'queue' and 'every_nth'")
    every_n: int = Field(2, ge=1, le=1000, description="keep one received frame in every_n ('every_nth')")
    encoding: OutputEncoding = Field(
        "compact", description="'full': whole 224x224 maps; 'compact': confident points only, int16 positions"
    )
    dtype: FloatDtype = Field("float32", description="float type of 'full' pointmaps and confidences")
    conf_thresh: float = Field(
        1e-3,
        ge=0.0,
        lt=1.0,
        description="a point is confident when (conf-1)/conf > conf_thresh (compact output and exports)",
    )
    stride: int = Field(1, ge=1, le=16, description="'compact': keep every stride-th row and column")
    compact_scale: float | None = Field(
        None,
        gt=0.0,
        description="'compact': metres (model units) per int16 step; None: chosen from the first "
        "output of the stream (4x headroom over its extent) and then fixed for the session",
    )
    preview: bool = Field(True, description="compute the preview of each new frame (costs one more head)")
    intrinsics: CameraIntrinsics | None = Field(
        None,
        description="the camera's [fx, fy, cx, cy] in pixels of the images the "
        "client sends (OpenCV convention: pixel centres at whole numbers). Mapped through the crop and resize to "
        "the 224x224 model image and used for poses, the reported focal and exports instead of the focal "
        "estimated from frame 0; fixed by the stream's first frame",
    )
    pose_method: PoseMethod = Field(
        "robust",
        description="'robust': batched, confidence-weighted robust solve (fast; flags degenerate "
        "geometry); 'pnp_ransac': the official demo's OpenCV PnP-RANSAC (slow; for comparison with the demo)",
    )


class _SettingsPatchBase(_Inbound):
    def apply(self, settings: SessionSettings) -> SessionSettings:
        return settings.model_copy(update=self.model_dump(exclude_none=True))


def _all_optional(model: type[BaseModel], name: str, base: type[BaseModel], doc: str) -> type[BaseModel]:
    """``model`` with every field optional (default None), each keeping its type, bounds and description."""
    fields: dict[str, Any] = {}
    for field_name, info in model.model_fields.items():
        kind = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        fields[field_name] = (Union[kind, None], Field(None, description=info.description))  # noqa: UP007
    return create_model(name, __base__=base, __doc__=doc, __module__=__name__, **fields)


# Derived, so a bound changed in SessionSettings cannot be forgotten here. compact_scale cannot be set back to
# None ("auto") with a patch: None means "keep".
if TYPE_CHECKING:  # type checkers see the base; the class itself is derived at run time
    SessionSettingsPatch = _SettingsPatchBase
else:
    SessionSettingsPatch = _all_optional(
        SessionSettings,
        "SessionSettingsPatch",
        _SettingsPatchBase,
        "Partial update of ``SessionSettings``: fields left out keep their value.",
    )


class Limits(_Msg):
    max_message_bytes: int = Field(description="larger messages are refused (error 'message_too_large')")
    max_pixels: int = Field(description="larger images are refused before decoding (error 'image_too_large')")
    max_fps: float = Field(description="frames beyond this rate per session are dropped (reason 'rate_limit')")
    max_protocol_errors: int = Field(description="protocol violations tolerated per connection before closing")
    idle_timeout_s: float = Field(description="a session without client messages for this long is evicted")
    max_batch: int = Field(description="frames of different sessions the worker runs in one step")


class ModelInfo(_Msg):
    preset: str = Field(description="'official' (DUSt3R ViT-L/B) or 'tiny'")
    weights: str = Field(description="'synthetic' | 'checkpoint' | 'hub'")
    synthetic: bool = Field(description="true: untrained random weights, outputs are meaningless geometry")
    notice: str | None = Field(None, description="human-readable warning, set when weights are synthetic")
    device: str
    resolution: int = 224


# --------------------------------------------------------------------------------------------- client → server


class FrameMsg(_Inbound):
    """One camera frame. Answered by exactly one ``result``, ``dropped`` or ``error`` carrying the same seq."""

    type: Literal["frame"] = "frame"
    seq: int = Field(
        ge=0,
        le=MAX_SEQ,
        description="client sequence number, strictly increasing within a session (a reset starts anew)",
    )
    ts: float | None = Field(None, description="capture time, seconds (client clock), echoed in results")
    format: ImageFormat = Field(description="encoded image, or 'rgb8': raw height*width*3 bytes")
    data: bytes
    width: int | None = Field(None, ge=1, description="'rgb8' only: image width")
    height: int | None = Field(None, ge=1, description="'rgb8' only: image height")


class ControlMsg(_Inbound):
    """``finish``: end the stream (the last frame's final is sent in ``finished``); ``reset``: start a new
    stream in the same session (memory cleared); ``settings``: change settings; ``snapshot``: save the
    session's state on the server (needs a state dir)."""

    type: Literal["control"] = "control"
    action: ControlAction
    settings: SessionSettingsPatch | None = None


class PingMsg(_Inbound):
    type: Literal["ping"] = "ping"
    id: int = Field(0, ge=-MAX_SEQ, le=MAX_SEQ)
    ts: float | None = None


CLIENT_MESSAGES: tuple[type[_Msg], ...] = (FrameMsg, ControlMsg, PingMsg)
ClientMessage = Annotated[Union[CLIENT_MESSAGES], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007

# --------------------------------------------------------------------------------------------- server → client


class Pose(_Msg):
    c2w: list[float] | None = Field(
        description="camera-to-world 4x4, row-major, OpenCV axes (x right, y down, "
        "z forward), in the frame of frame 0's camera; null when invalid"
    )
    valid: bool = Field(description="false when PnP-RANSAC found no pose")


class FullMap(_Msg):
    encoding: Literal["full"] = "full"
    pts3d: Array = Field(description="[224, 224, 3] float32|float16, global frame")
    conf: Array = Field(description="[224, 224] float32|float16, >= 1")
    colors: Array = Field(description="[224, 224, 3] uint8 RGB: the pixels the model saw")


class CompactMap(_Msg):
    encoding: Literal["compact"] = "compact"
    scale: float = Field(description="position = int16 value * scale (fixed per session until reset)")
    stride: int
    positions: Array = Field(description="[N, 3] int16")
    colors: Array = Field(description="[N, 3] uint8 RGB")
    conf: Array = Field(description="[N] float16")
    clipped: int = Field(0, description="confident points left out because they lie beyond the int16 range")


class FrameData(_Msg):
    index: int = Field(description="frame index in the stream (processed frames only, from 0)")
    seq: int = Field(description="the client's seq of this frame")
    kind: Literal["final", "preview"]
    map: FullMap | CompactMap = Field(discriminator="encoding")
    pose: Pose
    focal: float | None = Field(description="focal length in pixels of the 224x224 image (from frame 0's final)")


class MemoryInfo(_Msg):
    """Memory decisions of the step that wrote ``frame_index`` (the final just emitted)."""

    step: int
    frame_index: int
    similarity: float | None
    skipped: bool = Field(description="frame not written: too similar to the working memory")
    pruned: bool = Field(description="long-term memory pruned to its budget at this step")
    mem_tokens: int
    wm: int
    lm: int
    attn_zeroed_frac: float | None = None


class ResumeInfo(_Msg):
    """Where a session restored from the server's store (after a restart) resumed: the stream holds frames up to
    ``last_seq``; frames the client sent after it were lost with the server and must be sent again (or are a gap,
    for a live source)."""

    frames_processed: int = Field(description="frames in the restored stream")
    last_seq: int | None = Field(description="seq of its last frame; send larger ones (the lost frames again)")


class HelloMsg(_Msg):
    type: Literal["hello"] = "hello"
    protocol: int = PROTOCOL_VERSION
    session_id: str
    role: Literal["stream", "watch"]
    worker_id: str
    model: ModelInfo
    limits: Limits
    settings: SessionSettings
    frames_processed: int = Field(description="frames the stream has processed so far (reconnect resumes here)")
    last_seq: int | None = Field(description="highest seq accepted so far; send larger ones")
    finished: bool
    resume: ResumeInfo | None = Field(
        None,
        description="set when the session was restored from the server's "
        "store and has taken no frame since: frames after resume.last_seq were lost",
    )


class ResultMsg(_Msg):
    """Result of one frame: its preview and the final of the frame before (one-frame lag); frame 0 has none."""

    type: Literal["result"] = "result"
    seq: int
    frame_index: int
    ts: float | None = Field(None, description="the frame's capture time, as the client sent it")
    final: FrameData | None = None
    preview: FrameData | None = None
    memory: MemoryInfo | None = None
    timings: dict[str, float] = Field(
        default_factory=dict,
        description="seconds: queue_s (received → model), decode_s, step_s (model, whole "
        "batch), batch (size), pose_s, encode_s, server_s (received → sent); job_units: units of collection-job "
        "work the worker ran while this frame was ready and waiting (a count, not seconds)",
    )


class BackfillFrame(_Msg):
    """One earlier frame of a backfill: a downsampled share of its final's confident points, and its camera."""

    index: int = Field(description="frame index in the stream (the index of its final)")
    positions: Array = Field(description="[N, 3] float32, global frame")
    colors: Array = Field(description="[N, 3] uint8 RGB")
    pose: Pose


class BackfillMsg(_Msg):
    """The scene so far, for a watcher that joined a running session: after ``hello``, before or between live
    results, the finals of every earlier frame (confident points only, downsampled; no confidences: every point
    passed the session's ``conf_thresh``) and the trajectory, in chunks of whole frames. Sent only to that
    watcher, one chunk at a time, so it never holds up the live results."""

    type: Literal["backfill"] = "backfill"
    chunk: int = Field(description="this chunk's number, from 0")
    chunks: int = Field(description="chunks in this backfill; the last one has chunk == chunks - 1")
    frames: list[BackfillFrame]
    keep_every: int = Field(description="each frame's points are every keep_every-th of what the server keeps")
    focal: float | None = Field(description="focal length in pixels of the 224x224 image (as in FrameData)")


class DroppedMsg(_Msg):
    type: Literal["dropped"] = "dropped"
    seq: int
    reason: Literal["superseded", "queue_full", "every_nth", "rate_limit", "reset", "finished", "shutdown", "evicted"]


class FinishedMsg(_Msg):
    type: Literal["finished"] = "finished"
    frames: int = Field(description="frames in the finished stream")
    final: FrameData | None = Field(description="final of the last frame (null if the stream had < 2 frames)")


class AckMsg(_Msg):
    type: Literal["ack"] = "ack"
    action: Literal["reset", "settings", "snapshot"]
    settings: SessionSettings
    snapshot_bytes: int | None = None


class PongMsg(_Msg):
    type: Literal["pong"] = "pong"
    id: int
    ts: float | None = None
    server_ts: float


ErrorCode = Literal[
    "malformed",  # not msgpack, not a map, or nested deeper than MAX_DEPTH
    "unknown_type",  # 'type' missing or not a known message
    "bad_schema",  # fields missing, of the wrong type, or unknown
    "message_too_large",
    "bad_image",  # undecodable image, wrong rgb8 size, zero-size image
    "image_too_large",  # more pixels than max_pixels
    "bad_aspect_ratio",  # longest side over MAX_ASPECT (4) times the shortest (checked from the header)
    "bad_seq",  # seq not larger than the last accepted one
    "finished",  # frame after finish (send a reset to start a new stream)
    "read_only",  # a watch connection sent a frame or control
    "not_finishable",  # finish with fewer than 2 processed frames
    "snapshot_unavailable",  # no state dir configured
    "internal",
]


class ErrorMsg(_Msg):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    seq: int | None = Field(None, description="seq of the offending frame, when there is one")


JobStateName = Literal["queued", "running", "finishing", "done", "failed", "cancelled"]
JobStage = Literal["encode", "pairs", "views", "poses"]
# server/jobs.py's JobDownloadName serves exactly these (a test keeps them equal)
JobDownload = Literal["result.npz", "cloud.ply", "cloud.glb", "trajectory.json", "transforms.json", "scene.mcap"]


class JobError(_Msg):
    code: str = Field(
        description="'unordered' (the collection cannot be ordered, e.g. degenerate confidences), "
        "'cancelled' (deleted, or the server shut down), 'internal'"
    )
    message: str


class JobStatus(_Msg):
    """A collection job: the unordered reconstruction of uploaded images (``GET /v1/jobs/{id}``, and the
    payload of ``job`` messages)."""

    id: str
    state: JobStateName = Field(
        description="'queued' (no unit run yet), 'running', 'finishing' (poses and "
        "result files, off the model), 'done', 'failed', 'cancelled'"
    )
    stage: JobStage | None = Field(
        description="'encode' (images), 'pairs' (ordered pairs, plain DUSt3R), "
        "'views' (greedy next-best-view decodes), 'poses'; null when finished"
    )
    units_done: int = Field(
        description="units of model work done (a unit is one batch of images, pairs or "
        "candidates; the worker runs stream frames between units)"
    )
    units_total: int
    stage_done: int = Field(description="progress within the stage, in its own items (images, pairs, decodes)")
    stage_total: int
    images: int
    session_id: str | None = Field(None, description="session whose WebSocket receives this job's messages")
    order: list[int] | None = Field(None, description="'done': input indices in the order the model chose")
    downloads: list[JobDownload] = Field(
        default_factory=list, description="'done': files at /v1/jobs/{id}/result/{name}"
    )
    error: JobError | None = None
    elapsed_s: float = Field(description="seconds since the job was created")
    expires_in_s: float | None = Field(
        None, description="finished jobs: seconds until the job and its result are removed"
    )


class JobMsg(_Msg):
    """Progress of a collection job attached to this session: on every state or stage change, at most a few
    times a second while it runs, and once when it ends."""

    type: Literal["job"] = "job"
    job: JobStatus


SERVER_MESSAGES: tuple[type[_Msg], ...] = (
    HelloMsg,
    ResultMsg,
    DroppedMsg,
    FinishedMsg,
    AckMsg,
    PongMsg,
    ErrorMsg,
    JobMsg,
    BackfillMsg,
)
ServerMessage = Annotated[Union[SERVER_MESSAGES], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007

# WebSocket close codes the server uses (4000-4999: application codes). Every CLOSE_* name below is exported
# to the clients (CLOSE_CODES), so add new ones here.
CLOSE_SHUTDOWN = 1012  # server restarting (uvicorn closes every socket with 1012 at shutdown; sessions are
#                       snapshotted when a state dir is set): reconnect later
CLOSE_PROTOCOL_VIOLATION = 1008  # too many protocol errors
CLOSE_TOO_BIG = 1009  # a message far beyond max_message_bytes, cut off by the WebSocket layer
CLOSE_TRY_LATER = 1013  # the model is still loading, or the session has max_watchers already
CLOSE_UNAUTHORIZED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_IDLE = 4408  # evicted after the idle timeout
CLOSE_REPLACED = 4409  # a newer stream connection took over the session
CLOSE_DELETED = 4410
CLOSE_CODES: dict[str, int] = {
    k.removeprefix("CLOSE_"): v for k, v in dict(globals()).items() if k.startswith("CLOSE_") and isinstance(v, int)
}


def _full_map_bytes(dtype: str, resolution: int = 224) -> int:
    pixels = resolution * resolution
    return pixels * (3 + 1) * np.dtype(dtype).itemsize + pixels * 3  # pts3d + conf, then uint8 colors


# The largest message the server sends: a result with full float32 final and preview maps; everything else in
# it (msgpack keys, pose, timings, memory info) fits well within the allowance. Clients size their limit by it.
SERVER_MESSAGE_ALLOWANCE = 64 * 1024
MAX_SERVER_MESSAGE_BYTES = 2 * _full_map_bytes("float32") + SERVER_MESSAGE_ALLOWANCE

# --------------------------------------------------------------------------------------------- REST bodies


class SessionCreated(_Msg):
    id: str
    token: str = Field(description="stream token: send frames, control, read stats, export")
    watch_token: str = Field(description="read-only token: receive results and read stats, nothing else")
    stream_url: str = Field(
        description="WebSocket URL; offer the subprotocols spann3r.v1 and "
        "spann3r.token.TOKEN (or spann3r.token.WATCH_TOKEN to watch)"
    )
    worker_id: str
    protocol: int = PROTOCOL_VERSION
    settings: SessionSettings


class SessionStats(_Msg):
    id: str
    worker_id: str
    settings: SessionSettings
    frames_received: int
    frames_processed: int
    frames_dropped: dict[str, int]
    frames_rejected: int = Field(description="frames answered with an error")
    waiting: int = Field(description="frames waiting for the worker")
    finished: bool
    life: SessionLife = Field(description="created → streaming → finished (evicted and lost: after the end)")
    stream_connected: bool
    watchers: int
    idle_s: float
    focal: float | None
    export_points: int
    export_decimation: int = Field(
        description="exports keep every n-th confident point (grows when the session's point budget is reached)"
    )


class JobCreated(_Msg):
    id: str
    token: str = Field(description="job token: read progress, download the result, cancel (shown only once)")
    status_url: str = Field(description="GET it for a JobStatus; add the token (Authorization: Bearer or ?token=)")
    worker_id: str
    images: int
    input_names: list[str] = Field(
        description="image names in input order (zip members sorted by name, "
        "multipart files in the order sent); 'order' indexes this list"
    )
    units_total: int
    session_id: str | None = None


class ErrorBody(_Msg):
    """Every REST error (4xx, 5xx): a stable code and a human-readable detail (never more than a short prefix of
    the request)."""

    code: str
    detail: str


# --------------------------------------------------------------------------------------------- (de)serialisation

_client_adapter: TypeAdapter = TypeAdapter(ClientMessage)
_server_adapter: TypeAdapter = TypeAdapter(ServerMessage)


def _type_name(model: type[BaseModel]) -> str:
    (name,) = get_args(model.model_fields["type"].annotation)
    return name


CLIENT_TYPES: tuple[str, ...] = tuple(_type_name(m) for m in CLIENT_MESSAGES)
SERVER_TYPES: tuple[str, ...] = tuple(_type_name(m) for m in SERVER_MESSAGES)
ERROR_CODES: tuple[str, ...] = get_args(ErrorCode)
DROP_REASONS: tuple[str, ...] = get_args(DroppedMsg.model_fields["reason"].annotation)


def _echo_repr() -> reprlib.Repr:
    r = reprlib.Repr()  # Python 3.11 has no keyword arguments here
    r.maxlevel, r.maxstring, r.maxother, r.maxlist, r.maxdict = 2, ECHO_CHARS, ECHO_CHARS, 4, 4
    return r


_echo = _echo_repr()


def short(value: Any) -> str:
    """A bounded quote of client input for an error text: never more than about ECHO_CHARS characters."""
    text = value if isinstance(value, str) else _echo.repr(value)
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "..."


def capped(text: str) -> str:
    return text if len(text) <= MAX_ERROR_MESSAGE_CHARS else text[: MAX_ERROR_MESSAGE_CHARS - 3] + "..."


def errors_summary(errors: Sequence[Mapping[str, Any]], skip_loc: int = 0) -> str:
    """``where: what (n problem(s))`` of the first of pydantic's errors, quoting only short prefixes of the input
    (the input itself is never quoted)."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid"}
    where = ".".join(short(str(p)) for p in tuple(first.get("loc", ()))[skip_loc:]) or "body"
    return capped(f"{where}: {short(str(first.get('msg', 'invalid')))} ({len(errors)} problem(s))")


def validation_summary(exc: ValidationError, skip_loc: int = 0) -> str:
    return errors_summary(exc.errors(include_url=False, include_input=False, include_context=False), skip_loc)


class ProtocolError(ValueError):
    def __init__(self, code: str, message: str, seq: int | None = None):
        super().__init__(message)
        self.code, self.message, self.seq = code, message, seq


def pack(msg: BaseModel) -> bytes:
    return msgpack.packb(msg.model_dump(mode="python"), use_bin_type=True)


def _nested_deeper_than(obj: Any, limit: int) -> bool:
    """Iterative (no recursion), so any depth msgpack can produce is measured safely."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def _unpack_map(data: bytes, max_bytes: int | None, max_items: int = -1) -> dict:
    if max_bytes is not None and len(data) > max_bytes:
        raise ProtocolError("message_too_large", f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, max_array_len=max_items, max_map_len=max_items)
    except Exception as exc:  # msgpack raises several unrelated types for broken input
        over = f", or an array or map over {max_items} items" if max_items > 0 else ""
        raise ProtocolError("malformed", f"not a msgpack message{over} ({exc.__class__.__name__})") from None
    if not isinstance(obj, dict):
        raise ProtocolError("malformed", f"a message must be a msgpack map, got {type(obj).__name__}")
    if _nested_deeper_than(obj, MAX_DEPTH):
        raise ProtocolError("malformed", f"a message may nest at most {MAX_DEPTH} levels of maps and arrays")
    return obj


def _echoable_seq(obj: dict) -> int | None:
    seq = obj.get("seq")
    return seq if type(seq) is int and abs(seq) <= MAX_SEQ else None


def _validate(adapter: TypeAdapter, obj: dict, known: tuple[str, ...]) -> Any:
    kind = obj.get("type")
    seq = _echoable_seq(obj)
    if not isinstance(kind, str) or kind not in known:
        raise ProtocolError(
            "unknown_type", capped(f"unknown message type {short(kind)}; expected one of {list(known)}"), seq
        )
    try:
        return adapter.validate_python(obj)
    except ValidationError as exc:
        raise ProtocolError("bad_schema", f"{kind}: {validation_summary(exc, skip_loc=1)}", seq) from None


def decode_client_message(data: bytes, max_bytes: int | None = None) -> FrameMsg | ControlMsg | PingMsg:
    """Bytes from a client → a validated message, or ``ProtocolError`` with the error code to send back."""
    return _validate(_client_adapter, _unpack_map(data, max_bytes, MAX_CLIENT_CONTAINER), CLIENT_TYPES)


def decode_server_message(data: bytes) -> BaseModel:
    return _validate(_server_adapter, _unpack_map(data, None), SERVER_TYPES)


def protocol_constants() -> dict[str, Any]:
    """The values clients must agree on besides the types (the browser client generates constants from these)."""
    return {
        "PROTOCOL_VERSION": PROTOCOL_VERSION,
        "SUBPROTOCOL": SUBPROTOCOL,
        "TOKEN_SUBPROTOCOL_PREFIX": TOKEN_SUBPROTOCOL_PREFIX,
        "MAX_SEQ": MAX_SEQ,
        "MAX_DEPTH": MAX_DEPTH,
        "MAX_SERVER_MESSAGE_BYTES": MAX_SERVER_MESSAGE_BYTES,
        "CLIENT_MESSAGE_TYPES": list(CLIENT_TYPES),
        "SERVER_MESSAGE_TYPES": list(SERVER_TYPES),
        "ERROR_CODES": list(ERROR_CODES),
        "DROP_REASONS": list(DROP_REASONS),
        "CLOSE_CODES": CLOSE_CODES,
    }


REST_BODIES: tuple[type[BaseModel], ...] = (
    SessionSettings,
    SessionSettingsPatch,
    SessionCreated,
    SessionStats,
    ErrorBody,
    JobCreated,
    JobStatus,
)


def protocol_json_schema() -> dict:
    """JSON Schema of every message (client → server, server → client) and REST body, in one document, with
    the protocol's constants under ``x-constants``."""
    models = [*CLIENT_MESSAGES, *SERVER_MESSAGES, *REST_BODIES]
    defs: dict[str, Any] = {}
    for m in models:
        schema = m.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        defs[m.__name__] = schema
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"Spann3R streaming protocol v{PROTOCOL_VERSION}",
        "description": "Every WebSocket message is one msgpack map; 'bytes' fields (format: binary) are msgpack "
        "bin. Arrays are little-endian, C order.",
        "protocol": PROTOCOL_VERSION,
        "x-constants": protocol_constants(),
        "$defs": defs,
        "oneOf": [
            {"title": "ClientMessage", "oneOf": [{"$ref": f"#/$defs/{m.__name__}"} for m in CLIENT_MESSAGES]},
            {"title": "ServerMessage", "oneOf": [{"$ref": f"#/$defs/{m.__name__}"} for m in SERVER_MESSAGES]},
        ],
    }


if __name__ == "__main__":
    json.dump(protocol_json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")

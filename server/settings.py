"""Server settings: ``spann3r serve`` flags and ``SPANN3R_*`` environment variables (flags win)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ..core.unordered import DEFAULT_MAX_FRAMES
from .protocol import PoseMethod, SessionSettings


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPANN3R_", extra="forbid")

    # model
    weights: str | None = Field(
        None,
        description="'synthetic' (untrained demo), a checkpoint path, or "
        "hf:OWNER/REPO/FILE (default: checkpoints/spann3r.pth)",
    )
    model: Literal["official", "tiny"] = Field("official", description="model size preset")
    device: str = Field("cpu", description="cpu, cuda or cuda:N")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: torch's choice)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="fp32: the exact path (bit-identical to the official code on the CPU); bf16/fp16: "
        "autocast transformer blocks with fused attention, DPT heads in float32 (docs/precision.md); auto: fp32 on "
        "the CPU, bf16 on a GPU",
    )
    # network
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 in containers)")
    port: int = Field(8000, ge=0, le=65535)
    tls_cert: Path | None = Field(
        None, description="TLS certificate (PEM); with tls_key serves HTTPS/WSS (phones need HTTPS for the camera)"
    )
    tls_key: Path | None = Field(None, description="TLS private key (PEM)")
    public_url: str | None = Field(
        None, description="base URL clients reach the server at, when behind a proxy (default: from the request)"
    )
    # security
    api_key: SecretStr | None = Field(None, description="required to create sessions and jobs when set")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="allowed browser origins (comma-separated; '*' for any)"
    )
    # limits
    max_sessions: int = Field(8, ge=1, description="sessions held at once; more are refused (503)")
    idle_timeout_s: float = Field(300.0, gt=0, description="evict a session after this long without messages")
    orphan_grace_s: float = Field(
        45.0,
        gt=0,
        description="release a session this long after its stream "
        "connection went away (a reconnect within it keeps the session)",
    )
    max_message_bytes: int = Field(16 * 2**20, ge=1024, description="largest WebSocket message accepted")
    max_json_body_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="largest REST request body (JSON); larger "
        "ones are refused (413) before they are read. Job uploads have job_max_bytes",
    )
    max_pixels: int = Field(40_000_000, ge=4, description="largest image (width*height) accepted")
    max_fps: float = Field(30.0, gt=0, description="frames per second per session; faster ones are dropped")
    max_protocol_errors: int = Field(5, ge=1, description="protocol violations before a connection is closed")
    max_watchers: int = Field(8, ge=0, description="watch-only connections per session")
    max_export_points: int = Field(4_000_000, ge=1000, description="points a session keeps for export")
    # worker
    max_batch: int = Field(4, ge=1, description="frames of different sessions run in one step")
    max_wait_ms: float = Field(
        5.0, ge=0, description="how long the worker waits to fill a batch (not when every streaming session is in it)"
    )
    worker_id: str = Field("w0", description="name of this worker (a router keys sessions on their worker)")
    # collection jobs (unordered reconstruction of uploaded images)
    max_jobs: int = Field(
        4, ge=1, description="collection jobs held at once (running or awaiting download); more are refused (503)"
    )
    job_max_files: int = Field(
        DEFAULT_MAX_FRAMES,
        ge=2,
        description="images per collection job: the unordered "
        "mode decodes every ordered pair, N(N-1) decodes (as reconstruct --max-frames)",
    )
    job_max_bytes: int = Field(
        256 * 2**20,
        ge=1024,
        description="largest job upload, and largest total size of an archive's files once uncompressed",
    )
    job_ttl_s: float = Field(3600.0, gt=0, description="a finished job (and its result) is removed after this long")
    job_batch: int = Field(
        4,
        ge=1,
        le=64,
        description="images, pairs or candidates per unit of job work; stream "
        "frames wait for at most one unit. 4 = spann3r reconstruct --unordered's batches, so "
        "job results equal the CLI's; smaller units cost streams less latency",
    )
    job_stream_batches: int = Field(
        4,
        ge=1,
        description="stream batches run in a row while a job waits, before "
        "the job gets one unit (jobs still progress under a saturating stream load)",
    )
    job_dir: Path | None = Field(
        None, description="folder for the jobs' temporary folders (default: the system temporary folder)"
    )
    # state
    state_dir: Path | None = Field(
        None, description="folder for session snapshots (saved at shutdown and on request, restored at start)"
    )
    state_url: str | None = Field(
        None, description="keep session state in Redis instead (redis://HOST:PORT/DB); wins over state_dir"
    )
    persist_every: int = Field(
        4,
        ge=1,
        description="with a state store: persist each streaming session every this "
        "many frames (off the model thread), so a crash loses at most that many",
    )
    # cluster (server/cluster.py, docs/cluster.md)
    cluster: int = Field(
        0,
        ge=0,
        le=64,
        description="start this many worker actors on a Ray cluster (a local one unless ray_address is set) and "
        "serve them behind this process (the ingress); 0: the embedded single process",
    )
    ray_address: str | None = Field(
        None,
        description="join this Ray cluster (HOST:PORT of its GCS) as an ingress for the workers already running there "
        "(and those --cluster starts)",
    )
    cluster_worker: bool = Field(
        False,
        description="run as a worker actor of a cluster (set by the cluster itself): sessions are claimed in the "
        "store's directory, not restored at start",
    )
    static_dir: Path | None = Field(
        None, description="browser client build to serve at / (default: the page built into the package, server/page)"
    )
    default_encoding: Literal["full", "compact"] = Field(
        "compact", description="encoding of new sessions that do not choose one"
    )
    default_pose_method: PoseMethod = Field("robust", description="pose method of new sessions that do not choose one")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, v):
        if isinstance(v, str):
            return [o.strip() for o in v.split(",") if o.strip()]
        return v

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, v):
        # compose files pass SPANN3R_API_KEY= when unset: an empty key means "no key", never "the empty key"
        return None if v is None or (isinstance(v, str) and not v.strip()) else v

    @field_validator("worker_id")
    @classmethod
    def _safe_worker_id(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", v):
            raise ValueError("worker_id: 1-32 letters, digits, '_' or '-'")
        return v

    @model_validator(mode="after")
    def _tls_pair(self):
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self

    def session_settings(self, chosen: SessionSettings | None) -> SessionSettings:
        """A new session's settings: what the client chose, the server's defaults for the rest."""
        defaults = SessionSettings(encoding=self.default_encoding, pose_method=self.default_pose_method)
        if chosen is None:
            return defaults
        return defaults.model_copy(update={k: getattr(chosen, k) for k in chosen.model_fields_set})

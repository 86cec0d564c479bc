"""Prometheus metrics. One registry per app, so several apps (tests, several workers) never share counters."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

_LATENCY = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_FAST = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
# the stages below take from tens of microseconds (msgpack of a small message) to seconds (a queue under load)
_STAGE = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

# Where the time of one frame goes, stage by stage, in the order a frame meets them: stage → the histogram series
# that holds it. Stages that already had a histogram of their own keep it (dashboards and tests read those names);
# the others are the ``stage`` label of ``spann3r_stage_seconds``.
STAGE_SERIES: dict[str, str] = {
    "protocol": 'spann3r_stage_seconds{stage="protocol"}',  # message bytes → validated protocol message
    "decode": "spann3r_decode_seconds",  # image decode + preprocessing (with the decode pool's wait)
    "queue": 'spann3r_stage_seconds{stage="queue"}',  # frame received → taken into a batch, less its decode
    "step": "spann3r_step_seconds",  # one batched model step (per batch, not per frame), without its poses
    "pose": "spann3r_pose_seconds",  # calibration + poses of a result: its share of the step's batched solve
    "encode": "spann3r_encode_seconds",  # the maps → the result message's fields
    "pack": 'spann3r_stage_seconds{stage="pack"}',  # the result message → msgpack bytes
    "send": 'spann3r_stage_seconds{stage="send"}',  # one message written to its WebSocket
}


class _DeviceMemory:
    """Device memory at scrape time: CUDA allocated/reserved bytes, or the process's resident set on CPU."""

    def __init__(self, device: str):
        self.device = device

    def collect(self):
        g = GaugeMetricFamily("spann3r_device_memory_bytes", "memory held on the model's device", labels=["kind"])
        import torch

        dev = torch.device(self.device)
        if dev.type == "cuda" and torch.cuda.is_available():
            g.add_metric(["allocated"], torch.cuda.memory_allocated(dev))
            g.add_metric(["reserved"], torch.cuda.memory_reserved(dev))
        else:
            try:
                with open("/proc/self/statm") as f:
                    g.add_metric(["resident"], int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
            except OSError:
                pass
        yield g


class Metrics:
    def __init__(self, device: str = "cpu"):
        r = self.registry = CollectorRegistry()
        self.frames_received = Counter("spann3r_frames_received", "frame messages received", registry=r)
        self.frames_processed = Counter("spann3r_frames_processed", "frames run through the model", registry=r)
        self.frames_dropped = Counter("spann3r_frames_dropped", "frames dropped, by reason", ["reason"], registry=r)
        self.frames_rejected = Counter(
            "spann3r_frames_rejected", "frames answered with an error, by code", ["code"], registry=r
        )
        self.protocol_errors = Counter("spann3r_protocol_errors", "protocol violations, by code", ["code"], registry=r)
        self.step_latency = Histogram(
            "spann3r_step_seconds", "model step latency (one batch)", buckets=_LATENCY, registry=r
        )
        self.batch_size = Histogram(
            "spann3r_batch_size", "streams per batched step", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=r
        )
        self.server_latency = Histogram(
            "spann3r_frame_server_seconds", "frame received → result sent", buckets=_LATENCY, registry=r
        )
        self.decode_seconds = Histogram(
            "spann3r_decode_seconds", "image decode + preprocessing", buckets=_FAST, registry=r
        )
        self.pose_seconds = Histogram("spann3r_pose_seconds", "pose recovery per result", buckets=_LATENCY, registry=r)
        self.encode_seconds = Histogram(
            "spann3r_encode_seconds", "result encoding (the maps → message fields)", buckets=_FAST, registry=r
        )
        self.stage_seconds = Histogram(
            "spann3r_stage_seconds",
            "per-frame stages without a histogram of their own (see STAGE_SERIES)",
            ["stage"],
            buckets=_STAGE,
            registry=r,
        )
        # the children, made now so every stage is exported (with a zero count) before its first frame
        self.protocol_seconds = self.stage_seconds.labels("protocol")
        self.queue_seconds = self.stage_seconds.labels("queue")
        self.pack_seconds = self.stage_seconds.labels("pack")
        self.send_seconds = self.stage_seconds.labels("send")
        self.active_sessions = Gauge("spann3r_active_sessions", "sessions held", registry=r)
        self.queue_depth = Gauge("spann3r_queue_depth", "frames waiting for the model, all sessions", registry=r)
        self.sessions_evicted = Counter(
            "spann3r_sessions_evicted", "sessions evicted after the idle timeout", registry=r
        )
        self.sessions_refused = Counter("spann3r_sessions_refused", "session creations refused at capacity", registry=r)
        self.job_unit_seconds = Histogram(
            "spann3r_job_unit_seconds", "one unit of collection-job model work", buckets=_LATENCY, registry=r
        )
        self.jobs_created = Counter("spann3r_jobs_created", "collection jobs accepted", registry=r)
        self.jobs_refused = Counter("spann3r_jobs_refused", "collection uploads refused, by code", ["code"], registry=r)
        self.jobs_ended = Counter("spann3r_jobs_ended", "collection jobs ended, by state", ["state"], registry=r)
        self.active_jobs = Gauge("spann3r_active_jobs", "collection jobs held", registry=r)
        r.register(_DeviceMemory(device))

    def render(self) -> bytes:
        return generate_latest(self.registry)

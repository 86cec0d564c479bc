"""/metrics tells an operator where a frame's time goes: every stage of the per-frame path has a histogram with
samples after a few frames have streamed through a live server."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families
from service_helpers import live_server, run

from spann3r.client import stream
from spann3r.server.metrics import STAGE_SERIES
from spann3r.server.protocol import ResultMsg


def sample_counts(text: str) -> dict[str, float]:
    """Histogram series (``name`` or ``name{label="value"}``, as STAGE_SERIES writes them) → their sample count."""
    counts = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_count"):
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                name = sample.name.removesuffix("_count")
                counts[f"{name}{{{labels}}}" if labels else name] = sample.value
    return counts


def test_every_stage_of_a_frame_has_samples(tiny_engine, small_frames):
    with live_server(tiny_engine) as server:

        async def go():
            return [m async for m in stream(server.url, small_frames[:4], settings={"frame_policy": "queue"})]

        messages = run(go())
        assert len([m for m in messages if isinstance(m, ResultMsg)]) == 4
        counts = sample_counts(httpx.get(f"{server.url}/metrics").text)

    assert set(STAGE_SERIES) == {"protocol", "decode", "queue", "step", "pose", "encode", "pack", "send"}
    for stage, series in STAGE_SERIES.items():
        assert counts.get(series, 0) > 0, f"stage {stage}: no samples in {series}"

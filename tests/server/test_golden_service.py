"""Golden set A streamed through the service (real uvicorn on loopback, full-size model, rgb8 frames, float32
maps) passes the reference README's four checks: the service adds no error to the model's."""

from __future__ import annotations

import numpy as np
import pytest
from golden import check_close, check_decisions
from service_helpers import live_server, run

from spann3r.client import Recording, StreamClient, stream
from spann3r.server.encoding import decode_map
from spann3r.server.protocol import DroppedMsg, ErrorMsg, ResultMsg


@pytest.mark.golden
def test_golden_A_through_the_service(official_engine, golden_A, frames_A):
    with live_server(official_engine) as srv:

        async def main():
            client = StreamClient(srv.url)
            messages = [
                m
                async for m in stream(
                    srv.url,
                    frames_A,
                    client=client,
                    encoding="rgb8",
                    settings={
                        "encoding": "full",
                        "dtype": "float32",
                        "frame_policy": "queue",
                        "preview": True,
                        "pose_method": "pnp_ransac",  # the demo's camera, to compare with the reference's
                    },
                )
            ]
            await client.close()
            return messages, client.names

        messages, names = run(main(), timeout=900)
    assert not [m for m in messages if isinstance(m, (ErrorMsg, DroppedMsg))]
    assert messages[0].model.preset == "official" and messages[0].model.synthetic
    rec = Recording()
    for m in messages:
        rec.add(m)
    ours = rec.reconstruction(names)
    assert list(ours.names) == [f"frame_{i:03d}.png" for i in range(8)]
    # 1-3: scale, bulk, element, on finals and previews
    check_close("finals pts3d", ours.pts3d, golden_A["final_pts3d"])
    check_close("finals conf", ours.conf, golden_A["final_conf"])
    results = [m for m in messages if isinstance(m, ResultMsg)]
    previews = [decode_map(r.preview.map) for r in results[1:]]
    assert [r.preview.index for r in results[1:]] == list(range(1, 8))
    check_close("previews pts3d", np.stack([p["pts3d"] for p in previews]), golden_A["step_res2_pts3d"])
    check_close("previews conf", np.stack([p["conf"] for p in previews]), golden_A["step_res2_conf"])
    # 4: identical memory decisions
    check_decisions([r.memory for r in results[1:]], golden_A)
    # camera as the reference computes it (synthetic weights: focal clipped to 0, every PnP fails)
    assert ours.focal == pytest.approx(float(golden_A["cam_focal"]), abs=1e-6)
    assert ours.pose_valid.tolist() == golden_A["cam_pnp_success"].tolist()
    np.testing.assert_allclose(ours.colors.transpose(0, 3, 1, 2) / 255.0 * 2 - 1, golden_A["inputs_img"], atol=1e-6)

"""Streaming through a real uvicorn server on loopback (tiny model): results equal the offline pipeline,
sessions do not disturb each other, frame policies report every drop, encodings, watchers, reconnects."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import numpy as np
import pytest
from golden import check_close
from service_helpers import answers_by_seq, live_server, run

from spann3r.client import Recording, ServiceError, StreamClient, stream
from spann3r.core.reconstruct import reconstruct
from spann3r.server.encoding import confident, decode_map
from spann3r.server.protocol import CLOSE_REPLACED, AckMsg, DroppedMsg, ErrorMsg, FinishedMsg, HelloMsg, ResultMsg


@pytest.fixture(scope="module")
def server(tiny_engine):
    with live_server(tiny_engine, max_batch=3, max_wait_ms=30, max_sessions=64) as srv:
        yield srv


async def collect(url, frames, settings, encoding="png", **kw):
    client = StreamClient(url)
    messages = [m async for m in stream(url, frames, settings=settings, encoding=encoding, client=client, **kw)]
    await client.delete()
    await client.close()
    return messages, client.names


def record(messages, names=None):
    rec = Recording()
    for m in messages:
        rec.add(m)
    return rec.reconstruction(names)


def assert_same_reconstruction(ours, ref, batched=False):
    assert list(ours.names) == list(ref.names)
    if not batched:  # same computation, batch of one: bit-identical
        np.testing.assert_array_equal(ours.pts3d, ref.pts3d)
        np.testing.assert_array_equal(ours.conf, ref.conf)
    else:
        check_close("pts3d", ours.pts3d, ref.pts3d)
        check_close("conf", ours.conf, ref.conf)
    np.testing.assert_array_equal(ours.colors, ref.colors)
    np.testing.assert_array_equal(ours.skipped, ref.skipped)
    np.testing.assert_array_equal(ours.mem_tokens, ref.mem_tokens)
    np.testing.assert_array_equal(ours.pose_valid, ref.pose_valid)
    # the tiny model's focal is ~1e-3 px and ill-conditioned: batched rounding moves it by a few 1e-5 px
    assert ours.focal == (
        pytest.approx(ref.focal, rel=1e-6, abs=0) if not batched else pytest.approx(ref.focal, abs=1e-4)
    )


@pytest.mark.parametrize("encoding", ["rgb8", "png"])
def test_stream_equals_offline_reconstruct(server, tiny_engine, frames_A, encoding):
    frames = frames_A[:5]
    messages, names = run(
        collect(server.url, frames, {"encoding": "full", "frame_policy": "queue", "preview": False}, encoding)
    )
    assert isinstance(messages[0], HelloMsg) and messages[0].model.synthetic and messages[0].model.notice
    assert isinstance(messages[-1], FinishedMsg) and messages[-1].frames == 5
    answers = answers_by_seq(messages)
    assert sorted(answers) == list(range(5)) and all(len(a) == 1 and a[0].type == "result" for a in answers.values())
    results = [m for m in messages if isinstance(m, ResultMsg)]
    assert [r.frame_index for r in results] == [r.seq for r in results] == list(range(5))
    assert results[0].final is None and all(r.final.index == r.frame_index - 1 for r in results[1:])
    assert all(r.preview is None for r in results)  # previews off, as the offline CLI
    assert_same_reconstruction(record(messages, names), reconstruct(tiny_engine, frames))


def test_float16_output_close_to_float32(server, tiny_engine, small_frames):
    frames = small_frames[:3]
    messages, names = run(
        collect(server.url, frames, {"encoding": "full", "dtype": "float16", "frame_policy": "queue"})
    )
    ours, ref = record(messages, names), reconstruct(tiny_engine, frames)
    assert messages[1].final is None and messages[2].final.map.pts3d.dtype == "float16"
    np.testing.assert_allclose(ours.pts3d, ref.pts3d, rtol=1e-3, atol=1e-3 * np.abs(ref.pts3d).max())


def test_concurrent_sessions_equal_each_alone(server, tiny_engine, small_frames):
    """Three sessions interleaved in batched steps give what each gives alone."""
    sequences = [small_frames[:5], small_frames[::-1][:5], small_frames[1::2]]

    async def main():
        return await asyncio.gather(
            *(
                collect(server.url, seq, {"encoding": "full", "frame_policy": "queue", "preview": False})
                for seq in sequences
            )
        )

    outcomes = run(main())
    batches = [r.timings["batch"] for msgs, _ in outcomes for r in msgs if isinstance(r, ResultMsg)]
    assert max(batches) >= 2, "the sessions were never batched together"
    for (messages, names), seq in zip(outcomes, sequences):
        # batched matmuls may round differently from a batch of one: the reference tolerances apply
        assert_same_reconstruction(record(messages, names), reconstruct(tiny_engine, seq), batched=True)


async def _burst(url, frames, settings, n, gap=0.0):
    """Send n frames without waiting for results; return every message until all are answered."""
    async with StreamClient(url) as c:
        await c.create_session(settings)
        await c.connect()
        for i in range(n):
            await c.send_frame(frames[i % len(frames)][1], "png")
            await asyncio.sleep(gap)
        messages = []
        while len(answers_by_seq(messages)) < n:
            messages.append(await c.receive())
        await c.delete()
        return messages


def test_latest_frame_wins_and_every_drop_is_reported(server, small_frames):
    messages = run(_burst(server.url, small_frames, {"frame_policy": "latest"}, 12))
    answers = answers_by_seq(messages)
    assert sorted(answers) == list(range(12)) and all(len(a) == 1 for a in answers.values())
    kinds = {seq: a[0] for seq, a in answers.items()}
    results = [m for m in messages if isinstance(m, ResultMsg)]
    dropped = [m for m in messages if isinstance(m, DroppedMsg)]
    assert dropped and all(d.reason == "superseded" for d in dropped)
    assert isinstance(kinds[11], ResultMsg)  # the latest frame always wins
    assert [r.seq for r in results] == sorted(r.seq for r in results)  # in order
    assert [r.frame_index for r in results] == list(range(len(results)))  # dropped frames take no index


def test_queue_policy_drops_new_frames_when_full(server, small_frames):
    messages = run(_burst(server.url, small_frames, {"frame_policy": "queue", "queue_size": 2}, 10))
    answers = answers_by_seq(messages)
    assert sorted(answers) == list(range(10)) and all(len(a) == 1 for a in answers.values())
    dropped = [m.seq for m in messages if isinstance(m, DroppedMsg)]
    assert dropped and all(answers[s][0].reason == "queue_full" for s in dropped)
    assert isinstance(answers[0][0], ResultMsg) and isinstance(answers[1][0], ResultMsg)  # the first ones stay


def test_every_nth_policy(server, small_frames):
    messages = run(_burst(server.url, small_frames, {"frame_policy": "every_nth", "every_n": 3, "queue_size": 8}, 7))
    answers = answers_by_seq(messages)
    assert [s for s in range(7) if isinstance(answers[s][0], ResultMsg)] == [0, 3, 6]
    assert all(answers[s][0].reason == "every_nth" for s in (1, 2, 4, 5))


def test_rate_limit_drops_frames_beyond_max_fps(tiny_engine, small_frames):
    with live_server(tiny_engine, max_fps=2.0) as srv:
        messages = run(_burst(srv.url, small_frames, {"frame_policy": "queue", "queue_size": 8}, 6))
    answers = answers_by_seq(messages)
    reasons = [getattr(answers[s][0], "reason", "processed") for s in range(6)]
    assert reasons[:2] == ["processed", "processed"] and set(reasons[2:]) == {"rate_limit"}


def test_compact_encoding_then_switch_to_full(server, tiny_engine, small_frames):
    frames = small_frames[:5]
    ref = reconstruct(tiny_engine, frames, preview=True)

    async def main():
        async with StreamClient(server.url) as c:
            await c.create_session({"encoding": "compact", "stride": 2, "conf_thresh": 0.05, "frame_policy": "queue"})
            await c.connect()
            out = []
            for i, (_, rgb) in enumerate(frames):
                if i == 3:
                    await c.control("settings", encoding="full", dtype="float16")
                await c.send_frame(rgb, "png")
                while not any(getattr(m, "seq", None) == i for m in out if isinstance(m, ResultMsg)):
                    out.append(await c.receive())
            return out

    messages = run(main())
    results = [m for m in messages if isinstance(m, ResultMsg)]
    acks = [m for m in messages if isinstance(m, AckMsg)]
    assert acks and acks[0].action == "settings" and acks[0].settings.encoding == "full"
    compact = [r for r in results if r.seq in (1, 2)]
    scales = {r.final.map.scale for r in compact} | {r.preview.map.scale for r in compact}
    assert len(scales) == 1  # one scale per session
    scale = scales.pop()
    for r in compact:
        f = r.final
        assert f.map.encoding == "compact" and f.map.stride == 2
        got = decode_map(f.map)
        pts, conf = ref.pts3d[f.index][::2, ::2], ref.conf[f.index][::2, ::2]
        keep = confident(conf, 0.05)
        assert len(got["points"]) + f.map.clipped == keep.sum()
        if f.map.clipped == 0:
            np.testing.assert_allclose(got["points"], pts[keep], atol=scale / 2 + 1e-6)
    assert all(r.final.map.encoding == "full" and r.final.map.pts3d.dtype == "float16" for r in results if r.seq >= 3)


def test_watch_token_receives_results_but_cannot_send(server, small_frames):
    async def main():
        async with StreamClient(server.url) as streamer, StreamClient(server.url) as watcher:
            created = await streamer.create_session({"frame_policy": "queue"})
            await streamer.connect()
            watcher.attach(created.id, created.watch_token)
            hello = await watcher.connect()
            for _, rgb in small_frames[:3]:
                await streamer.send_frame(rgb, "png")
            seen = []
            while len([m for m in seen if isinstance(m, ResultMsg)]) < 3:
                seen.append(await watcher.receive())
            await watcher.send_frame(small_frames[0][1], "png", seq=100)
            refusal = await watcher.receive()
            stats = await watcher.stats()
            errors = []
            for call in (watcher.delete(), watcher.export("trajectory.json")):
                try:
                    await call
                except ServiceError as exc:
                    errors.append(exc.status)
            return hello, seen, refusal, stats, errors

    hello, seen, refusal, stats, errors = run(main())
    assert hello.role == "watch"
    assert [m.seq for m in seen if isinstance(m, ResultMsg)] == [0, 1, 2]
    assert isinstance(refusal, ErrorMsg) and refusal.code == "read_only"
    assert stats.frames_processed == 3 and stats.watchers == 1
    assert errors == [403, 403]


def test_reconnect_continues_the_same_stream(server, tiny_engine, small_frames):
    frames = small_frames[:6]

    async def main():
        rec = Recording()
        first = StreamClient(server.url)
        created = await first.create_session({"encoding": "full", "frame_policy": "queue"})
        await first.connect()
        for _, rgb in frames[:3]:
            await first.send_frame(rgb, "rgb8")
        while set(rec.finals) != {0, 1}:  # frames 0-2 in: finals of 0 and 1 out
            rec.add(await first.receive())
        await first.close()  # the client drops off; the session lives on

        second = StreamClient(server.url)
        second.attach(created.id, created.token)
        hello = await second.connect()
        # a third connection takes the session over: the second one is told so
        third = StreamClient(server.url)
        third.attach(created.id, created.token)
        await third.connect()
        try:
            while True:
                await second.receive()
        except ServiceError as exc:
            replaced = exc.code
        await second.close()
        async for m in stream(server.url, frames[3:], client=third, encoding="rgb8"):
            rec.add(m)
        await third.close()
        return hello, replaced, rec

    hello, replaced, rec = run(main())
    assert hello.frames_processed == 3 and hello.last_seq == 2 and not hello.finished
    assert replaced == str(CLOSE_REPLACED)
    assert sorted(rec.finals) == list(range(6))
    ref = reconstruct(tiny_engine, frames)
    ours = rec.reconstruction()
    np.testing.assert_array_equal(ours.pts3d, ref.pts3d)
    np.testing.assert_array_equal(ours.skipped, ref.skipped)


def test_finish_reset_and_frames_after_finish(server, small_frames):
    async def main():
        async with StreamClient(server.url) as c:
            await c.create_session({"frame_policy": "queue"})
            await c.connect()
            await c.send_frame(small_frames[0][1], "png")
            await c.finish()  # one frame cannot be finished
            out = [await c.receive(), await c.receive()]
            await c.send_frame(small_frames[1][1], "png")
            await c.finish()
            out += [await c.receive(), await c.receive()]
            await c.send_frame(small_frames[2][1], "png")
            out.append(await c.receive())
            await c.reset()
            out.append(await c.receive())
            await c.send_frame(small_frames[3][1], "png")
            out.append(await c.receive())
            return out

    out = run(main())
    by_type = [(m.type, getattr(m, "code", None) or getattr(m, "seq", None)) for m in out]
    assert set(by_type[:2]) == {("result", 0), ("error", "not_finishable")}
    assert by_type[2] == ("result", 1)
    assert isinstance(out[3], FinishedMsg) and out[3].frames == 2 and out[3].final.index == 1
    assert isinstance(out[4], ErrorMsg) and out[4].code == "finished" and out[4].seq == 2
    assert isinstance(out[5], AckMsg) and out[5].action == "reset"
    assert isinstance(out[6], ResultMsg) and out[6].seq == 3 and out[6].frame_index == 0  # a new stream


def test_exports_hold_every_confident_final_point(server, small_frames):
    import json

    import trimesh

    from spann3r.core.export import fuse, read_ply

    async def main():
        c = StreamClient(server.url)
        messages = [
            m
            async for m in stream(
                server.url,
                small_frames[:4],
                client=c,
                settings={"encoding": "full", "frame_policy": "queue", "conf_thresh": 0.01},
            )
        ]
        kinds = ("cloud.ply", "cloud.glb", "trajectory.json", "transforms.json", "scene.mcap")
        files = {k: await c.export(k) for k in kinds}
        stats = await c.stats()
        await c.close()
        return messages, files, stats

    messages, files, stats = run(main())
    rec = record(messages)
    xyz, rgb = fuse(rec.pts3d, rec.conf, rec.colors, 0.01)
    ply_xyz, ply_rgb = read_ply(files["cloud.ply"])
    assert len(xyz) > 0 and stats.export_points == len(xyz)
    np.testing.assert_array_equal(ply_xyz, xyz)
    np.testing.assert_array_equal(ply_rgb, rgb)
    glb = trimesh.load(trimesh.util.wrap_as_stream(files["cloud.glb"]), file_type="glb")
    assert sum(len(g.vertices) for g in glb.geometry.values()) == len(xyz)
    traj = json.loads(files["trajectory.json"])
    assert [f["index"] for f in traj["frames"]] == [0, 1, 2, 3]
    assert [f["valid"] for f in traj["frames"]] == rec.pose_valid.tolist()
    transforms = json.loads(files["transforms.json"])
    assert len(transforms["frames"]) == int(rec.pose_valid.sum())
    # MCAP, read back with rosbags' reader: each frame's cloud is that final's kept points, poses where valid
    from rosbags.highlevel import AnyReader

    (tmp := Path(tempfile.mkdtemp()) / "scene.mcap").write_bytes(files["scene.mcap"])
    with AnyReader([tmp]) as reader:
        by_topic: dict[str, list] = {}
        for conn, _, raw in reader.messages():
            by_topic.setdefault(conn.topic, []).append(reader.deserialize(raw, conn.msgtype))
    clouds = by_topic["/spann3r/points"]
    assert len(clouds) == 4
    mcap_xyz = np.concatenate(
        [np.frombuffer(m.data.tobytes(), "<f4").reshape(-1, m.point_step // 4)[:, :3] for m in clouds]
    )
    np.testing.assert_array_equal(mcap_xyz, xyz)
    assert len(by_topic.get("/spann3r/camera/pose", [])) == int(rec.pose_valid.sum())


def test_an_export_over_its_point_budget_holds_every_n_th_point_of_each_final(tiny_engine, small_frames):
    """Over the budget, the session's buffer keeps every n-th confident point of each final. The service thins
    each final in its post-processing threads at the level the buffer has then, and the buffer takes the arrays
    over; the cloud is what a buffer given each final's whole fused cloud in frame order holds."""
    from spann3r.core.export import fuse, read_ply
    from spann3r.server.exports import ExportBuffer

    budget = 1000

    async def main(url):
        c = StreamClient(url)
        settings = {"encoding": "full", "frame_policy": "queue", "conf_thresh": 0.01}
        messages = [m async for m in stream(url, small_frames[:6], client=c, settings=settings)]
        ply, stats = await c.export("cloud.ply"), await c.stats()
        await c.close()
        return messages, ply, stats

    with live_server(tiny_engine, max_export_points=budget) as srv:
        messages, ply, stats = run(main(srv.url))
    rec = record(messages)
    expected = ExportBuffer(budget)
    for i in range(len(rec.pts3d)):
        xyz, rgb = fuse(rec.pts3d[i : i + 1], rec.conf[i : i + 1], rec.colors[i : i + 1], 0.01)
        expected.add(i, xyz, rgb, np.eye(4), True)
    assert expected.decimation >= 16  # thinned several times over
    ply_xyz, ply_rgb = read_ply(ply)
    assert 0 < len(ply_xyz) == stats.export_points <= budget
    np.testing.assert_array_equal(ply_xyz, expected.cloud()[0])
    np.testing.assert_array_equal(ply_rgb, expected.cloud()[1])

"""Collection jobs on a loopback server (tiny model): the job's result equals ``reconstruct_unordered`` run
directly, its downloads, progress over REST and the session WebSocket, stream frames answered while a job
runs (waiting one job unit at most), cancellation, expiry and capacity."""

from __future__ import annotations

import asyncio
import io
import json
import time
import zipfile

import httpx
import numpy as np
import pytest
from service_helpers import live_server, run

from spann3r.client import StreamClient
from spann3r.core.export import fuse, read_ply
from spann3r.core.preprocess import load_frame
from spann3r.core.unordered import reconstruct_unordered
from spann3r.server.protocol import JobMsg, JobStatus, ResultMsg

ENDED = ("done", "failed", "cancelled")


@pytest.fixture(scope="module")
def files_D(golden_dir):
    return sorted((golden_dir / "frames_D").glob("*.png"))


def zip_of(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def wait_job(url: str, job: dict, timeout: float = 300) -> list[JobStatus]:
    """Poll the job until it ends; every status seen, in order."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/v1/jobs/{job['id']}", headers=auth(job["token"]))
        assert r.status_code == 200, r.text
        seen.append(JobStatus.model_validate(r.json()))
        if seen[-1].state in ENDED:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"job did not end within {timeout} s: {seen[-1]}")


def assert_progress_monotonic(statuses) -> None:
    stages = ["encode", "pairs", "views", "poses", None]
    units = [s.units_done for s in statuses]
    assert units == sorted(units)
    order = [stages.index(s.stage) for s in statuses]
    assert order == sorted(order)
    for s in statuses:
        assert 0 <= s.stage_done <= s.stage_total or s.stage is None
        assert s.units_done <= s.units_total


def test_zip_job_equals_a_direct_run_with_downloads_and_session_progress(tiny_engine, files_D):
    """Default job batches (4) = reconstruct_unordered's defaults: the npz holds the same numbers, bit for bit."""
    files = files_D[:4]
    archive = zip_of(
        {
            "__MACOSX/scene/._frame_000.png": b"junk",
            "scene/": b"",
            **{f"scene/{f.name}": f.read_bytes() for f in reversed(files)},
        }
    )
    direct = reconstruct_unordered(tiny_engine, [(f"scene/{f.name}", load_frame(f)) for f in files])

    with live_server(tiny_engine, api_key="sesame") as srv:

        async def main():
            async with StreamClient(srv.url, api_key="sesame") as c:
                session = await c.create_session()
                await c.connect()
                async with httpx.AsyncClient(base_url=srv.url, timeout=60) as http:
                    r = await http.post(
                        "/v1/jobs",
                        content=archive,
                        params={"session_id": session.id},
                        headers={
                            "Content-Type": "application/zip",
                            "X-API-Key": "sesame",
                            "X-Session-Token": session.token,
                        },
                    )
                assert r.status_code == 201, r.text
                job = r.json()
                messages = []
                while not messages or messages[-1].job.state not in ENDED:
                    msg = await asyncio.wait_for(c.receive(), 300)
                    if isinstance(msg, JobMsg):
                        messages.append(msg)
                return job, messages

        job, messages = run(main(), timeout=400)
        assert job["images"] == 4 and job["input_names"] == [f"scene/{f.name}" for f in files]  # sorted members
        assert job["units_total"] == 1 + 3 + 3  # 4 images / 4, 12 pairs / 4, steps 0, 1 (2 candidates), 2
        statuses = wait_job(srv.url, job)
        final = statuses[-1]
        assert final.state == "done" and final.order == direct.order.tolist() and final.units_done == 7
        assert final.downloads and final.expires_in_s > 0 and final.error is None
        assert_progress_monotonic(statuses)
        # the session's socket: the first message (queued) to the last (done), one job, in order
        ws = [m.job for m in messages]
        assert ws[0].state == "queued" and ws[-1].state == "done" and {s.id for s in ws} == {job["id"]}
        assert ws[-1].order == final.order and ws[-1].session_id is not None
        assert_progress_monotonic(ws)

        def get(name):
            r = httpx.get(f"{srv.url}/v1/jobs/{job['id']}/result/{name}", params={"token": job["token"]})
            assert r.status_code == 200, r.text
            return r.content

        data = np.load(io.BytesIO(get("result.npz")))
        expected = direct.arrays()
        assert set(data.files) == set(expected)
        for key, value in expected.items():
            if value.dtype.kind == "f":
                np.testing.assert_array_equal(data[key], value, err_msg=key)
            else:
                assert (data[key] == value).all(), key
        xyz, rgb = read_ply(get("cloud.ply"))
        ref_xyz, ref_rgb = fuse(data["pts3d"], data["conf"], data["colors"], 1e-3)
        assert len(xyz) > 1000 and np.array_equal(xyz, ref_xyz) and np.array_equal(rgb, ref_rgb)
        import trimesh

        glb = trimesh.load(io.BytesIO(get("cloud.glb")), file_type="glb")
        assert sum(len(g.vertices) for g in glb.geometry.values()) == len(xyz)
        transforms = json.loads(get("transforms.json"))
        valid = data["pose_valid"]
        assert [f["file_path"] for f in transforms["frames"]] == [
            f"images/{n}" for n, v in zip(data["frame_names"], valid) if v
        ]
        assert transforms["fl_x"] == pytest.approx(float(data["focal"]), rel=1e-6)
        trajectory = json.loads(get("trajectory.json"))
        assert [f["valid"] for f in trajectory["frames"]] == valid.tolist()
        # the job token is the only key: not the session's, not the API key, not another job's
        r = httpx.get(f"{srv.url}/v1/jobs/{job['id']}", headers=auth("sesame"))
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        assert httpx.get(f"{srv.url}/v1/jobs/{job['id']}").status_code == 401
        assert httpx.get(f"{srv.url}/v1/jobs/{'0' * 32}", headers=auth(job["token"])).status_code == 404
        assert (
            httpx.get(f"{srv.url}/v1/jobs/{job['id']}/result/secrets.txt", headers=auth(job["token"])).status_code
            == 422
        )
        folder = srv.service.jobs.get(job["id"]).folder
        assert folder.is_dir() and folder.parent == srv.service.jobs.root
        assert httpx.delete(f"{srv.url}/v1/jobs/{job['id']}", headers=auth(job["token"])).status_code == 204
        assert not folder.exists() and list(srv.service.jobs.root.iterdir()) == []
        assert httpx.get(f"{srv.url}/v1/jobs/{job['id']}", headers=auth(job["token"])).status_code == 404


def test_stream_frames_are_answered_while_a_job_runs(tiny_engine, files_D, small_frames):
    """Units of one image / pair / candidate: a stream frame never waits for more than one unit, and the stream
    is served from start to end while the job is still running; then the job is cancelled."""
    with live_server(tiny_engine, job_batch=1, max_jobs=1) as srv:
        # all six images: a job of 47 units outlasts the five stream frames with a wide margin (the job gets a unit
        # whenever the worker would otherwise idle between two frames, so a shorter one can end first)
        parts = [("files", (f.name, f.read_bytes(), "image/png")) for f in files_D]
        r = httpx.post(f"{srv.url}/v1/jobs", files=parts, timeout=60)
        assert r.status_code == 201, r.text
        job = r.json()
        assert job["input_names"] == [f.name for f in files_D] and job["units_total"] == 6 + 30 + 11
        # one job at a time here (max_jobs=1), and no result before it is done
        again = httpx.post(f"{srv.url}/v1/jobs", files=parts[:2], timeout=60)
        assert again.status_code == 503 and again.json()["code"] == "capacity"
        early = httpx.get(f"{srv.url}/v1/jobs/{job['id']}/result/cloud.ply", headers=auth(job["token"]))
        assert early.status_code == 409 and early.json()["code"] == "not_ready"

        def job_status() -> JobStatus:
            return JobStatus.model_validate(
                httpx.get(f"{srv.url}/v1/jobs/{job['id']}", headers=auth(job["token"])).json()
            )

        async def main():
            async with StreamClient(srv.url) as c:
                await c.create_session({"frame_policy": "queue", "preview": True})
                await c.connect()
                results, during = [], []
                for _name, rgb in small_frames[:5]:  # one frame in flight at a time
                    await c.send_frame(rgb, "png")
                    while True:
                        msg = await asyncio.wait_for(c.receive(), 120)
                        if isinstance(msg, ResultMsg):
                            break
                    results.append(msg)
                    during.append(await asyncio.to_thread(job_status))
                return results, during

        results, during = run(main(), timeout=600)
        assert len(results) == 5
        assert all(r.timings["job_units"] <= 1 for r in results), [r.timings for r in results]
        assert all(s.state in ("queued", "running") and s.units_done < s.units_total for s in during), during
        # the job advanced between stream frames (interleaved, not paused while the stream ran)
        assert during[-1].units_done > during[0].units_done
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert "spann3r_job_unit_seconds_count" in metrics and "spann3r_active_jobs 1.0" in metrics

        # cancel: the folder goes at once; the unit on the model thread (if any) finishes and is discarded
        folder = srv.service.jobs.get(job["id"]).folder
        assert httpx.delete(f"{srv.url}/v1/jobs/{job['id']}", headers=auth(job["token"])).status_code == 204
        assert not folder.exists()
        assert httpx.get(f"{srv.url}/v1/jobs/{job['id']}", headers=auth(job["token"])).status_code == 404
        worker = srv.service.worker
        assert not any(w.has_work() for w in list(worker._background))
        deadline = time.monotonic() + 120
        while worker.step_started is not None and time.monotonic() < deadline:  # a unit already running ends
            time.sleep(0.05)
        time.sleep(0.2)
        units = worker.background_units
        time.sleep(1.0)
        assert worker.background_units == units  # no unit of a cancelled job runs


def test_finished_jobs_expire_with_their_folder(tiny_engine, files_D):
    with live_server(tiny_engine, job_ttl_s=1.0) as srv:
        parts = [("files", (f.name, f.read_bytes())) for f in (files_D[1], files_D[0])]
        r = httpx.post(f"{srv.url}/v1/jobs", files=parts, timeout=60)
        assert r.status_code == 201, r.text
        job = r.json()
        assert job["input_names"] == [files_D[1].name, files_D[0].name]  # multipart: the order sent
        folder = srv.service.jobs.get(job["id"]).folder
        assert wait_job(srv.url, job)[-1].state == "done" and (folder / "result.npz").is_file()
        deadline = time.monotonic() + 15
        while httpx.get(f"{srv.url}/v1/jobs/{job['id']}", headers=auth(job["token"])).status_code == 200:
            assert time.monotonic() < deadline, "the finished job was not removed after job_ttl_s"
            time.sleep(0.2)
        assert not folder.exists() and srv.service.jobs.jobs == {}


def test_a_failing_job_reports_why_and_keeps_streams_alive(tiny_engine, files_D, small_frames, monkeypatch):
    """A collection the unordered mode cannot order (the core's UnorderedError) fails with its message; a fault
    in a unit fails that job only."""
    from spann3r.core.unordered import UnorderedError, UnorderedSteps

    real = UnorderedSteps.run_unit

    def degenerate(self):
        if self.stage == "views":
            raise UnorderedError("next-best view at step 1: no candidate scored above 0")
        real(self)

    monkeypatch.setattr(UnorderedSteps, "run_unit", degenerate)
    with live_server(tiny_engine) as srv:

        async def main():
            async with StreamClient(srv.url) as c:
                session = await c.create_session()
                await c.connect()
                async with httpx.AsyncClient(base_url=srv.url, timeout=60) as http:
                    r = await http.post(
                        "/v1/jobs",
                        params={"session_id": session.id, "session_token": session.token},
                        files=[("files", (f.name, f.read_bytes())) for f in files_D[:3]],
                    )
                assert r.status_code == 201, r.text
                last = None
                while last is None or last.state not in ENDED:
                    msg = await asyncio.wait_for(c.receive(), 120)
                    if isinstance(msg, JobMsg):
                        last = msg.job
                await c.send_frame(small_frames[0][1], "png")  # the session still streams
                while not isinstance(msg := await asyncio.wait_for(c.receive(), 120), ResultMsg):
                    pass
                return r.json(), last

        job, last = run(main(), timeout=300)
        assert last.state == "failed" and last.error.code == "unordered" and "no candidate" in last.error.message
        status = httpx.get(f"{srv.url}/v1/jobs/{job['id']}", headers=auth(job["token"])).json()
        assert status["state"] == "failed" and status["downloads"] == [] and status["expires_in_s"] > 0
        r = httpx.get(f"{srv.url}/v1/jobs/{job['id']}/result/result.npz", headers=auth(job["token"]))
        assert r.status_code == 409 and "no candidate" in r.json()["detail"]

"""Job uploads that must be refused (zip bombs, path traversal, symbolic links, non-images, too many files,
oversized bodies, wrong content types): each gets a clear refusal, and nothing is written anywhere but the
job's own temporary folder, which is gone afterwards. The checks run before the model sees anything."""

from __future__ import annotations

import io
import stat
import struct
import zipfile

import httpx
import pytest
from service_helpers import live_server

from spann3r.server.uploads import ReceivedPart, UploadLimits, UploadRefused, _unsafe_reason, read_collection


@pytest.fixture(scope="module")
def png(golden_dir) -> bytes:
    return sorted((golden_dir / "frames_D").glob("*.png"))[0].read_bytes()


@pytest.fixture(scope="module")
def png2(golden_dir) -> bytes:
    return sorted((golden_dir / "frames_D").glob("*.png"))[1].read_bytes()


def zip_of(entries, compression=zipfile.ZIP_DEFLATED) -> bytes:
    """entries: {name: bytes} or [(ZipInfo | name, bytes)]."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in entries.items() if isinstance(entries, dict) else entries:
            z.writestr(name, data)
    return buf.getvalue()


def symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def understated(data: bytes, name: str, real: int, claimed: int) -> bytes:
    """Rewrite an archive so that its headers claim ``claimed`` bytes for ``name`` instead of ``real``."""
    out = bytearray(data)
    for sig, offset in ((b"PK\x01\x02", 24), (b"PK\x03\x04", 22)):  # central directory, local header
        at = out.find(sig)
        while at >= 0:
            if struct.unpack_from("<I", out, at + offset)[0] == real:
                struct.pack_into("<I", out, at + offset, claimed)
            at = out.find(sig, at + 4)
    return bytes(out)


def test_member_names():
    for name in (
        "../x.png",
        "a/../../x.png",
        "a\\..\\x.png",
        "/etc/x.png",
        "\\x.png",
        "C:/x.png",
        "c:x.png",
        "a\x00.png",
    ):
        assert _unsafe_reason(name) is not None, name
    for name in ("x.png", "a/b/x.png", "a..b.png", "..x.png", "x..png"):
        assert _unsafe_reason(name) is None, name


def test_reading_stops_at_the_budget_whatever_the_header_says(tmp_path, png, png2):
    """Declared sizes pass the check (they are small), but a member is never read past its declared size: the
    lie surfaces as a corrupt member, never as a file larger than the budget."""
    zeros = b"\0" * 300_000
    data = understated(zip_of({"a.png": png, "b.png": zeros}), "b.png", len(zeros), 1000)
    part = tmp_path / "part-0000"
    part.write_bytes(data)
    with pytest.raises(UploadRefused) as err:
        read_collection([ReceivedPart("up.zip", part, len(data))], UploadLimits(10, 10**7, 10**8))
    assert err.value.code == "bad_archive" and "b.png" in err.value.message
    # the honest archive, same limits: refused on the declared size before anything is read
    part.write_bytes(zip_of({"a.png": png, "b.png": zeros}))
    with pytest.raises(UploadRefused) as err:
        read_collection([ReceivedPart("up.zip", part, 0)], UploadLimits(10, 100_000, 10**8))
    assert err.value.code == "too_large" and "zip bomb" in err.value.message
    # a good one
    part.write_bytes(zip_of({"b/2.png": png2, "a/1.png": png}))
    frames = read_collection([ReceivedPart("up.zip", part, 0)], UploadLimits(10, 10**7, 10**8))
    assert [n for n, _ in frames] == ["a/1.png", "b/2.png"] and frames[0][1].img.shape == (3, 224, 224)


def test_refusals_through_the_server_leave_nothing_behind(tiny_engine, png, png2, tmp_path):
    canary_dir = tmp_path / "jobs"
    with live_server(
        tiny_engine, api_key="sesame", job_max_files=3, job_max_bytes=2_000_000, job_dir=canary_dir
    ) as srv:
        url = f"{srv.url}/v1/jobs"
        key = {"X-API-Key": "sesame"}

        def post_zip(data: bytes, **kw):
            return httpx.post(url, content=data, headers={**key, "Content-Type": "application/zip"}, timeout=60, **kw)

        def refused(r, status: int, code: str, *words: str):
            assert r.status_code == status, (r.status_code, r.text)
            body = r.json()
            assert body["code"] == code, body
            for w in words:
                assert w in body["detail"], body
            return body

        two = {"a.png": png, "b.png": png2}
        assert httpx.post(url, content=zip_of(two), headers={"Content-Type": "application/zip"}).status_code == 401
        # archives
        refused(post_zip(zip_of({**two, "../evil.png": png})), 422, "unsafe_member", "../evil.png", "climbs out")
        refused(post_zip(zip_of({**two, "/tmp/evil.png": png})), 422, "unsafe_member", "absolute")
        refused(post_zip(zip_of({**two, "C:\\evil.png": png})), 422, "unsafe_member", "absolute")
        refused(
            post_zip(zip_of([*two.items(), (symlink_info("link.png"), b"/etc/passwd")])),
            422,
            "unsafe_member",
            "link.png",
            "symbolic link",
        )
        refused(post_zip(zip_of({**two, "notes.txt": b"hello"})), 422, "not_an_image", "notes.txt")
        refused(post_zip(zip_of({**two, "broken.png": b"\x89PNG not really"})), 422, "bad_image", "broken.png")
        refused(post_zip(zip_of({**two, "c.png": png, "d.png": png2})), 413, "too_many_files", "4 images")
        refused(post_zip(zip_of({**two, "bomb.png": b"\0" * 50_000_000})), 413, "too_large", "zip bomb")
        zeros = b"\0" * 3_000_000
        refused(
            post_zip(understated(zip_of({**two, "liar.png": zeros}), "liar.png", len(zeros), 100)),
            422,
            "bad_archive",
            "liar.png",
        )
        refused(post_zip(zip_of({"a.png": png})), 422, "too_few_images")
        refused(post_zip(b"PK\x03\x04 this is no archive"), 400, "bad_archive")
        refused(post_zip(b"just some bytes"), 400, "bad_archive")
        # bodies
        refused(post_zip(b"\0" * 2_100_000), 413, "too_large")  # Content-Length says so: nothing is read

        def chunks():  # no Content-Length: counted while streaming
            for _ in range(25):
                yield b"\0" * 100_000

        refused(post_zip(chunks()), 413, "too_large")
        refused(
            httpx.post(url, content=b"x", headers={**key, "Content-Type": "text/plain"}), 415, "unsupported_media_type"
        )
        refused(
            httpx.post(url, data={"note": "hi"}, files=[("files", ("a.png", png))], headers=key),
            400,
            "bad_upload",
            "'note'",
        )
        refused(
            httpx.post(url, files=[("files", ("a.png", png)), ("files", ("a.png", png2))], headers=key),
            422,
            "duplicate_name",
            "a.png",
        )
        refused(
            httpx.post(url, files=[("files", (f"{i}.png", png)) for i in range(4)], headers=key), 413, "too_many_files"
        )
        refused(
            httpx.post(url, files=[("files", ("a.png", png)), ("files", ("b.jpg", b"\xff\xd8 nope"))], headers=key),
            422,
            "bad_image",
            "b.jpg",
        )
        refused(
            httpx.post(
                url,
                content=b'--xyz\r\nContent-Disposition: form-data; name="f"; filename="a.png"\r\n\r\n' + png[:100],
                headers={**key, "Content-Type": "multipart/form-data; boundary=xyz"},
            ),
            400,
            "bad_upload",
            "truncated",
        )
        # attaching to a session needs that session's stream token
        created = httpx.post(f"{srv.url}/v1/sessions", headers=key).json()
        r = post_zip(zip_of(two), params={"session_id": created["id"], "session_token": created["watch_token"]})
        refused(r, 403, "forbidden")
        r = post_zip(zip_of(two), params={"session_id": created["id"], "session_token": "wrong"})
        refused(r, 401, "unauthorized")

        # nothing held, nothing left on disk: every refused upload's folder is gone, no member was extracted
        assert srv.service.jobs.jobs == {}
        root = srv.service.jobs.root
        assert root.parent == canary_dir and list(root.iterdir()) == []
        assert [p.name for p in canary_dir.rglob("*")] == [root.name]
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert 'spann3r_jobs_refused_total{code="unsafe_member"} 4.0' in metrics
        # and a good upload is still accepted (mixed: an image part and an archive part)
        r = httpx.post(
            url,
            files=[("files", ("first.png", png)), ("files", ("more.zip", zip_of({"x/b.png": png2})))],
            headers=key,
            timeout=60,
        )
        assert r.status_code == 201, r.text
        assert r.json()["input_names"] == ["first.png", "x/b.png"]
    assert not canary_dir.exists() or list(canary_dir.iterdir()) == []  # shutdown removes the jobs' folders

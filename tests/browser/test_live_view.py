"""The live-view page in Debian's Chromium (headless, fake camera fed from frames_A) against a real
``spann3r serve`` with synthetic weights and the tiny model. Screenshots land in test-artifacts/browser/.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from live_view_harness import CHROMIUM, chromium_available, free_port, run_driver, start_server

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not chromium_available(), reason=f"Chromium not found at {CHROMIUM} (apt-get install chromium)"),
]

BACKGROUND = (13, 17, 23)  # the viewer's clear colour (#0d1117)
# colours that are not points: trajectory (latest, others, dimmed path), axes helper
NON_POINT_COLOURS = [
    BACKGROUND,
    (77, 191, 255),
    (46, 115, 153),
    (255, 89, 51),
    (153, 54, 31),
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
]


def point_pixels(png: str | Path, width: int = 1280, height: int = 800) -> int:
    """Pixels of the 3D view (outside the overlay, panel and camera preview) that are neither background nor
    trajectory/axes lines: the rendered points."""
    img = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB).astype(np.int32)
    assert img.shape[:2] == (height, width), img.shape
    view = img[110:650, 210:930]  # left of the panel, below the banners, above the camera preview
    dist = np.min([np.abs(view - np.array(c)).sum(axis=2) for c in NON_POINT_COLOURS], axis=0)
    return int((dist > 40).sum())


def strictly_growing(values: list[int]) -> bool:
    return len(values) >= 2 and values[-1] > values[0]


def assert_no_console_errors(report: dict) -> None:
    errors = [c for c in report["console"] if c["type"] == "error"]
    assert not errors, errors
    assert not report["pageErrors"], report["pageErrors"]


def overlay_values(report: dict, key: str, name: str) -> list[str]:
    return [o[key] for o in report["overlays"][name]]


def test_camera_stream_grows_the_cloud(server, camera_y4m):
    r = run_driver("camera", server.base, "--y4m", str(camera_y4m), "--min-results", "6")
    samples = r["samples"]["camera"]
    last = samples[-1]
    assert last["state"] == "open" and last["role"] == "stream"
    assert last["framesSent"] >= 6 and last["resultsReceived"] >= 6
    # the cloud grows frame after frame, in preallocated buffers (no reallocation at this size)
    shown = [s["pointsShown"] for s in samples if s["resultsReceived"] >= 2]
    assert strictly_growing(shown), shown
    assert all(b >= a for a, b in itertools.pairwise(shown)), shown
    # frustums: one per valid pose. The page passes the camera's intrinsics (typed in its frames' pixels, sent in
    # the uploaded frames'), so even the tiny synthetic model's maps get poses: its focal estimate is 0 on these
    # frames, and without known intrinsics the stream would have no camera
    assert last["frames"] >= 6 and last["frames"] - 2 <= last["poses"] <= last["frames"], last
    assert last["reallocations"] == 0
    assert last["synthetic"] is True
    assert any(b["key"] == "synthetic" and "synthetic" in b["text"].lower() for b in last["banners"])
    # the overlay shows the live numbers
    received = overlay_values(r, "received", "camera")
    assert len(set(received)) >= 3, received
    assert overlay_values(r, "points", "camera")[-1] not in ("0", "")
    assert overlay_values(r, "latency", "camera")[-1].endswith("ms")
    assert last["latencyMs"] > 0 and last["decodeUploadMs"] is not None
    # the page really draws points
    assert point_pixels(next(p for p in r["screenshots"] if p.endswith("camera-rgb.png"))) > 3000
    assert point_pixels(next(p for p in r["screenshots"] if p.endswith("camera-confidence.png"))) > 3000
    # confidence slider hides points; follow view engaged; exports download from the server
    t = r["notes"]["threshold"]  # read in one task of the page: no result arrives between the readings
    assert t["after"] < t["before"] == t["held"] == t["heldBefore"], t
    assert r["notes"]["followPressed"] == "true"
    ply, glb = r["notes"]["exportPly"], r["notes"]["exportGlb"]
    assert ply["status"] == 200 and ply["head"] == "ply" and ply["filename"].endswith("cloud.ply"), ply
    assert glb["status"] == 200 and glb["head"] == "glTF", glb
    assert "token" not in ply["url"] and "token" not in glb["url"]  # the token went in a header
    # a long export shows its progress on its button (the test throttles the download to 8 MB/s), then the label
    # comes back
    for export, label in ((ply, "PLY"), (glb, "GLB")):
        shown = [int(x[len(label) :].strip(" %")) for x in export["labels"] if re.fullmatch(rf"{label} \d+%", x)]
        assert export["bytes"] > 300_000 and any(0 < p < 100 for p in shown), export["labels"]
        assert export["label"] == label, export["label"]
    # reset: the view was cleared and the new stream numbers frames from 0 again
    before, after = r["notes"]["beforeReset"], r["notes"]["afterReset"]
    assert after["sessionId"] == before["sessionId"]
    assert after["lastFrameIndex"] < before["lastFrameIndex"] and after["pointsShown"] > 0
    # phone-sized screen: bottom-sheet menu, touch orbit on the canvas
    assert r["notes"]["phone"] == {"menuVisible": True, "canvasTouchAction": "none", "canvasWidth": 390}
    assert_no_console_errors(r)


def test_file_replay_sends_every_image(server, replay_images):
    r = run_driver("replay", server.base, "--images", str(replay_images))
    n = r["notes"]["images"]
    last = r["samples"]["replay"][-1]
    assert n >= 2
    assert last["finished"] is True and last["replayFrames"] == n
    # the end of a replay is a finished session, and the pill says so (it used to keep saying "streaming")
    assert last["life"] == "finished" and last["pill"]["state"] == "finished", last["pill"]
    # a replay waits for room instead of skipping: every image is sent and answered
    assert last["framesSent"] == n
    assert last["resultsReceived"] == n
    assert last["framesDropped"] == 0
    # finish delivered the last frame's final: one slot per image
    assert last["frames"] == n
    shown = [s["pointsShown"] for s in r["samples"]["replay"]]
    assert strictly_growing(shown), shown
    assert point_pixels(r["screenshots"][-1]) > 3000
    assert_no_console_errors(r)


def test_video_file_replay(server, replay_video):
    r = run_driver("replay", server.base, "--video", str(replay_video))
    last = r["samples"]["replay"][-1]
    # 2 s of video sampled at 4 frames/s: 8 frames (7 if the container reports 1.75 s), each answered
    n = last["replayFrames"]
    assert n in (7, 8), n
    assert last["finished"] is True
    assert last["framesSent"] == n and last["resultsReceived"] == n
    assert last["frames"] == n
    assert point_pixels(r["screenshots"][-1]) > 3000
    assert_no_console_errors(r)


def test_watch_only_follows_another_stream(server, camera_y4m):
    r = run_driver("watch", server.base, "--y4m", str(camera_y4m), "--min-results", "5")
    watcher = r["samples"]["watcher"]
    last = watcher[-1]
    assert last["role"] == "watch" and last["state"] == "open"
    assert last["framesSent"] == 0
    assert last["resultsReceived"] >= 5
    assert strictly_growing([s["pointsShown"] for s in watcher if s["resultsReceived"] >= 1])
    assert len(set(overlay_values(r, "received", "watcher"))) >= 3
    # same session as the streamer, and read-only: no start panel, exports disabled
    assert last["sessionId"] == r["samples"]["streamer"][-1]["sessionId"]
    assert r["notes"]["watcherExport"] == "true"
    assert r["notes"]["watcherStartHidden"] is True
    # a watcher has nothing to stop or reset; the watch link keeps its token out of the query (and the logs)
    assert last["controls"]["stop"]["hidden"] and last["controls"]["reset"]["hidden"], last["controls"]
    assert "?token=" not in r["notes"]["watcherUrl"] and "#watch=" in r["notes"]["watcherUrl"]
    # the streamer pressed Stop: the watcher is told the session finished
    told = r["samples"]["watcher-after-stop"][-1]
    assert told["life"] == "finished" and told["pill"]["state"] == "finished"
    notice = next(b for b in told["banners"] if b["key"] == "watch-notice")
    assert "finished" in notice["text"]
    # then the streamer closed its tab: the watcher is told that too
    left = r["samples"]["watcher-after-leave"][-1]
    assert any(b["key"] == "watch-notice" and "left" in b["text"] for b in left["banners"]), left["banners"]
    assert point_pixels(next(p for p in r["screenshots"] if p.endswith("watch-watcher.png"))) > 3000
    assert_no_console_errors(r)


def test_idle_session_eviction_is_explained(server, camera_y4m):
    r = run_driver("evicted", server.base, "--y4m", str(camera_y4m))
    last = r["samples"]["evicted"][-1]
    assert last["state"] == "closed"
    banner = next(b for b in last["banners"] if b["key"] == "connection")
    assert banner["level"] == "error" and "evicted" in banner["text"]
    assert_no_console_errors(r)


def test_server_down_and_camera_refused_messages(server, camera_y4m):
    r = run_driver("errors", server.base, "--y4m", str(camera_y4m), "--dead-port", str(free_port()))
    down = r["samples"]["server-down"][-1]
    text = " ".join(b["text"] for b in down["banners"] if b["key"] == "server")
    assert "Cannot reach the server" in text, down["banners"]
    assert down["sessionId"] is None and down["framesSent"] == 0
    refused = r["samples"]["camera-refused"][-1]
    cam = next(b for b in refused["banners"] if b["key"] == "camera")
    assert cam["level"] == "error" and "refused" in cam["text"].lower()
    # no session was created for a camera the user refused
    assert refused["sessionId"] is None
    # the failed fetches of the server-down page are expected console noise; nothing may throw
    assert not r["pageErrors"], r["pageErrors"]


def test_reconnect_resumes_the_session_after_a_server_restart(client_build, camera_y4m, tmp_path):
    state = tmp_path / "state"
    server = start_server(tmp_path, "--state-dir", str(state))
    restarted = []

    def on_line(line: str, proc) -> None:
        if line == "PHASE restart-server":
            server.restart()  # SIGTERM snapshots the session; the new process restores it
            restarted.append(True)
            proc.stdin.write("continue\n")
            proc.stdin.flush()

    try:
        r = run_driver("restart", server.base, "--y4m", str(camera_y4m), on_line=on_line)
    finally:
        server.stop()
    assert restarted
    before = r["notes"]["before"]
    samples = r["samples"]["restart"]
    after = samples[-1]
    # the page's own record of its connection states: a quick restart is over before the next sample
    assert "reconnecting" in after["stateHistory"], after["stateHistory"]
    assert after["state"] == "open"
    assert after["sessionId"] == before["sessionId"]
    # the stream continued: more results, frame indices past the ones before the restart
    assert after["resultsReceived"] >= before["resultsReceived"] + 3
    assert after["lastFrameIndex"] > before["lastFrameIndex"]
    assert after["pointsShown"] > before["pointsShown"]
    assert not r["pageErrors"], r["pageErrors"]


def test_a_reload_resumes_the_session_and_stop_forgets_it(server, camera_y4m):
    r = run_driver("reload", server.base, "--y4m", str(camera_y4m))
    before, after = r["notes"]["before"], r["notes"]["after"]
    # the same session, picked up where it was: the camera streams on, the cloud is back to its size
    assert after["sessionId"] == before["sessionId"] and after["role"] == "stream"
    assert after["pointsShown"] >= before["pointsShown"] > 0
    assert after["lastFrameIndex"] > before["lastFrameIndex"]
    assert after["cameraLive"] and after["storedSession"]
    # Stream again while streaming: a new session, and the old one is gone from the server (not left held)
    restarted = r["notes"]["restarted"]
    assert restarted["sessionId"] != before["sessionId"] and restarted["life"] == "streaming"
    assert r["notes"]["oldSessionStatus"] == 404
    # Stop: finished (the pill says so), Stop disabled, exports still available; and the tab forgot it
    stopped = r["notes"]["stopped"]
    assert stopped["life"] == "finished" and stopped["pill"]["state"] == "finished", stopped["pill"]
    assert stopped["pill"]["text"].startswith("finished")
    assert stopped["controls"]["stop"]["disabled"] and not stopped["controls"]["export-ply"]["disabled"]
    assert not stopped["cameraLive"] and not stopped["storedSession"]
    fresh = r["notes"]["afterStopReload"]
    assert fresh["sessionId"] is None and fresh["pill"]["state"] == "idle"
    assert_no_console_errors(r)


def test_a_lost_session_stops_the_camera_and_shows_no_token(client_build, camera_y4m, tmp_path):
    server = start_server(tmp_path)  # no state dir: a restart loses every session
    restarted = []

    def on_line(line: str, proc) -> None:
        if line == "PHASE restart-server":
            server.restart()
            restarted.append(True)
            proc.stdin.write("continue\n")
            proc.stdin.flush()

    try:
        r = run_driver("lost", server.base, "--y4m", str(camera_y4m), on_line=on_line)
    finally:
        server.stop()
    assert restarted
    lost = r["samples"]["lost"][-1]
    assert lost["life"] == "lost" and lost["state"] == "closed"
    assert lost["pill"] == {"state": "closed", "text": "session lost"}
    # the camera stopped; nothing acts on the session any more
    assert not lost["cameraLive"] and not lost["sourceRunning"]
    for control in ("stop", "reset", "export-ply", "export-glb"):
        assert lost["controls"][control]["disabled"], (control, lost["controls"])
    assert not lost["storedSession"]
    banner = next(b for b in lost["banners"] if b["key"] == "connection")
    assert "no longer exists" in banner["text"]
    # the reconnects failed while the server was down (the console says so), without naming the token
    assert r["notes"]["tokens"] == 2 and r["notes"]["webSocketConsole"] >= 1, r["allConsole"]
    assert r["notes"]["tokenInConsole"] == []
    assert not r["pageErrors"], r["pageErrors"]


def test_without_a_fixed_rate_the_page_sends_as_fast_as_results_come_back(server, camera_y4m):
    r = run_driver("paced", server.base, "--y4m", str(camera_y4m), "--min-results", "6")
    samples = r["samples"]["paced"]
    last = samples[-1]
    assert last["resultsReceived"] >= 6
    # credits: a frame goes out when a result frees room, so none is skipped and at most 2 are ever in flight
    assert last["droppedClient"] == 0, last
    assert all(s["framesSent"] - s["resultsReceived"] - sum(s["droppedServer"].values()) <= 2 for s in samples)
    # the overlay says what skipped frames are (here: none held back by the page; at the server: replaced by
    # newer ones under the "latest" policy when one arrived while another still waited)
    assert overlay_values(r, "here / at server", "paced")[-1].startswith("0 / ")
    assert overlay_values(r, "skipped: server busy", "paced")
    assert_no_console_errors(r)


def test_a_late_watcher_first_gets_the_scene_so_far(server, camera_y4m):
    r = run_driver("late-watch", server.base, "--y4m", str(camera_y4m), "--min-results", "8")
    early, late, streamer = r["notes"]["early"], r["notes"]["late"], r["notes"]["streamer"]
    # the backfill came in chunks and covered the frames streamed before the late watcher joined
    assert late["backfill"] and late["backfill"]["received"] == late["backfill"]["chunks"] >= 1, late["backfill"]
    assert late["backfill"]["frames"] >= 6, late["backfill"]
    # the early watcher joined before the server had any of the streamer's frames (they were held at its socket
    # until then): nothing to backfill
    assert r["notes"]["streamerAtEarlyJoin"]["resultsReceived"] == 0
    assert early["backfill"] is None, early["backfill"]
    # the late watcher holds about what the early one holds (same frames; the backfill as dense as the live maps)
    assert late["frames"] >= early["frames"] - 1, (late["frames"], early["frames"])
    assert 0.7 * early["pointsShown"] <= late["pointsShown"] <= 1.3 * early["pointsShown"], (
        late["pointsShown"],
        early["pointsShown"],
    )
    assert early["poses"] >= 6 and late["poses"] >= 0.7 * early["poses"], (late["poses"], early["poses"])
    assert streamer["resultsReceived"] >= 8
    assert point_pixels(next(p for p in r["screenshots"] if p.endswith("late-finished.png"))) > 3000
    assert not [b for b in late["banners"] if b["key"] == "backfill"]  # the progress banner went away
    assert_no_console_errors(r)


def test_fit_and_follow_frame_the_cloud_not_its_outliers(server):
    r = run_driver("outliers", server.base)
    fit, follow = r["notes"]["fit"], r["notes"]["follow"]
    # the 1 m box fills a good part of the screen although a few points lie ~1 km away
    assert fit["height"] > 0.25 and fit["width"] > 0.15, fit
    assert fit["distance"] < 5, fit
    # the frustums are scaled to the box (robust radius), not to the outliers: a few centimetres deep
    assert fit["frustumScale"] < 0.2, fit
    assert point_pixels(next(p for p in r["screenshots"] if p.endswith("outliers-fit.png"))) > 3000
    # Follow trails the newest camera at the same scale: the box stays in view, close by
    assert follow["mode"] == "follow"
    assert follow["distance"] < 5 and follow["height"] > 0.25, follow
    assert point_pixels(next(p for p in r["screenshots"] if p.endswith("outliers-follow.png"))) > 3000
    assert_no_console_errors(r)


def _overlap(a: dict, b: dict) -> bool:
    return a["left"] < b["right"] and b["left"] < a["right"] and a["top"] < b["bottom"] and b["top"] < a["bottom"]


def test_phone_banner_leaves_the_statistics_visible_and_settings_fit_their_card(server, camera_y4m):
    r = run_driver("layout", server.base, "--y4m", str(camera_y4m))
    first, streaming = r["notes"]["phoneFirstLoad"], r["notes"]["phoneStreaming"]
    # on first load, before any session, the page says the weights are synthetic (from the server's /readyz)
    assert first["sessionId"] is None
    assert first["banner"] and "synthetic" in first["bannerText"].lower(), first
    for when in (first, streaming):
        assert when["banner"] and when["overlay"]["height"] > 0, when
        assert not _overlap(when["banner"], when["overlay"]), when
        assert when["banner"]["right"] <= 390 and when["overlay"]["right"] <= 390, when
    settings = r["notes"]["settings"]
    assert settings["viewport"] == 1280 and len(settings["fields"]) >= 7, settings
    card = settings["card"]
    for field in settings["fields"]:
        assert card["left"] <= field["left"] and field["right"] <= card["right"], (field, card)
    assert_no_console_errors(r)


def test_stop_after_one_frame_releases_the_session(server, camera_y4m):
    r = run_driver("stop-early", server.base, "--y4m", str(camera_y4m))
    before, last = r["notes"]["before"], r["samples"]["stop-early"][-1]
    assert before["resultsReceived"] == 1 and before["sessionId"]
    # the server could not finish a one-frame stream; the page deleted the session instead of leaving it held
    assert r["notes"]["sessionStatus"] == 404
    assert last["sessionId"] is None and last["pill"]["state"] == "idle" and not last["cameraLive"]
    banner = next(b for b in last["banners"] if b["key"] == "finished")
    assert "released" in banner["text"], banner
    assert not [b for b in last["banners"] if b["key"].startswith("error-")], last["banners"]
    assert not last["storedSession"]
    assert_no_console_errors(r)


def test_an_abandoned_tabs_session_is_released_and_the_refused_tab_recovers(client_build, camera_y4m, tmp_path):
    grace = 6
    server = start_server(tmp_path, "--max-sessions", "1", "--orphan-grace-s", str(grace))
    try:
        r = run_driver("orphan", server.base, "--y4m", str(camera_y4m))
    finally:
        server.stop()
    refused, started = r["notes"]["refused"], r["notes"]["started"]
    # the full server said when to retry: the orphan's grace left (not the idle timeout, not a made-up minute)
    assert refused["sessionId"] is None
    assert 1 <= r["notes"]["retryAfterS"] <= grace + 2, r["notes"]
    # and it was true: the start after that wait got a session and results, and the orphan is gone
    assert started["sessionId"] and started["sessionId"] != r["notes"]["abandonedSessionId"]
    assert started["life"] == "streaming" and started["resultsReceived"] >= 2
    assert not [b for b in started["banners"] if b["key"] == "server"], started["banners"]
    assert r["notes"]["abandonedStatus"] == 404
    # the browser logs the refused request itself; nothing else may be an error, and nothing may throw
    errors = [c["text"] for c in r["console"] if c["type"] == "error"]
    assert errors == ["Failed to load resource: the server responded with a status of 503 (Service Unavailable)"]
    assert not r["pageErrors"], r["pageErrors"]

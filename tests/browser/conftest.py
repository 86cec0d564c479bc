"""Fixtures of the browser tests live in live_view_harness.py."""

from live_view_harness import camera_y4m, client_build, media_dir, replay_images, replay_video, server  # noqa: F401

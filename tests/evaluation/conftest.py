"""Fixtures: the rendered 7-Scenes and Neural-RGBD layouts of ``rgbd_scenes`` (built once per session)."""

from __future__ import annotations

import pytest
from rgbd_scenes import build_nrgbd, build_seven_scenes


@pytest.fixture(scope="session")
def seven_scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("7scenes")
    return root, build_seven_scenes(root)


@pytest.fixture(scope="session")
def nrgbd(tmp_path_factory):
    root = tmp_path_factory.mktemp("neural_rgbd")
    return root, build_nrgbd(root)

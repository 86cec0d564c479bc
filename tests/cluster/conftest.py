"""The cluster tests: a real local Ray cluster (all its traffic on 127.0.0.1) and a real redis-server."""

from __future__ import annotations

import sys
from pathlib import Path

from spann3r.server.cluster import keep_ray_on_loopback

# before anything imports ray: Ray reads the switch at import, in this process and in every process it starts
keep_ray_on_loopback()
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))  # service_helpers

"""The robotics outputs run where torch is not installed (a robot's computer with the client only)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is not installed here")

    sys.meta_path.insert(0, NoTorch())
""")


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter where importing torch fails; it prints whether torch got loaded."""
    script = BLOCK_TORCH + textwrap.dedent(code) + '\nprint("torch" in sys.modules)\n'
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_mcap_export_runs_without_torch():
    done = run_without_torch("""
        import io
        import numpy as np
        from spann3r.core.ros_export import write_mcap

        maps = {"pts3d": np.zeros((1, 4, 4, 3), np.float32), "conf": np.full((1, 4, 4), 2, np.float32),
                "colors": np.zeros((1, 4, 4, 3), np.uint8)}
        buf = io.BytesIO()
        write_mcap(buf, maps)
        assert buf.getvalue().startswith(b"\\x89MCAP0\\r\\n")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_live_outputs_import_without_torch():
    done = run_without_torch("""
        from spann3r.client.foxglove_feed import FoxgloveFeed, McapLog
        from spann3r.client.rerun_log import RerunLog
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"

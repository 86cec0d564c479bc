"""The browser client's wire fixtures must be what the current server/protocol.py produces."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol_fixtures  # noqa: E402


def test_committed_fixtures_match_current_protocol():
    files, _ = protocol_fixtures.build()
    stale = []
    for name, data in files.items():
        path = protocol_fixtures.FIXTURE_DIR / name
        if not path.is_file() or path.read_bytes() != data:
            stale.append(name)
    assert not stale, (f"client_js/test/fixtures is stale ({', '.join(stale)}): run "
                       "`python tests/client_js/protocol_fixtures.py` and commit the result")


def test_fixtures_are_valid_server_messages():
    """Each server-message fixture decodes with the server's own validating decoder."""
    from spann3r.server.protocol import decode_server_message

    files, _ = protocol_fixtures.build()
    for name, data in files.items():
        if name.endswith(".msgpack") and not name.startswith("client_"):
            decode_server_message(data)


def test_fixture_build_is_deterministic():
    a, _ = protocol_fixtures.build()
    b, _ = protocol_fixtures.build()
    assert a == b


@pytest.mark.parametrize("name", ["client_frame.msgpack", "client_control.msgpack"])
def test_client_fixtures_are_valid_client_messages(name):
    from spann3r.server.protocol import decode_client_message

    files, _ = protocol_fixtures.build()
    decode_client_message(files[name])

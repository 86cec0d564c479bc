"""Fixtures of the server tests (helpers live in service_helpers.py; ``small_frames`` and ``redis_url`` are in
tests/conftest.py, shared with the cluster tests)."""

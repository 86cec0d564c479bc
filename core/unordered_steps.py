"""Moved into ``core.unordered`` (one implementation of the unordered mode); this name stays only until
``server/jobs.py`` and ``tests/server/test_jobs.py`` import ``UnorderedSteps`` from there."""

from .unordered import UnorderedSteps, unit_count

__all__ = ["UnorderedSteps", "unit_count"]

"""Spann3R core: model, spatial memory, streaming engine, geometry, weights and export. No web code."""

if __name__ != "spann3r.core":  # imported as a top-level folder, e.g. from the repository root
    raise ImportError(
        f"import spann3r.core instead of {__name__!r}: the folder is that package, and importing it "
        "by its folder name would load a second copy of every class"
    )

from .config import MemoryConfig, ModelConfig

__all__ = ["MemoryConfig", "ModelConfig"]

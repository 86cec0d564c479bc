"""Spann3R core: model, spatial memory, streaming engine, geometry, weights and export. No web code."""

from .config import MemoryConfig, ModelConfig

__all__ = ["ModelConfig", "MemoryConfig"]

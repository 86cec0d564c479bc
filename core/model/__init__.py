from .spann3r import Spann3R, HeadOutput

__all__ = ["Spann3R", "HeadOutput"]

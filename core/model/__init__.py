from .spann3r import HeadOutput, Spann3R

__all__ = ["HeadOutput", "Spann3R"]

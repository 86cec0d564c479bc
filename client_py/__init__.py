"""Python client of the Spann3R streaming service (library + the ``spann3r stream`` command)."""

if __name__ != "spann3r.client":  # imported as a top-level folder, e.g. from the repository root
    raise ImportError(
        f"import spann3r.client instead of {__name__!r}: the folder is that package, and importing it "
        "by its folder name would load a second copy of every class"
    )

from .client import ResumeGap, ServiceError, StreamClient, encode_image, reconnecting_stream, stream
from .record import Recording
from .sources import is_live, iter_source

__all__ = [
    "Recording",
    "ResumeGap",
    "ServiceError",
    "StreamClient",
    "encode_image",
    "is_live",
    "iter_source",
    "reconnecting_stream",
    "stream",
]

"""Python client of the Spann3R streaming service (library + the ``spann3r stream`` command)."""

from .client import ServiceError, StreamClient, encode_image, stream
from .record import Recording
from .sources import is_live, iter_source

__all__ = ["StreamClient", "ServiceError", "stream", "encode_image", "Recording", "iter_source", "is_live"]

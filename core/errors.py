"""Exceptions whose message is meant for the user (CLI prints them as one line; the server maps them to codes)."""

from .engine import StreamError
from .preprocess import ImageError
from .sources import SourceError
from .weights import DeviceError, WeightsError

USER_ERRORS: tuple[type[Exception], ...] = (WeightsError, DeviceError, ImageError, SourceError, StreamError)

__all__ = ["USER_ERRORS", "DeviceError", "ImageError", "SourceError", "StreamError", "WeightsError"]

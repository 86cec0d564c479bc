"""Collection uploads: one request body → named, decoded, model-ready images, or a refusal that says why.

Accepted bodies: ``multipart/form-data`` whose file parts are images and/or zip archives, or one zip archive
as the raw body (``application/zip``). Safety rules:

- the body is streamed into the job's own folder under generated names (``part-0000``), counting bytes: it
  stops at ``job_max_bytes``, whatever Content-Length claimed;
- nothing is ever extracted: archive members are read one at a time into memory, decoded, and dropped; a
  name from the client (file name, member name) is a label and never part of a path;
- archive members are checked before any is read: count, declared total size, absolute paths, ``..``,
  drive letters, symbolic links, encryption, non-image suffixes; while reading, the bytes actually inflated
  are counted against the declared size and the total budget (a lying header cannot make a bomb);
- every image is decoded with ``core.preprocess``; its size is checked from its header first.
"""

from __future__ import annotations

import asyncio
import io
import re
import stat
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from ..core.preprocess import ImageError, PreparedFrame, decode_and_prepare

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks
from ..core.sources import IMAGE_SUFFIXES

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or the end record of an empty archive
ZIP_TYPES = {"application/zip", "application/x-zip-compressed", "application/octet-stream"}
SKIPPED_DIRS = {"__MACOSX"}  # resource forks macOS adds to archives: not images, not the user's files
SKIPPED_FILES = {".DS_Store", "Thumbs.db", "desktop.ini"}
MAX_NAME = 200  # characters of a name kept as a label
READ_CHUNK = 1 << 20


class UploadRefused(Exception):
    """A refused upload: HTTP status, error code and a message for the user."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class UploadLimits:
    max_files: int  # images in the whole collection
    max_bytes: int  # request body, and again the total of archive members once inflated
    max_pixels: int  # per image, checked from its header


@dataclass
class ReceivedPart:
    label: str  # the client's file name (display only)
    path: Path  # generated, inside the job's folder
    size: int
    archive: bool = False  # sent as a zip archive (raw body): never read as an image


def _too_many(n: int, limits: UploadLimits) -> UploadRefused:
    return UploadRefused(
        413,
        "too_many_files",
        f"{n} images, above the limit of {limits.max_files}: the unordered "
        "mode decodes every ordered pair of images, N(N-1) decodes",
    )


def _label(raw: str, fallback: str) -> str:
    """A client-given file name as a display label: last path component, printable, bounded."""
    name = re.split(r"[/\\]", raw)[-1]
    name = "".join(c for c in name if c.isprintable()).strip()[:MAX_NAME]
    return name if name and name not in (".", "..") else fallback


# ----------------------------------------------------------------------------------------- receiving the body
class _PartWriter:
    """python-multipart callbacks: each file part into a new generated file, with the shared byte budget."""

    def __init__(self, folder: Path, limits: UploadLimits):
        self.folder, self.limits = folder, limits
        self.parts: list[ReceivedPart] = []
        self.header_field = b""
        self.headers: dict[bytes, bytes] = {}
        self.header_value = b""
        self.file: BinaryIO | None = None
        self.ended = False
        self.error: UploadRefused | None = None

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._field,
            "on_header_value": self._value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_end": self._finished,
        }

    def _begin(self) -> None:
        self.headers, self.header_field, self.header_value = {}, b"", b""

    def _field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def _value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def _header_end(self) -> None:
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field, self.header_value = b"", b""

    def _headers_done(self) -> None:
        from python_multipart.multipart import parse_options_header

        _disposition, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        field = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" not in options:
            raise UploadRefused(
                400,
                "bad_upload",
                f"form field {field!r} is not a file: send the images (or zip "
                "archives) as file parts; job options go in the query string",
            )
        if len(self.parts) >= self.limits.max_files:
            raise _too_many(len(self.parts) + 1, self.limits)
        k = len(self.parts)
        label = _label(options[b"filename"].decode("utf-8", "replace"), f"image_{k:04d}")
        path = self.folder / f"part-{k:04d}"
        self.file = open(path, "xb")  # noqa: SIM115 (closed in _end, or by close())
        self.parts.append(ReceivedPart(label, path, 0))

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.file is None:
            return
        self.file.write(data[start:end])
        self.parts[-1].size += end - start

    def _end(self) -> None:
        self.close()

    def _finished(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


async def receive_body(
    chunks: AsyncIterator[bytes],
    content_type: str | None,
    content_length: int | None,
    folder: Path,
    limits: UploadLimits,
) -> list[ReceivedPart]:
    """Stream the request body into ``folder``; returns the file parts received (a raw zip is one part)."""
    from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header

    if content_length is not None and content_length > limits.max_bytes:
        raise UploadRefused(
            413, "too_large", f"upload of {content_length} bytes exceeds the limit of {limits.max_bytes}"
        )
    raw_type, options = parse_options_header(content_type or "")
    ctype = raw_type.decode("latin-1").lower()
    received = 0

    async def bounded():
        nonlocal received
        from starlette.requests import ClientDisconnect

        try:
            async for chunk in chunks:
                received += len(chunk)
                if received > limits.max_bytes:
                    raise UploadRefused(413, "too_large", f"upload exceeds the limit of {limits.max_bytes} bytes")
                if chunk:
                    yield chunk
        except ClientDisconnect:
            raise UploadRefused(400, "bad_upload", "the client went away during the upload") from None

    if ctype == "multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise UploadRefused(400, "bad_upload", "multipart body without a boundary")
        writer = _PartWriter(folder, limits)
        try:
            parser = MultipartParser(boundary, writer.callbacks())
            async for chunk in bounded():
                await asyncio.to_thread(parser.write, chunk)  # parsing and file writes off the event loop
            parser.finalize()
        except MultipartParseError as exc:
            raise UploadRefused(400, "bad_upload", f"malformed multipart body ({exc})") from None
        finally:
            writer.close()
        if not writer.ended:
            raise UploadRefused(400, "bad_upload", "truncated multipart body (no closing boundary)")
        if not writer.parts:
            raise UploadRefused(400, "bad_upload", "no files in the upload")
        return writer.parts
    if ctype in ZIP_TYPES:
        path = folder / "part-0000"
        size = 0
        with open(path, "xb") as f:
            async for chunk in bounded():
                await asyncio.to_thread(f.write, chunk)
                size += len(chunk)
        return [ReceivedPart("upload.zip", path, size, archive=True)]
    raise UploadRefused(
        415,
        "unsupported_media_type",
        f"unsupported content type {ctype or 'none'!r}: send "
        "multipart/form-data (image files and/or zip archives) or one application/zip body",
    )


# ----------------------------------------------------------------------------------------- archives
def _unsafe_reason(name: str) -> str | None:
    """Why a member name must not be accepted (None when it is a plain relative path)."""
    if "\x00" in name:
        return "contains a NUL character"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if any(p == ".." for p in re.split(r"[/\\]", name)):
        return "climbs out of the archive ('..')"
    return None


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)  # 3: Unix, mode in the high word


def _skipped(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return bool(parts) and (parts[0] in SKIPPED_DIRS or parts[-1] in SKIPPED_FILES)


def _archive_members(zf: zipfile.ZipFile, label: str, limits: UploadLimits, budget: int) -> list[zipfile.ZipInfo]:
    """The image members of an archive, sorted by name, after every check that needs no reading."""
    infos = zf.infolist()
    if len(infos) > 4 * limits.max_files + 64:  # directories and skipped files, but not without bound
        raise UploadRefused(
            413,
            "too_many_files",
            f"{label}: {len(infos)} archive entries; a collection holds at most {limits.max_files} images",
        )
    members = []
    for info in infos:
        reason = _unsafe_reason(info.filename)
        if reason is None and _is_symlink(info):
            reason = "is a symbolic link"
        if reason is not None:
            raise UploadRefused(422, "unsafe_member", f"{label}: member {info.filename!r} {reason}; refused")
        if info.is_dir() or _skipped(info.filename):
            continue
        if info.flag_bits & 0x1:
            raise UploadRefused(422, "bad_archive", f"{label}: member {info.filename!r} is encrypted")
        if PurePosixPath(info.filename).suffix.lower() not in IMAGE_SUFFIXES:
            raise UploadRefused(
                422,
                "not_an_image",
                f"{label}: member {info.filename!r} is not an image file "
                f"(expected {', '.join(sorted(IMAGE_SUFFIXES))})",
            )
        members.append(info)
    declared = sum(i.file_size for i in members)
    if declared > budget:
        raise UploadRefused(
            413,
            "too_large",
            f"{label}: its files inflate to {declared} bytes, above the limit of {limits.max_bytes} (zip bomb guard)",
        )
    return sorted(members, key=lambda i: i.filename)


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str, budget: int) -> bytes:
    """A member's bytes, counting what is really inflated against its declared size and the budget."""
    out = io.BytesIO()
    try:
        with zf.open(info) as f:
            while chunk := f.read(READ_CHUNK):
                out.write(chunk)
                if out.tell() > info.file_size:
                    raise UploadRefused(
                        413,
                        "too_large",
                        f"{label}: member {info.filename!r} inflates beyond its declared size (zip bomb guard)",
                    )
                if out.tell() > budget:
                    raise UploadRefused(
                        413, "too_large", f"{label}: its files inflate beyond the limit (zip bomb guard)"
                    )
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError) as exc:
        raise UploadRefused(
            422, "bad_archive", f"{label}: member {info.filename!r} cannot be read ({exc.__class__.__name__}: {exc})"
        ) from None
    return out.getvalue()


# ----------------------------------------------------------------------------------------- images
IMAGE_REFUSAL_STATUS = {"image_too_large": 413}  # other image refusals (bad_image, bad_aspect_ratio): 422


def decode_member(name: str, data: bytes, max_pixels: int) -> PreparedFrame:
    """Encoded image → model input (the same checks as stream frames); refusals name the file (``name``)."""
    try:
        return decode_and_prepare(data, "encoded", max_pixels=max_pixels)
    except ImageError as exc:
        raise UploadRefused(IMAGE_REFUSAL_STATUS.get(exc.code, 422), exc.code, f"{name}: {exc.message}") from None


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in ZIP_MAGIC


def read_collection(parts: list[ReceivedPart], limits: UploadLimits) -> list[tuple[str, PreparedFrame]]:
    """Received parts → ``(name, PreparedFrame)`` in input order: parts in the order sent, an archive's images
    sorted by member name (as ``spann3r reconstruct`` sorts a folder). Blocking: run it in a thread."""
    frames: list[tuple[str, PreparedFrame]] = []
    names: set[str] = set()
    budget = limits.max_bytes

    def add(name: str, data: bytes) -> None:
        if name in names:
            raise UploadRefused(422, "duplicate_name", f"two images are named {name!r}; names must be unique")
        if len(frames) >= limits.max_files:
            raise _too_many(len(frames) + 1, limits)
        names.add(name)
        frames.append((name, decode_member(name, data, limits.max_pixels)))

    for part in parts:
        if not (part.archive or _is_zip(part.path)):
            budget -= part.size
            add(part.label, part.path.read_bytes())
            continue
        try:
            zf = zipfile.ZipFile(part.path)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
            raise UploadRefused(400, "bad_archive", f"{part.label}: not a readable zip archive ({exc})") from None
        with zf:
            members = _archive_members(zf, part.label, limits, budget)
            if len(frames) + len(members) > limits.max_files:
                raise _too_many(len(frames) + len(members), limits)
            for info in members:
                data = _read_member(zf, info, part.label, budget)
                budget -= len(data)
                add(info.filename, data)
    if len(frames) < 2:
        raise UploadRefused(
            422, "too_few_images", f"an unordered collection needs at least two images, the upload holds {len(frames)}"
        )
    return frames

"""Where session state is kept: named blobs per session, behind one small interface, with two backends.

A commit puts some blobs and drops others, atomically: a reader (a restart after a crash at any moment) sees
the session either as before the commit or as after it, never a mix.
- ``FolderStore`` (``--state-dir``): ``ID.json`` is the manifest (blob name → file), replaced by a rename; the blobs
  are immutable files ``ID.d/NAME.N`` written before it. Files no manifest names are leftovers of an interrupted
  commit and are removed by the next one.
- ``RedisStore`` (``--state-url redis://…``): one hash per session, a commit is one MULTI/EXEC transaction.

Blocking I/O: call from a thread.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

SESSION_ID = re.compile(r"[0-9a-f]{32}")  # server-made ids; nothing else is ever used to build a path or key
BLOB_NAME = re.compile(r"[a-z0-9_.-]{1,64}")
MANIFEST_FORMAT = "spann3r-store/1"


class SessionStore(Protocol):
    def commit(self, session_id: str, put: dict[str, bytes], drop: Iterable[str] = ()) -> int:
        """Atomically write ``put`` and remove ``drop``; returns the bytes written."""
        ...

    def get(self, session_id: str) -> dict[str, bytes]:
        """Every blob of the session ({} when it has none)."""
        ...

    def delete(self, session_id: str) -> None: ...

    def sessions(self) -> list[str]: ...


def _check(session_id: str, names: Iterable[str] = ()) -> None:
    if not SESSION_ID.fullmatch(session_id):
        raise ValueError(f"not a session id: {session_id!r}")
    for name in names:
        if not BLOB_NAME.fullmatch(name):
            raise ValueError(f"not a blob name: {name!r}")


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class FolderStore:
    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _manifest_path(self, session_id: str) -> Path:
        return self.folder / f"{session_id}.json"

    def _blob_dir(self, session_id: str) -> Path:
        return self.folder / f"{session_id}.d"

    def _manifest(self, session_id: str) -> dict:
        path = self._manifest_path(session_id)
        if not path.exists():
            return {"format": MANIFEST_FORMAT, "version": 0, "blobs": {}}
        m = json.loads(path.read_bytes())
        if m.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{path.name} is not a session manifest of format {MANIFEST_FORMAT}")
        return m

    def commit(self, session_id: str, put: dict[str, bytes], drop: Iterable[str] = ()) -> int:
        _check(session_id, [*put, *drop])
        m = self._manifest(session_id)
        version = m["version"] + 1
        blobs: dict[str, str] = {k: v for k, v in m["blobs"].items() if k not in set(drop)}
        d = self._blob_dir(session_id)
        d.mkdir(exist_ok=True)
        for name, data in put.items():  # new immutable files: the current manifest never names them
            _write_durably(d / f"{name}.{version}", data)
            blobs[name] = f"{name}.{version}"
        tmp = self._manifest_path(session_id).with_suffix(".json.tmp")
        _write_durably(tmp, json.dumps({"format": MANIFEST_FORMAT, "version": version, "blobs": blobs}).encode())
        os.replace(tmp, self._manifest_path(session_id))  # the commit point
        live = set(blobs.values())
        for p in d.iterdir():
            if p.name not in live:
                p.unlink(missing_ok=True)
        return sum(len(b) for b in put.values())

    def get(self, session_id: str) -> dict[str, bytes]:
        _check(session_id)
        d = self._blob_dir(session_id)
        return {name: (d / file).read_bytes() for name, file in self._manifest(session_id)["blobs"].items()}

    def delete(self, session_id: str) -> None:
        """The manifest first: without it the blobs are never read."""
        _check(session_id)
        self._manifest_path(session_id).unlink(missing_ok=True)
        shutil.rmtree(self._blob_dir(session_id), ignore_errors=True)

    def sessions(self) -> list[str]:
        return [p.stem for p in sorted(self.folder.glob("*.json")) if SESSION_ID.fullmatch(p.stem)]


class RedisStore:
    def __init__(self, url: str, prefix: str = "spann3r:session:"):
        try:
            import redis
        except ImportError as exc:  # the server extra installs it
            raise RuntimeError(f"--state-url redis:// needs redis-py (pip install 'redis>=5'): {exc}") from None
        self.client = redis.Redis.from_url(url)
        self.prefix = prefix

    def _key(self, session_id: str) -> str:
        return self.prefix + session_id

    def commit(self, session_id: str, put: dict[str, bytes], drop: Iterable[str] = ()) -> int:
        _check(session_id, [*put, *drop])
        drop = [n for n in drop if n not in put]
        with self.client.pipeline(transaction=True) as p:  # MULTI … EXEC
            if drop:
                p.hdel(self._key(session_id), *drop)
            if put:
                p.hset(self._key(session_id), mapping=put)  # type: ignore[arg-type]
            p.execute()
        return sum(len(b) for b in put.values())

    def get(self, session_id: str) -> dict[str, bytes]:
        _check(session_id)
        raw: dict[bytes, bytes] = self.client.hgetall(self._key(session_id))  # type: ignore[assignment]
        return {k.decode(): v for k, v in raw.items()}

    def delete(self, session_id: str) -> None:
        _check(session_id)
        self.client.delete(self._key(session_id))

    def sessions(self) -> list[str]:
        ids = (k.decode()[len(self.prefix) :] for k in self.client.scan_iter(match=self.prefix + "*"))
        return sorted(i for i in ids if SESSION_ID.fullmatch(i))


def open_store(state_dir: Path | None, state_url: str | None) -> SessionStore | None:
    """The store the settings name (a URL wins over a folder); None: sessions are not kept."""
    if state_url:
        if not state_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"unsupported state URL {state_url!r}: use redis://HOST:PORT/DB")
        return RedisStore(state_url)
    return FolderStore(state_dir) if state_dir is not None else None

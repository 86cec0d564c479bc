"""Where session state is kept: named blobs per session, behind one small interface, with two backends.

A commit puts some blobs and drops others, atomically: a reader (a restart after a crash at any moment) sees
the session either as before the commit or as after it, never a mix.
- ``FolderStore`` (``--state-dir``): ``ID.json`` is the manifest (blob name → file), replaced by a rename; the blobs
  are immutable files ``ID.d/NAME.N`` written before it. Files no manifest names are leftovers of an interrupted
  commit and are removed by the next one.
- ``RedisStore`` (``--state-url redis://…``): one hash per session, a commit is one MULTI/EXEC transaction.

In a cluster (server/cluster.py) the store is also the **session directory**: each session's owner (the worker
holding it) and an ownership epoch, bumped by every takeover. The directory lives beside the state because the
fence must be checked in the same atomic step as the write: a commit or delete that names an owner is refused
(``OwnershipLost``) once another worker has claimed the session, so a worker presumed dead can never overwrite the
state its successor restored. Single-process servers name no owner and are never fenced.

Blocking I/O: call from a thread.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

SESSION_ID = re.compile(r"[0-9a-f]{32}")  # server-made ids; nothing else is ever used to build a path or key
BLOB_NAME = re.compile(r"[a-z0-9_.-]{1,64}")
MANIFEST_FORMAT = "spann3r-store/1"


@dataclass(frozen=True)
class Owner:
    """Who holds a session in a cluster: a worker, and the epoch of its claim (1 at creation, +1 per takeover)."""

    worker: str
    epoch: int

    def to_json(self) -> str:
        return json.dumps({"worker": self.worker, "epoch": self.epoch})

    @classmethod
    def from_json(cls, data: bytes | str) -> Owner:
        d = json.loads(data)
        return cls(str(d["worker"]), int(d["epoch"]))


class OwnershipLost(RuntimeError):
    """The session's owner is not the one the caller named: another worker claimed it (or it was released)."""


class SessionStore(Protocol):
    def commit(
        self, session_id: str, put: dict[str, bytes], drop: Iterable[str] = (), fence: Owner | None = None
    ) -> int:
        """Atomically write ``put`` and remove ``drop``; returns the bytes written. With ``fence``, only while the
        session's owner is ``fence`` (else ``OwnershipLost``, nothing written)."""
        ...

    def get(self, session_id: str) -> dict[str, bytes]:
        """Every blob of the session ({} when it has none)."""
        ...

    def delete(self, session_id: str, fence: Owner | None = None) -> None:
        """Remove the session's state (not its owner record); fenced as ``commit``."""
        ...

    def sessions(self) -> list[str]: ...

    # the directory (cluster mode)
    def claim(self, session_id: str, worker: str, expect: Owner | None) -> Owner:
        """Make ``worker`` the owner with the next epoch, if the owner now is ``expect`` (None: no owner yet);
        else ``OwnershipLost``."""
        ...

    def owner(self, session_id: str) -> Owner | None: ...

    def owners(self) -> dict[str, Owner]: ...

    def release(self, session_id: str, fence: Owner) -> None:
        """Remove the owner record (the session is gone), if the owner is still ``fence``."""
        ...


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
    """Owner records are ``ID.owner`` files; claims and fenced writes hold an exclusive lock on the folder's
    ``.lock`` file, so processes sharing the folder (a local cluster) see them in one order."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.folder / ".lock", "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextmanager
    def _fenced(self, session_id: str, fence: Owner | None) -> Iterator[None]:
        if fence is None:
            yield
            return
        with self._locked():
            if self.owner(session_id) != fence:
                raise OwnershipLost(f"session {session_id} is no longer owned by {fence.worker}/{fence.epoch}")
            yield

    def _owner_path(self, session_id: str) -> Path:
        return self.folder / f"{session_id}.owner"

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

    def commit(
        self, session_id: str, put: dict[str, bytes], drop: Iterable[str] = (), fence: Owner | None = None
    ) -> int:
        _check(session_id, [*put, *drop])
        with self._fenced(session_id, fence):
            return self._commit(session_id, put, drop)

    def _commit(self, session_id: str, put: dict[str, bytes], drop: Iterable[str]) -> int:
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

    def delete(self, session_id: str, fence: Owner | None = None) -> None:
        """The manifest first: without it the blobs are never read."""
        _check(session_id)
        with self._fenced(session_id, fence):
            self._manifest_path(session_id).unlink(missing_ok=True)
            shutil.rmtree(self._blob_dir(session_id), ignore_errors=True)

    def sessions(self) -> list[str]:
        return [p.stem for p in sorted(self.folder.glob("*.json")) if SESSION_ID.fullmatch(p.stem)]

    def claim(self, session_id: str, worker: str, expect: Owner | None) -> Owner:
        _check(session_id)
        with self._locked():
            now = self.owner(session_id)
            if now != expect:
                raise OwnershipLost(f"session {session_id} is owned by {now}, not {expect}")
            new = Owner(worker, 1 if now is None else now.epoch + 1)
            path = self._owner_path(session_id)
            tmp = path.with_suffix(".owner.tmp")
            _write_durably(tmp, new.to_json().encode())
            os.replace(tmp, path)
            return new

    def owner(self, session_id: str) -> Owner | None:
        _check(session_id)
        try:
            return Owner.from_json(self._owner_path(session_id).read_bytes())
        except FileNotFoundError:
            return None

    def owners(self) -> dict[str, Owner]:
        found = {}
        for p in sorted(self.folder.glob("*.owner")):
            if SESSION_ID.fullmatch(p.stem) and (o := self.owner(p.stem)) is not None:
                found[p.stem] = o
        return found

    def release(self, session_id: str, fence: Owner) -> None:
        _check(session_id)
        with self._fenced(session_id, fence):
            self._owner_path(session_id).unlink(missing_ok=True)


class RedisStore:
    def __init__(self, url: str, prefix: str = "spann3r:session:"):
        try:
            import redis
        except ImportError as exc:  # the server extra installs it
            raise RuntimeError(f"--state-url redis:// needs redis-py (pip install 'redis>=5'): {exc}") from None
        self.client = redis.Redis.from_url(url)
        self.prefix = prefix
        self.owners_key = prefix.rstrip(":").rsplit(":", 1)[0] + ":owners"  # one hash: session id → Owner JSON

    def _key(self, session_id: str) -> str:
        return self.prefix + session_id

    def _transaction(self, session_id: str, fence: Owner | None, write) -> None:
        """``write(pipeline)`` in MULTI … EXEC; with ``fence``, under WATCH of the owners, checked first."""

        def run(p) -> None:
            if fence is not None:
                now = p.hget(self.owners_key, session_id)
                if now is None or Owner.from_json(now) != fence:
                    raise OwnershipLost(f"session {session_id} is no longer owned by {fence.worker}/{fence.epoch}")
            p.multi()
            write(p)

        if fence is None:
            with self.client.pipeline(transaction=True) as p:
                write(p)
                p.execute()
        else:  # a concurrent claim between the check and EXEC aborts it, and redis-py runs it again
            self.client.transaction(run, self.owners_key)

    def commit(
        self, session_id: str, put: dict[str, bytes], drop: Iterable[str] = (), fence: Owner | None = None
    ) -> int:
        _check(session_id, [*put, *drop])
        drop = [n for n in drop if n not in put]

        def write(p) -> None:
            if drop:
                p.hdel(self._key(session_id), *drop)
            if put:
                p.hset(self._key(session_id), mapping=put)

        self._transaction(session_id, fence, write)
        return sum(len(b) for b in put.values())

    def get(self, session_id: str) -> dict[str, bytes]:
        _check(session_id)
        raw: dict[bytes, bytes] = self.client.hgetall(self._key(session_id))  # type: ignore[assignment]
        return {k.decode(): v for k, v in raw.items()}

    def delete(self, session_id: str, fence: Owner | None = None) -> None:
        _check(session_id)
        self._transaction(session_id, fence, lambda p: p.delete(self._key(session_id)))

    def sessions(self) -> list[str]:
        ids = (k.decode()[len(self.prefix) :] for k in self.client.scan_iter(match=self.prefix + "*"))
        return sorted(i for i in ids if SESSION_ID.fullmatch(i))

    def claim(self, session_id: str, worker: str, expect: Owner | None) -> Owner:
        _check(session_id)
        claimed: list[Owner] = []

        def run(p) -> None:
            raw = p.hget(self.owners_key, session_id)
            now = None if raw is None else Owner.from_json(raw)
            if now != expect:
                raise OwnershipLost(f"session {session_id} is owned by {now}, not {expect}")
            new = Owner(worker, 1 if now is None else now.epoch + 1)
            p.multi()
            p.hset(self.owners_key, session_id, new.to_json())
            claimed[:] = [new]

        self.client.transaction(run, self.owners_key)
        return claimed[0]

    def owner(self, session_id: str) -> Owner | None:
        _check(session_id)
        raw = self.client.hget(self.owners_key, session_id)
        return None if raw is None else Owner.from_json(raw)

    def owners(self) -> dict[str, Owner]:
        raw: dict[bytes, bytes] = self.client.hgetall(self.owners_key)  # type: ignore[assignment]
        return {k.decode(): Owner.from_json(v) for k, v in raw.items() if SESSION_ID.fullmatch(k.decode())}

    def release(self, session_id: str, fence: Owner) -> None:
        _check(session_id)
        self._transaction(session_id, fence, lambda p: p.hdel(self.owners_key, session_id))


def open_store(state_dir: Path | None, state_url: str | None) -> SessionStore | None:
    """The store the settings name (a URL wins over a folder); None: sessions are not kept."""
    if state_url:
        if not state_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"unsupported state URL {state_url!r}: use redis://HOST:PORT/DB")
        return RedisStore(state_url)
    return FolderStore(state_dir) if state_dir is not None else None

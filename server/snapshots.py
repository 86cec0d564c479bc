"""The session snapshot format, written and read in this one place: ``SessionRecord`` (the session's counters and
identity, JSON) beside the stream bytes (core.snapshot) and the export buffer (plain npz arrays, no pickle).

Files per session in the state dir: ``ID.json`` (the record, written last: a snapshot without it is no snapshot),
``ID.stream``, ``ID.export.npz``. A snapshot is deleted when the session's in-memory state moves past what it can
represent (a reset starts a new stream): a restart must never bring back a stream the client abandoned.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .results import Calibration

SESSION_ID = re.compile(r"[0-9a-f]{32}")  # server-made ids; nothing else is ever used to build a path
SNAPSHOT_FORMAT = "spann3r-session/1"
SUFFIXES = (".json", ".stream", ".export.npz")


@dataclass
class SessionRecord:
    """What a snapshot keeps of a session besides its stream and export buffer (tokens only as hashes)."""

    id: str
    token_hash: str
    watch_hash: str
    settings: dict
    finished: bool
    frames_processed: int
    last_seq: int | None
    seq_by_index: dict[int, int]
    calibration: Calibration | None
    frames_received: int
    frames_rejected: int
    dropped: dict[str, int]
    export_decimation: int

    def to_json(self) -> bytes:
        d = asdict(self)
        d["seq_by_index"] = {str(k): v for k, v in self.seq_by_index.items()}
        return json.dumps({"format": SNAPSHOT_FORMAT, **d}).encode()

    @classmethod
    def from_json(cls, data: bytes | str, session_id: str) -> SessionRecord:
        d = json.loads(data)
        if d.pop("format", None) != SNAPSHOT_FORMAT or d.get("id") != session_id:
            raise ValueError(f"{session_id}.json is not a session snapshot of this format")
        d["seq_by_index"] = {int(k): v for k, v in d["seq_by_index"].items()}
        d["calibration"] = None if d["calibration"] is None else Calibration(**d["calibration"])
        return cls(**d)


class SnapshotFiles:
    """One session's snapshot files. Blocking I/O: call from a thread."""

    def __init__(self, state_dir: Path, session_id: str):
        assert SESSION_ID.fullmatch(session_id)
        self.record_path, self.stream_path, self.export_path = (state_dir / f"{session_id}{s}" for s in SUFFIXES)
        self.session_id = session_id

    def write(self, record: SessionRecord, stream: bytes, export: dict[str, np.ndarray]) -> None:
        """Each file atomically (temp + rename), the record last."""
        writers: list[tuple[Path, Callable[[BinaryIO], object]]] = [
            (self.stream_path, lambda f: f.write(stream)),
            (self.export_path, lambda f: np.savez(f, **export)),
            (self.record_path, lambda f: f.write(record.to_json()))]
        for path, write_fn in writers:
            tmp = path.with_suffix(path.suffix + ".tmp")
            with open(tmp, "wb") as f:
                write_fn(f)
            os.replace(tmp, path)

    def read(self) -> tuple[SessionRecord, bytes, dict[str, np.ndarray]]:
        record = SessionRecord.from_json(self.record_path.read_bytes(), self.session_id)
        with np.load(self.export_path, allow_pickle=False) as z:
            export = {k: z[k] for k in z.files}
        return record, self.stream_path.read_bytes(), export

    def delete(self) -> None:
        """The record first: without it the other files are never restored."""
        for path in (self.record_path, self.stream_path, self.export_path):
            path.unlink(missing_ok=True)

    def exists(self) -> bool:
        return self.record_path.exists()


def snapshot_ids(state_dir: Path) -> list[str]:
    """Session ids with a snapshot record in ``state_dir``."""
    return [p.stem for p in sorted(state_dir.glob("*.json")) if SESSION_ID.fullmatch(p.stem)]

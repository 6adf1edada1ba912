"""The embedded store: one SQLite file for model checkpoints (and the outbox, silences, feedback).

A checkpoint is each detector's whole engine as named numpy arrays (no
pickle), one row per array holding its raw bytes, plus a little JSON, all
detectors written in one transaction, so a crash leaves either the old
checkpoint or the new one, never a mix.  SQLite's WAL journal makes that
atomic and cheap.  Each array goes to SQLite straight from its memory: at a
million series the state is ~2 GB, and packing it into one archive first
would hold it three more times at once.  (Checkpoints written as one ``.npz``
blob, before, are still read.)

>>> import tempfile, pathlib, numpy as np
>>> store = Store(pathlib.Path(tempfile.mkdtemp()) / "state.db")
>>> store.save_checkpoints([Checkpoint("cpu", "f1", 10.0, {"a": np.arange(3)}, {"last_eval": 5.0})])
24
>>> saved = store.load_checkpoint("cpu")
>>> saved.arrays["a"].tolist(), saved.extra
([0, 1, 2], {'last_eval': 5.0})
>>> store.close()
"""

from __future__ import annotations

import io
import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: An array is written in parts of at most this many bytes (SQLite's limit for one value is 1 GB).
PART_BYTES = 256 << 20


class StoreError(RuntimeError):
    """The store file cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class Checkpoint:
    """One detector's saved state."""

    detector: str
    fingerprint: str
    saved_at: float
    arrays: dict[str, np.ndarray]
    extra: dict[str, Any]


def _unpack(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


class Store:
    """An SQLite file shared by the service's parts; ``lock`` serialises writers.

    Other modules (the outbox, silences) create their own tables on
    :attr:`connection` while holding :attr:`lock`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA synchronous=NORMAL")
            self.connection.execute(
                "CREATE TABLE IF NOT EXISTS checkpoints (detector TEXT PRIMARY KEY,"
                " fingerprint TEXT NOT NULL, saved_at REAL NOT NULL, arrays BLOB NOT NULL,"
                " extra TEXT NOT NULL)"
            )
            self.connection.execute(
                "CREATE TABLE IF NOT EXISTS checkpoint_arrays (detector TEXT NOT NULL, name TEXT NOT NULL,"
                " part INTEGER NOT NULL, dtype TEXT NOT NULL, shape TEXT NOT NULL, data BLOB NOT NULL,"
                " PRIMARY KEY (detector, name, part))"
            )
            self.connection.execute(
                "CREATE TABLE IF NOT EXISTS feedback (incident_id TEXT NOT NULL, verdict TEXT NOT NULL,"
                " at REAL NOT NULL, event TEXT NOT NULL, made_by TEXT NOT NULL DEFAULT '')"
            )
            columns = {row[1] for row in self.connection.execute("PRAGMA table_info(feedback)")}
            if "made_by" not in columns:  # a store written before feedback recorded who gave it
                self.connection.execute("ALTER TABLE feedback ADD COLUMN made_by TEXT NOT NULL DEFAULT ''")
        except (OSError, sqlite3.Error) as error:
            raise StoreError(
                f"{path}: cannot open the state store ({error}); set `store:` to a writable file path"
            ) from None
        self.lock = threading.Lock()

    def save_checkpoints(self, checkpoints: list[Checkpoint]) -> int:
        """Replace the saved state of these detectors, all or nothing; returns the bytes of arrays written."""
        rows = [(c.detector, c.fingerprint, c.saved_at, b"", json.dumps(c.extra)) for c in checkpoints]
        written = 0
        with self.lock:
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                self.connection.executemany("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?)", rows)
                for checkpoint in checkpoints:
                    self.connection.execute(
                        "DELETE FROM checkpoint_arrays WHERE detector = ?", (checkpoint.detector,)
                    )
                    for name, array in checkpoint.arrays.items():
                        array = np.ascontiguousarray(array)
                        raw = array.reshape(-1).view(np.uint8)  # its memory, not a copy
                        for part, start in enumerate(range(0, max(len(raw), 1), PART_BYTES)):
                            self.connection.execute(
                                "INSERT INTO checkpoint_arrays VALUES (?, ?, ?, ?, ?, ?)",
                                (
                                    checkpoint.detector,
                                    name,
                                    part,
                                    array.dtype.str,
                                    json.dumps(array.shape),
                                    raw[start : start + PART_BYTES],
                                ),
                            )
                        written += array.nbytes
            except BaseException:
                self.connection.execute("ROLLBACK")
                raise
            self.connection.execute("COMMIT")
        return written

    def load_checkpoint(self, detector: str) -> Checkpoint | None:
        """The last saved state of a detector, or None."""
        with self.lock:
            row = self.connection.execute(
                "SELECT fingerprint, saved_at, arrays, extra FROM checkpoints WHERE detector = ?", (detector,)
            ).fetchone()
        if row is None:
            return None
        fingerprint, saved_at, blob, extra = row
        arrays = _unpack(blob) if blob else self._arrays(detector)
        return Checkpoint(detector, fingerprint, saved_at, arrays, json.loads(extra))

    def _arrays(self, detector: str) -> dict[str, np.ndarray]:
        parts: dict[str, tuple[str, str, list[bytes]]] = {}
        with self.lock:
            cursor = self.connection.execute(
                "SELECT name, dtype, shape, data FROM checkpoint_arrays WHERE detector = ?"
                " ORDER BY name, part",
                (detector,),
            )
            for name, dtype, shape, data in cursor:
                parts.setdefault(name, (dtype, shape, []))[2].append(data)
        arrays = {}
        for name, (dtype, shape, chunks) in parts.items():
            if np.dtype(dtype).hasobject:
                raise StoreError(
                    f"{self.path}: checkpoint array {name!r} has dtype {dtype}, not plain numbers"
                )
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            arrays[name] = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(json.loads(shape))
        return arrays

    def record_feedback(
        self, incident_id: str, verdict: str, at: float, event: dict[str, Any], by: str
    ) -> None:
        """Keep on-call's verdict on an alert and who gave it (the audit trail of sensitivity changes)."""
        with self.lock:
            self.connection.execute(
                "INSERT INTO feedback (incident_id, verdict, at, event, made_by) VALUES (?, ?, ?, ?, ?)",
                (incident_id, verdict, at, json.dumps(event), by),
            )

    def close(self) -> None:
        with self.lock:
            self.connection.close()

"""The embedded store: one SQLite file for model checkpoints (and the outbox, silences, feedback).

A checkpoint is each detector's whole engine as an ``.npz`` blob (numpy arrays,
no pickle) plus a little JSON, all detectors written in one transaction, so a
crash leaves either the old checkpoint or the new one, never a mix.  SQLite's
WAL journal makes that atomic and cheap.

>>> import tempfile, pathlib, numpy as np
>>> store = Store(pathlib.Path(tempfile.mkdtemp()) / "state.db")
>>> store.save_checkpoints([Checkpoint("cpu", "f1", 10.0, {"a": np.arange(3)}, {"last_eval": 5.0})])
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


def _pack(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    # Array names are keyword arguments here; none is called ``allow_pickle``.
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


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

    def save_checkpoints(self, checkpoints: list[Checkpoint]) -> None:
        """Replace the saved state of these detectors, all or nothing."""
        rows = [
            (c.detector, c.fingerprint, c.saved_at, _pack(c.arrays), json.dumps(c.extra)) for c in checkpoints
        ]
        with self.lock:
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                self.connection.executemany("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?)", rows)
            except BaseException:
                self.connection.execute("ROLLBACK")
                raise
            self.connection.execute("COMMIT")

    def load_checkpoint(self, detector: str) -> Checkpoint | None:
        """The last saved state of a detector, or None."""
        with self.lock:
            row = self.connection.execute(
                "SELECT fingerprint, saved_at, arrays, extra FROM checkpoints WHERE detector = ?", (detector,)
            ).fetchone()
        if row is None:
            return None
        fingerprint, saved_at, blob, extra = row
        return Checkpoint(detector, fingerprint, saved_at, _unpack(blob), json.loads(extra))

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

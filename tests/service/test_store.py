"""Checkpoints: arrays in parts straight from memory, and checkpoints of the older one-archive format."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from service import store as store_module
from service.store import Checkpoint, Store


def test_an_array_larger_than_a_part_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "PART_BYTES", 1000)
    store = Store(tmp_path / "state.db")
    arrays = {
        "x": np.arange(3000.0).reshape(1000, 3),
        "flag": np.array([True, False]),
        "none": np.zeros((0, 4)),
    }
    assert store.save_checkpoints([Checkpoint("d", "f", 1.0, arrays, {"k": 1})]) == 24_002
    parts = store.connection.execute("SELECT COUNT(*) FROM checkpoint_arrays WHERE name = 'x'").fetchone()[0]
    assert parts == 24
    loaded = store.load_checkpoint("d")
    assert loaded is not None and loaded.extra == {"k": 1}
    for name, array in arrays.items():
        assert loaded.arrays[name].dtype == array.dtype and np.array_equal(loaded.arrays[name], array)
    # A new checkpoint replaces every part of the old one.
    store.save_checkpoints([Checkpoint("d", "f", 2.0, {"x": np.ones(2)}, {})])
    loaded = store.load_checkpoint("d")
    assert loaded is not None and list(loaded.arrays) == ["x"] and loaded.arrays["x"].tolist() == [1.0, 1.0]


def test_a_checkpoint_written_as_one_archive_is_still_read(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    buffer = io.BytesIO()
    np.savez(buffer, a=np.arange(3))
    store.connection.execute(
        "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?)", ("old", "f", 1.0, buffer.getvalue(), json.dumps({}))
    )
    loaded = store.load_checkpoint("old")
    assert loaded is not None and loaded.arrays["a"].tolist() == [0, 1, 2]

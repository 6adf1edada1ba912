"""A detector's series by labels and by URL id, without a Python object per series.

The engine's :class:`~detector.engine.SeriesTable` already holds every
series key (its sorted label set as text).  Labels as a dict per series cost
about 700 bytes more, and an id-to-key dict about 200: at a million series
that is more than the engine's whole model state.  So:

- :class:`SeriesLabels` parses a key when its labels are asked for (a few µs),
  keeping the most recently asked in a small cache;
- :class:`SeriesIds` keeps each row's id (:func:`service.runtime.series_id`,
  48 bits) in one integer array, and finds a row by id with one vectorised
  comparison (about a millisecond at a million series).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache

import numpy as np

from detector.engine import SeriesTable
from detector.labels import parse_series_key

#: Label sets kept parsed: the series alerting, silenced or on a page, and a scrape's worth.
_PARSED = 16_384

_parse = lru_cache(maxsize=_PARSED)(parse_series_key)


def series_id(detector: str, key: str) -> str:
    """A short stable id for URLs: ``/api/v1/series/{id}``.

    >>> series_id("cpu", 'up{job="a"}')
    '2c3b0918f333'
    """
    return hashlib.blake2b(f"{detector}\0{key}".encode(), digest_size=6).hexdigest()


class SeriesLabels(Mapping[str, dict[str, str]]):
    """Series key to its labels, for the keys in ``table()``; read them, don't change them.

    >>> table = SeriesTable(['up{job="a"}'])
    >>> labels = SeriesLabels(lambda: table)
    >>> labels['up{job="a"}'], 'up{job="b"}' in labels, len(labels)
    ({'__name__': 'up', 'job': 'a'}, False, 1)
    """

    def __init__(self, table: Callable[[], SeriesTable]) -> None:
        self._table = table

    def __getitem__(self, key: str) -> dict[str, str]:
        if key not in self._table():
            raise KeyError(key)
        return _parse(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._table()

    def __iter__(self) -> Iterator[str]:
        return (key for key in self._table().keys if key)

    def __len__(self) -> int:
        return sum(1 for key in self._table().keys if key)


class SeriesIds(Mapping[str, str]):
    """Series id to key for one detector's series, an 8-byte integer per engine row.

    The owner calls :meth:`assign` for new rows and :meth:`rebuild` after the
    table was replaced; a released row is never found (its key is gone).

    >>> table = SeriesTable(['up{job="a"}', 'up{job="b"}'])
    >>> ids = SeriesIds("cpu", lambda: table)
    >>> ids.rebuild()
    >>> ids.get("2c3b0918f333"), "2c3b0918f333" in ids, ids.get("nonsense"), len(ids)
    ('up{job="a"}', True, None, 2)
    """

    def __init__(self, detector: str, table: Callable[[], SeriesTable]) -> None:
        self._detector = detector
        self._table = table
        self._ids = np.zeros(0, dtype=np.uint64)

    def assign(self, rows: list[int]) -> None:
        """Compute the ids of these rows' (new) keys."""
        if not rows:
            return
        keys = self._table().keys
        needed = max(rows) + 1
        if needed > len(self._ids):
            grown = np.zeros(max(needed, len(self._ids) + len(self._ids) // 4), dtype=np.uint64)
            grown[: len(self._ids)] = self._ids
            self._ids = grown
        self._ids[rows] = [int(series_id(self._detector, keys[row]), 16) for row in rows]

    def of_rows(self, rows: np.ndarray) -> np.ndarray:
        """The ids of these rows as integers (0 for a row never assigned)."""
        out = np.zeros(len(rows), dtype=np.uint64)
        inside = rows < len(self._ids)
        out[inside] = self._ids[rows[inside]]
        return out

    def rebuild(self) -> None:
        """Every row's id again, from the table (after a restore)."""
        self._ids = np.zeros(0, dtype=np.uint64)
        self.assign([row for row, key in enumerate(self._table().keys) if key])

    def __getitem__(self, wanted: str) -> str:
        try:
            number = int(wanted, 16) if len(wanted) == 12 else -1
        except ValueError:
            number = -1
        if number >= 0:
            keys = self._table().keys
            for row in np.flatnonzero(self._ids[: len(keys)] == np.uint64(number)).tolist():
                key = keys[row]
                if key and series_id(self._detector, key) == wanted:
                    return key
        raise KeyError(wanted)

    def __contains__(self, wanted: object) -> bool:
        return isinstance(wanted, str) and self.get(wanted) is not None

    def __iter__(self) -> Iterator[str]:
        return (series_id(self._detector, key) for key in self._table().keys if key)

    def __len__(self) -> int:
        return sum(1 for key in self._table().keys if key)

"""Recorded metrics as a source: ``timestamp,value`` CSV files.

Timestamps are ISO-8601 (``2026-03-02 00:00:00``, ``2026-03-02T00:00:00Z``,
with or without an offset; naive times are UTC) or Unix seconds.  A blank,
``NaN`` or ``null`` value is a gap, never a zero.  Timestamps may repeat or go
backwards; rows are kept in file order.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

_GAP_WORDS = {"", "nan", "null", "none", "na"}


class RecordingError(ValueError):
    """A recorded-metrics file that cannot be read; the message names file and line."""


@dataclass(frozen=True)
class Recording:
    """One series read from a file: where it came from, its raw timestamps and values."""

    path: Path
    name: str
    timestamps: list[str]
    t: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.timestamps)


def parse_timestamp(text: str) -> float:
    """Unix seconds from ISO-8601 or a number of seconds.

    >>> parse_timestamp("1970-01-01 00:01:00")
    60.0
    >>> parse_timestamp("1700000000")
    1700000000.0
    >>> parse_timestamp("2026-03-02T00:00:00Z") == parse_timestamp("2026-03-02 00:00:00")
    True
    """
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds):
            return seconds
        raise ValueError(f"timestamp {text!r} is not a finite number")
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _parse_value(text: str) -> float:
    if text.strip().lower() in _GAP_WORDS:
        return math.nan
    return float(text)


def read_recording(path: Path, name: str | None = None) -> Recording:
    """Read one ``timestamp,value`` CSV file.

    Raises :class:`RecordingError` naming the file and line for a missing file,
    a bad header, an unparsable timestamp or value.
    """
    path = Path(path)
    if not path.is_file():
        raise RecordingError(f"{path}: no such file; give a CSV file or a directory of them")
    timestamps: list[str] = []
    seconds: list[float] = []
    values: list[float] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [column.strip().lower() for column in next(reader, [])]
        if header[:2] != ["timestamp", "value"]:
            raise RecordingError(
                f"{path}:1: header is {','.join(header) or '(empty)'}; "
                "expected 'timestamp,value' as the first two columns"
            )
        for line, row in enumerate(reader, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            try:
                moment = parse_timestamp(row[0])
            except ValueError:
                raise RecordingError(
                    f"{path}:{line}: timestamp {row[0]!r} is neither ISO-8601 "
                    "(2026-03-02 00:00:00) nor Unix seconds"
                ) from None
            cell = row[1] if len(row) > 1 else ""
            try:
                value = _parse_value(cell)
            except ValueError:
                raise RecordingError(
                    f"{path}:{line}: value {cell!r} is not a number; leave it blank for a gap"
                ) from None
            timestamps.append(row[0])
            seconds.append(moment)
            values.append(value)
    return Recording(
        path=path,
        name=name or path.name,
        timestamps=timestamps,
        t=np.asarray(seconds, dtype=np.float64),
        values=np.asarray(values, dtype=np.float64),
    )


def find_recordings(inputs: list[Path]) -> list[tuple[Path, str]]:
    """Expand inputs to ``(file, name relative to its input directory)`` pairs.

    A file stands for itself (named by its file name); a directory stands for
    every ``*.csv`` below it, named by the path relative to that directory.
    """
    found: list[tuple[Path, str]] = []
    for given in inputs:
        given = Path(given)
        if given.is_dir():
            files = sorted(given.rglob("*.csv"))
            if not files:
                raise RecordingError(f"{given}: directory holds no *.csv files")
            found.extend((file, file.relative_to(given).as_posix()) for file in files)
        elif given.is_file():
            found.append((given, given.name))
        else:
            raise RecordingError(f"{given}: no such file or directory")
    names = [name for _, name in found]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise RecordingError(
            f"two inputs would write the same output {duplicated[0]!r}; "
            "pass their common parent directory instead"
        )
    return found

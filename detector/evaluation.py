"""Event-level figures of a backtest against labelled incident windows.

Labels are in NAB's ``combined_windows.json`` format: recording name (the path
relative to the input directory, as :func:`detector.recorded.find_recordings`
names it) to a list of ``[start, end]`` windows, both ends inclusive::

    {"latency/p99.csv": [["2026-03-06 14:20:00", "2026-03-06 15:30:00"]]}

What an on-call engineer would count, per series and in total:

* a window is *detected* when an alert is firing at any row inside it; the
  *time to detect* is from the window's start to the first such row, in
  minutes (an alert already firing when the window opens counts as 0);
* a *false alert* is an alert onset (the row where it opened) outside every
  window, and the rate is per *series-day*: the span of the series'
  timestamps in days, so a budget of one a week is about 0.14.

Labels naming no recording are ignored; recordings without labels have no
windows, so all their alerts are false.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.backtest import SeriesResult
from detector.recorded import parse_timestamp

Window = tuple[float, float]

_SECONDS_PER_DAY = 86_400.0


class LabelsError(ValueError):
    """A labels file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class SeriesEvaluation:
    """Event-level figures for one series, or for several added up.

    Examples
    --------
    >>> a = SeriesEvaluation("a.csv", windows=2, detected=1, false_alerts=1,
    ...                      series_days=7.0, minutes_to_detect=(4.0,))
    >>> b = SeriesEvaluation("b.csv", windows=1, detected=1, false_alerts=0,
    ...                      series_days=7.0, minutes_to_detect=(10.0,))
    >>> total = combine([a, b])
    >>> total.detected, round(total.false_alerts_per_day, 3), total.median_minutes_to_detect
    (2, 0.071, 7.0)
    """

    name: str
    windows: int
    detected: int
    false_alerts: int
    series_days: float
    minutes_to_detect: tuple[float, ...]

    @property
    def false_alerts_per_day(self) -> float:
        """False alerts per series-day (NaN for a series spanning no time)."""
        return self.false_alerts / self.series_days if self.series_days > 0 else math.nan

    @property
    def median_minutes_to_detect(self) -> float:
        """Median time to detect over detected windows (NaN if none was)."""
        return statistics.median(self.minutes_to_detect) if self.minutes_to_detect else math.nan


def _window(name: str, index: int, entry: object, source: Path) -> Window:
    where = f"{source}: {name!r} window {index}"
    if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
        raise LabelsError(
            f"{where}: expected [start, end] timestamps like "
            f'["2026-03-06 14:20:00", "2026-03-06 15:30:00"], got {entry!r}'
        )
    try:
        start, end = (parse_timestamp(text) for text in entry)
    except ValueError:
        raise LabelsError(
            f"{where}: {entry!r} holds a timestamp that is neither ISO-8601 "
            "(2026-03-02 00:00:00) nor Unix seconds"
        ) from None
    if start > end:
        raise LabelsError(f"{where}: starts after it ends ({entry[0]} > {entry[1]}); swap them")
    return start, end


def load_labels(path: Path) -> dict[str, list[Window]]:
    """Read labelled windows as Unix seconds, keyed by recording name.

    Raises :class:`LabelsError` for a missing file, invalid JSON or an entry
    that is not a list of ``[start, end]`` timestamps.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise LabelsError(f"{path}: cannot read the labels ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise LabelsError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(data, dict):
        raise LabelsError(
            f"{path}: expected an object of recording name -> [[start, end], ...] "
            f"(NAB's combined_windows.json), got a {type(data).__name__}"
        )
    labels = {}
    for name, windows in data.items():
        if not isinstance(windows, list):
            raise LabelsError(f"{path}: {name!r}: expected a list of [start, end] windows, got {windows!r}")
        labels[name] = [_window(name, i + 1, entry, path) for i, entry in enumerate(windows)]
    return labels


def evaluate_series(result: SeriesResult, windows: list[Window]) -> SeriesEvaluation:
    """Compare one backtest result with its labelled windows."""
    t = result.recording.t
    in_any = np.zeros(len(t), dtype=bool)
    minutes = []
    for start, end in windows:
        inside = (t >= start) & (t <= end)
        in_any |= inside
        hits = np.nonzero(inside & result.alert)[0]
        if len(hits):
            minutes.append(float(t[hits[0]] - start) / 60.0)
    span = float(t.max() - t.min()) if len(t) else 0.0
    return SeriesEvaluation(
        name=result.recording.name,
        windows=len(windows),
        detected=len(minutes),
        false_alerts=int(np.count_nonzero(result.onset & ~in_any)),
        series_days=span / _SECONDS_PER_DAY,
        minutes_to_detect=tuple(minutes),
    )


def evaluate(results: list[SeriesResult], labels: Mapping[str, list[Window]]) -> list[SeriesEvaluation]:
    """One evaluation per result, in the same order."""
    return [evaluate_series(result, labels.get(result.recording.name, [])) for result in results]


def combine(evaluations: list[SeriesEvaluation], name: str = "total") -> SeriesEvaluation:
    """Add evaluations up; the median time to detect is over all detected windows."""
    return SeriesEvaluation(
        name=name,
        windows=sum(e.windows for e in evaluations),
        detected=sum(e.detected for e in evaluations),
        false_alerts=sum(e.false_alerts for e in evaluations),
        series_days=sum(e.series_days for e in evaluations),
        minutes_to_detect=tuple(m for e in evaluations for m in e.minutes_to_detect),
    )

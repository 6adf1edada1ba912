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

How much of an incident its alert covered (:func:`cover_series`) is measured
over the incident's own times, not over a label window padded for early or
late detection; the incidents come in the same format, read by
:func:`load_labels`.  Per incident: the share of its rows where an alert was
firing, the alert onsets inside it, the minutes from its start to the first
row alerting inside it, and whether an alert was still firing on its last row.

Against the alert budget (:class:`Budget`, as configured), :func:`alert_rate`
counts a run's alert onsets for all its series together, per day of the run
(what the detector as a whole sends) and per series-day.  With labels the
false alerts are what is counted, since the budget is for false alerts;
without labels every onset is, as no alert can be told apart as real.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from detector.backtest import SeriesResult
from detector.recorded import parse_timestamp

if TYPE_CHECKING:
    from detector.policy import AlertPolicy

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


@dataclass(frozen=True)
class IncidentCoverage:
    """How the alerts of one series covered one of its incidents.

    ``coverage`` is the share of the incident's rows where an alert was firing
    (NaN when no row falls inside it), ``onsets`` the alerts that opened inside
    it, ``minutes_to_first_alert`` the time from its start to the first row
    alerting inside it (0 for an alert already firing when it began, NaN when
    none fired) and ``firing_at_end`` whether an alert was firing on its last row.

    Examples
    --------
    Ten minutely rows alerting at minutes 3-4 and 6-9; the incident is minutes 2-7:

    >>> from detector.recorded import Recording
    >>> t, zeros = 60.0 * np.arange(10), np.zeros(10)
    >>> alert = np.array([0, 0, 0, 1, 1, 0, 1, 1, 1, 1], dtype=bool)
    >>> onset = alert & ~np.r_[False, alert[:-1]]
    >>> recording = Recording(Path("x.csv"), "x.csv", [""] * 10, t, zeros)
    >>> warming = np.zeros(10, dtype=bool)
    >>> result = SeriesResult(recording, zeros, alert, onset, zeros, zeros, zeros, warming)
    >>> [incident] = cover_series(result, [(120.0, 420.0)])
    >>> round(incident.coverage, 3), incident.onsets, incident.minutes_to_first_alert, incident.firing_at_end
    (0.667, 2, 1.0, True)
    """

    series: str
    incident: Window
    coverage: float
    onsets: int
    minutes_to_first_alert: float
    firing_at_end: bool


def cover_series(result: SeriesResult, incidents: list[Window]) -> list[IncidentCoverage]:
    """How the alerts of ``result`` covered each of its ``incidents``, in the same order."""
    t = result.recording.t
    covered = []
    for start, end in incidents:
        inside = np.nonzero((t >= start) & (t <= end))[0]
        alerting = inside[result.alert[inside]]
        covered.append(
            IncidentCoverage(
                series=result.recording.name,
                incident=(start, end),
                coverage=len(alerting) / len(inside) if len(inside) else math.nan,
                onsets=int(np.count_nonzero(result.onset[inside])),
                minutes_to_first_alert=float(t[alerting[0]] - start) / 60.0 if len(alerting) else math.nan,
                firing_at_end=bool(len(inside)) and bool(result.alert[inside[-1]]),
            )
        )
    return covered


def cover(results: list[SeriesResult], incidents: Mapping[str, list[Window]]) -> list[IncidentCoverage]:
    """:func:`cover_series` for every result in order; incidents naming no result are ignored."""
    return [c for result in results for c in cover_series(result, incidents.get(result.recording.name, []))]


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


@dataclass(frozen=True)
class Budget:
    """A detector's alert budget as configured: per series a week, or for the whole detector a day.

    Either way it can be said both ways for ``series`` series: per day for the
    whole detector, and per series-day.

    Examples
    --------
    >>> weekly, daily = Budget(false_alerts_per_week=1.0), Budget(false_alerts_per_day=2.0)
    >>> str(weekly), round(weekly.per_series_day(10), 3), round(weekly.per_day(10), 2)
    ('1 a week per series', 0.143, 1.43)
    >>> str(daily), daily.per_series_day(10), daily.per_day(10)
    ('2 a day for the detector', 0.2, 2.0)
    """

    false_alerts_per_week: float | None = None
    false_alerts_per_day: float | None = None

    def __post_init__(self) -> None:
        if (self.false_alerts_per_week is None) == (self.false_alerts_per_day is None):
            raise ValueError(
                "a budget is false_alerts_per_week (per series) or false_alerts_per_day (per detector), "
                f"exactly one; got {self.false_alerts_per_week} and {self.false_alerts_per_day}"
            )

    @classmethod
    def of(cls, policy: AlertPolicy) -> Budget:
        """The budget ``policy`` was configured with."""
        return cls(policy.false_alerts_per_week, policy.false_alerts_per_day)

    def per_day(self, series: int) -> float:
        """False alerts a day the whole detector may send while it watches ``series`` series."""
        if self.false_alerts_per_day is not None:
            return self.false_alerts_per_day
        assert self.false_alerts_per_week is not None
        return self.false_alerts_per_week / 7.0 * series

    def per_series_day(self, series: int) -> float:
        """False alerts a day each of ``series`` series may send (NaN for a per-detector budget and none)."""
        if self.false_alerts_per_week is not None:
            return self.false_alerts_per_week / 7.0
        assert self.false_alerts_per_day is not None
        return self.false_alerts_per_day / series if series > 0 else math.nan

    def __str__(self) -> str:
        if self.false_alerts_per_week is not None:
            return f"{self.false_alerts_per_week:g} a week per series"
        return f"{self.false_alerts_per_day:g} a day for the detector"


@dataclass(frozen=True)
class AlertRate:
    """How often a detector alerted over a run, all its series together, beside its budget.

    ``onsets`` are the false alerts when the run was labelled (``labelled``),
    else every alert onset.  ``days`` is the span of the run (first to last
    timestamp of any series), ``series_days`` the series' spans added up.

    Examples
    --------
    >>> rate = AlertRate(onsets=4, labelled=False, series=2, days=7.0, series_days=14.0,
    ...                  budget=Budget(false_alerts_per_week=1.0))
    >>> round(rate.per_day, 3), round(rate.budget_per_day, 3)
    (0.571, 0.286)
    >>> round(rate.per_series_day, 3), round(rate.budget_per_series_day, 3)
    (0.286, 0.143)
    """

    onsets: int
    labelled: bool
    series: int
    days: float
    series_days: float
    budget: Budget

    @property
    def per_day(self) -> float:
        """Onsets per day of the run, for the whole detector (NaN for a run spanning no time)."""
        return self.onsets / self.days if self.days > 0 else math.nan

    @property
    def per_series_day(self) -> float:
        """Onsets per series-day (NaN for series spanning no time)."""
        return self.onsets / self.series_days if self.series_days > 0 else math.nan

    @property
    def budget_per_day(self) -> float:
        return self.budget.per_day(self.series)

    @property
    def budget_per_series_day(self) -> float:
        return self.budget.per_series_day(self.series)


def alert_rate(
    results: list[SeriesResult], budget: Budget, labels: Mapping[str, list[Window]] | None = None
) -> AlertRate:
    """The alert rate of one run over ``results``; with ``labels``, of its false alerts.

    Without labels no window holds an onset, so every onset counts as false.
    """
    evaluations = evaluate(results, labels or {})
    times = [result.recording.t for result in results if len(result.recording.t)]
    span = float(max(t.max() for t in times) - min(t.min() for t in times)) if times else 0.0
    return AlertRate(
        onsets=sum(e.false_alerts for e in evaluations),
        labelled=labels is not None,
        series=len(results),
        days=span / _SECONDS_PER_DAY,
        series_days=sum(e.series_days for e in evaluations),
        budget=budget,
    )

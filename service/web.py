"""The service's web page: what each detector watches, which series look wrong, and why.

Routes::

    GET /                      detectors (with alerts a day against the budget), series anomalous now,
                               recent alert events
    GET /series/{series_id}    one series: labels, value against its band, recent history plotted

Pages are rendered on the server with inline CSS and SVG: no JavaScript and
nothing fetched from elsewhere, so they work wherever the service runs, and
they reload every 15 seconds.  Links are relative, so the pages also work
behind a proxy that serves them under a path prefix.

The pages only read: each detector's latest results,
:class:`~service.history.RecentHistory` and
:class:`~service.alert_rate.RecentOnsets`, and the recent alert events.  What
they read is the :class:`PageSource` protocol, kept on ``app.state.detection``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Protocol

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from detector.alerts import AlertEvent
from detector.engine import Engine
from detector.evaluation import Budget
from service.alert_rate import RATE_WINDOW, RecentOnsets
from service.history import RecentHistory
from service.runtime import LatestResults, SeriesState, series_id
from service.settings import DetectorSpec
from service.sinks import format_duration, format_labels, format_number, format_rarity

#: A series is listed as anomalous while its alert fires or its score is at least this.
ANOMALOUS_SCORE = 0.999
#: Anomalous series listed on the front page (the rest are counted).
LISTED_SERIES = 100
#: Alert events listed on the front page, and searched for a series' latest alert.
LISTED_ALERTS = 20
SEARCHED_ALERTS = 500


class PageRuntime(Protocol):
    """What the pages read of one detector; :class:`service.runtime.DetectorRuntime` has it."""

    spec: DetectorSpec
    engine: Engine
    latest: LatestResults
    history: RecentHistory
    onsets: RecentOnsets

    @property
    def ids(self) -> Mapping[str, str]: ...

    @property
    def name(self) -> str: ...

    @property
    def model_name(self) -> str: ...

    def series_state(self, key: str) -> SeriesState | None: ...

    def warming_count(self) -> int: ...


class PageSource(Protocol):
    """What the pages read of ``app.state.detection`` (:class:`service.detection.Detection`).

    ``recent_alerts(limit)`` returns the newest ``limit`` alert events, newest first.
    """

    clock: Callable[[], float]

    @property
    def runtimes(self) -> Mapping[str, PageRuntime]: ...

    def recent_alerts(self, limit: int) -> list[AlertEvent]: ...


def _source(request: Request) -> PageSource:
    source: PageSource = request.app.state.detection
    return source


SourceDep = Annotated[PageSource, Depends(_source)]


def selector(spec: DetectorSpec) -> str:
    """Which series a detector watches: its PromQL query, or its remote_write matchers as a selector.

    >>> selector(DetectorSpec(name="rw", source="remote_write", match={"__name__": "up"},
    ...                       match_re={"job": "api|web"}))
    '{__name__="up",job=~"api|web"}'
    """
    if spec.query is not None:
        return spec.query
    exact = format_labels(spec.match)[1:-1]
    patterns = format_labels(spec.match_re)[1:-1].replace('="', '=~"')
    return "{" + ",".join(part for part in (exact, patterns) if part) + "}"


@dataclass(frozen=True)
class DetectorSummary:
    """One row of the front page's detector table.

    Examples
    --------
    >>> from service.runtime import DetectorRuntime
    >>> runtime = DetectorRuntime(DetectorSpec(name="cpu", query="up", model="ewma"), clock=lambda: 0.0)
    >>> summary = DetectorSummary.of(runtime)
    >>> summary.name, summary.selector, summary.series, summary.alerts_per_day, summary.budget_per_day
    ('cpu', 'up', 0, nan, 0.0)
    """

    name: str
    source: str
    selector: str
    model: str
    series: int
    warming: int
    #: Alert onsets a day over the last week of data (NaN before any), and the span that covers.
    alerts_per_day: float
    rate_window: float
    #: The budget for the whole detector a day, for the series it watches now.
    budget_per_day: float

    @classmethod
    def of(cls, runtime: PageRuntime) -> DetectorSummary:
        series = len(runtime.engine.series.active())
        return cls(
            name=runtime.name,
            source=runtime.spec.source,
            selector=selector(runtime.spec),
            model=runtime.model_name,
            series=series,
            warming=runtime.warming_count(),
            alerts_per_day=runtime.onsets.per_day,
            rate_window=runtime.onsets.window_seconds,
            budget_per_day=Budget.of(runtime.engine.policy).per_day(series),
        )


def anomalous_series(runtimes: Iterable[PageRuntime]) -> list[SeriesState]:
    """Series whose alert fires or whose latest score is at least :data:`ANOMALOUS_SCORE`, top first."""
    found: list[SeriesState] = []
    for runtime in runtimes:
        active = runtime.engine.series.active()
        keys = list(active)
        rows = np.fromiter(active.values(), dtype=np.int64, count=len(active))
        latest = runtime.latest.arrays
        anomalous = latest["alert"][rows] | (latest["score"][rows] >= ANOMALOUS_SCORE)
        flagged = anomalous & ~latest["ended"][rows]
        states = (runtime.series_state(keys[i]) for i in np.nonzero(flagged)[0])
        found.extend(state for state in states if state is not None)
    found.sort(key=lambda state: (-state.anomaly_score, not state.alert, state.key))
    return found


def latest_alert(events: Iterable[AlertEvent], detector: str, key: str) -> AlertEvent | None:
    """The newest event (of newest-first ``events``) in which this series takes part."""
    for event in events:
        if event.detector == detector and any(finding.key == key for finding in event.findings):
            return event
    return None


# --- the plot ----------------------------------------------------------------------------------------

#: Layout of the series plot, in SVG user units.
WIDTH, LEFT, RIGHT = 960, 64, 16
VALUE_TOP, VALUE_HEIGHT = 12, 250
SCORE_TOP, SCORE_HEIGHT = 288, 84
HEIGHT = SCORE_TOP + SCORE_HEIGHT + 28
#: The score panel shows 1 - p on a log scale down to this p, so 0.9, 0.99 … are evenly spaced.
SCORE_FLOOR = 1e-6
SCORE_TICKS = (0.0, 0.99, 0.9999, 0.999999)
_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


@dataclass(frozen=True)
class SeriesPlot:
    """Everything the series page draws, as SVG path data and tick positions (user units).

    Examples
    --------
    >>> points = {"t": np.array([0.0, 60.0, 120.0]), "value": np.array([1.0, 2.0, 9.0]),
    ...           "lower": np.array([np.nan, 0.5, 0.5]), "upper": np.array([np.nan, 3.0, 3.0]),
    ...           "score": np.array([0.0, 0.5, 0.9999]), "alert": np.array([False, False, True])}
    >>> plot = series_plot(points)
    >>> plot.observed
    'M64.0,235.5 L504.0,209.2 L944.0,25.4'
    >>> plot.band
    'M504.0,183.0 L944.0,183.0 L944.0,248.6 L504.0,248.6 Z'
    >>> [(round(x), round(y)) for x, y in plot.alert_points]
    [(944, 25)]
    """

    observed: str
    band: str
    score: str
    alert_points: list[tuple[float, float]]
    alert_spans: list[tuple[float, float]]
    latest: tuple[float, float]
    value_ticks: list[tuple[float, str]]
    score_ticks: list[tuple[float, str]]
    time_ticks: list[tuple[float, str]]
    score_threshold: float


def _nice_ticks(low: float, high: float, count: int = 5) -> np.ndarray:
    """Round numbers between low and high, about ``count`` of them.

    >>> _nice_ticks(3.2, 47.0).tolist()
    [10.0, 20.0, 30.0, 40.0]
    """
    raw = (high - low) / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return np.arange(math.ceil(low / step), math.floor(high / step) + 1) * step


def _runs(connected: np.ndarray) -> list[tuple[int, int]]:
    """Maximal ``[start, end)`` runs of points that a line may join: ``connected[i]`` joins i to i+1.

    >>> _runs(np.array([True, False, True, True]))
    [(0, 2), (2, 5)]
    """
    breaks = np.nonzero(~connected)[0] + 1
    edges = [0, *breaks.tolist(), len(connected) + 1]
    return list(pairwise(edges))


def _points(xs: np.ndarray, ys: np.ndarray) -> str:
    return " L".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))


def _line(xs: np.ndarray, ys: np.ndarray, runs: list[tuple[int, int]]) -> str:
    """SVG path data for a line broken into runs (a lone point is drawn as a dot by round caps)."""
    return " ".join(
        f"M{_points(xs[start:end], ys[start:end])}" + (" l0,0" if end - start == 1 else "")
        for start, end in runs
    )


def _band(xs: np.ndarray, top: np.ndarray, bottom: np.ndarray, runs: list[tuple[int, int]]) -> str:
    """SVG path data for the area between two lines, one closed shape per run of two or more points."""
    return " ".join(
        f"M{_points(np.r_[xs[a:b], xs[a:b][::-1]], np.r_[top[a:b], bottom[a:b][::-1]])} Z"
        for a, b in runs
        if b - a > 1
    )


def series_plot(points: Mapping[str, np.ndarray]) -> SeriesPlot | None:
    """Lay out a series' kept points (see :meth:`RecentHistory.series`); None if there are none.

    The line breaks where a gap is over three typical sampling intervals, and
    the band where the model had none (warming up).
    """
    t = points["t"]
    if len(t) == 0:
        return None
    value = points["value"].astype(np.float64)
    lower = points["lower"].astype(np.float64)
    upper = points["upper"].astype(np.float64)
    steps = np.diff(t)
    joined = steps <= 3 * np.median(steps) if len(steps) else np.zeros(0, dtype=bool)

    t0, t1 = float(t[0]), float(t[-1])
    if t1 - t0 < 1:
        t0, t1 = t0 - 30, t1 + 30

    def time_x(moment: np.ndarray) -> np.ndarray:
        return LEFT + (moment - t0) / (t1 - t0) * (WIDTH - LEFT - RIGHT)

    x = time_x(t)

    # The band may be far wider than the data (early calibration): it is clipped, the data is not.
    low, high = float(value.min()), float(value.max())
    spread = max(high - low, 1e-9 * max(1.0, abs(high)), 1e-12)
    banded = np.isfinite(lower) & np.isfinite(upper)
    if banded.any():
        low = min(low, max(float(lower[banded].min()), low - spread))
        high = max(high, min(float(upper[banded].max()), high + spread))
    margin = 0.06 * max(high - low, spread)
    low, high = low - margin, high + margin

    def value_y(v: np.ndarray) -> np.ndarray:
        return VALUE_TOP + (high - v) / (high - low) * VALUE_HEIGHT

    def score_y(score: np.ndarray) -> np.ndarray:
        surprise = -np.log10(np.clip(1.0 - score, SCORE_FLOOR, 1.0))
        return SCORE_TOP + SCORE_HEIGHT * (1.0 - surprise / -math.log10(SCORE_FLOOR))

    y = value_y(value)
    band = _band(x, value_y(upper), value_y(lower), _runs(joined & banded[:-1] & banded[1:]))
    alert = points["alert"]
    half_step = float(time_x(t0 + np.median(steps)) - LEFT) / 2 if len(steps) else 2.0
    spans = [
        (float(x[start]) - half_step, float(x[end - 1] - x[start]) + 2 * half_step)
        for start, end in _runs(alert[:-1] & alert[1:] & joined)
        if alert[start]
    ]
    time_step = next((s for s in _TIME_STEPS if (t1 - t0) / s <= 7), _TIME_STEPS[-1])
    time_format = "%H:%M:%S" if time_step < 60 else "%H:%M" if time_step < 86400 else "%m-%d"
    moments = np.arange(math.ceil(t0 / time_step), math.floor(t1 / time_step) + 1) * time_step
    runs = _runs(joined)
    return SeriesPlot(
        observed=_line(x, y, runs),
        band=band,
        score=_line(x, score_y(points["score"].astype(np.float64)), runs),
        alert_points=[(float(x[i]), float(y[i])) for i in np.nonzero(alert)[0]],
        alert_spans=spans,
        latest=(float(x[-1]), float(y[-1])),
        value_ticks=[(float(value_y(np.array(v))), format_number(float(v))) for v in _nice_ticks(low, high)],
        score_ticks=[(float(score_y(np.array(s))), f"{s:g}") for s in SCORE_TICKS],
        time_ticks=[
            (float(at), datetime.fromtimestamp(moment, UTC).strftime(time_format))
            for at, moment in zip(time_x(moments), moments.tolist(), strict=True)
        ],
        score_threshold=float(score_y(np.array(ANOMALOUS_SCORE))),
    )


# --- routes ------------------------------------------------------------------------------------------


def _utc(timestamp: float | None) -> str:
    if timestamp is None or not math.isfinite(timestamp):
        return "never"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_rate(per_day: float) -> str:
    """A rate for people: three significant digits, whole numbers from 100 on, ``n/a`` when unknown.

    >>> format_rate(1 / 7), format_rate(14.2857), format_rate(1234.5), format_rate(float("nan"))
    ('0.143', '14.3', '1,234', 'n/a')
    """
    if not math.isfinite(per_day):
        return "n/a"
    return f"{per_day:,.0f}" if abs(per_day) >= 100 else f"{per_day:.3g}"


templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.filters.update(
    number=format_number, rarity=format_rarity, duration=format_duration, utc=_utc, labels=format_labels,
    rate=format_rate,
)  # fmt: skip
templates.env.globals.update(
    width=WIDTH, height=HEIGHT, left=LEFT, right=RIGHT,
    value_top=VALUE_TOP, value_height=VALUE_HEIGHT, score_top=SCORE_TOP, score_height=SCORE_HEIGHT,
    anomalous_score=ANOMALOUS_SCORE, rate_window=RATE_WINDOW,
)  # fmt: skip

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def index(request: Request, source: SourceDep) -> HTMLResponse:
    runtimes = source.runtimes
    anomalous = anomalous_series(runtimes.values())

    def link(detector: str, key: str) -> str | None:
        """The page of a series named in an alert, if the series is still tracked."""
        runtime = runtimes.get(detector)
        found = series_id(detector, key)
        return found if runtime is not None and found in runtime.ids else None

    return templates.TemplateResponse(
        request,
        "index.html",
        {
            "now": source.clock(),
            "detectors": [DetectorSummary.of(runtime) for runtime in runtimes.values()],
            "anomalous": anomalous[:LISTED_SERIES],
            "anomalous_count": len(anomalous),
            "alerts": source.recent_alerts(LISTED_ALERTS),
            "link": link,
        },
    )


def find_series(source: PageSource, wanted: str) -> tuple[PageRuntime, SeriesState, int] | None:
    """The runtime, latest state and engine row of the series with id ``wanted``, if tracked."""
    for runtime in source.runtimes.values():
        key = runtime.ids.get(wanted)
        row = runtime.engine.series.get(key) if key is not None else None
        state = runtime.series_state(key) if key is not None else None
        if row is not None and state is not None:
            return runtime, state, row
    return None


@router.get("/series/{series_id}", response_class=HTMLResponse)
async def series_page(series_id: str, request: Request, source: SourceDep) -> HTMLResponse:
    # On the event loop, like all engine work: a look gives the series plot history from now on.
    found = find_series(source, series_id)
    if found is None:
        return templates.TemplateResponse(
            request, "missing.html", {"now": source.clock(), "series_id": series_id}, status_code=404
        )
    runtime, state, row = found
    history = runtime.history
    history.watch(row)
    points = history.series(row)
    tracked = len(runtime.engine.series)
    limited = history.max_series is not None and tracked > history.max_series
    return templates.TemplateResponse(
        request,
        "series.html",
        {
            "now": source.clock(),
            "state": state,
            "model": runtime.model_name,
            "points": len(points["t"]),
            "plot": series_plot(points),
            "alert": latest_alert(source.recent_alerts(SEARCHED_ALERTS), runtime.name, state.key),
            "history_note": (
                f"Plot history is kept for {history.max_series:,} of this detector's {tracked:,} series "
                "(history_series): those alerting, anomalous or looked at. This series' plot starts "
                "when it earned its place; earlier values are in Prometheus."
            )
            if limited
            else None,
        },
    )

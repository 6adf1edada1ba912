"""The backtest report: what a configuration would have done, for people tuning it.

A *run* is one configuration's backtest over a set of recordings.  For one run,
or two runs on the same data (``--compare A.yaml B.yaml``), this module gives

* :meth:`Run.alert_rate`: the run's alert onsets (with labels, its false
  alerts) of all series together, per day and per series-day, beside its
  budget said the same two ways; :func:`rate_columns` and :func:`rate_caption`
  title and explain them alike in the terminal summary and the report;
* :func:`figures`: per series and in total, points, alerts and alerts per
  series-day, and with labels the event-level figures of
  :mod:`detector.evaluation` (windows detected, false alerts, time to detect);
* :func:`coverage_rows`: with incidents (their own times, not padded label
  windows), how much of each one every run's alert covered, in the columns of
  :data:`COVERAGE_COLUMNS`, alike in the terminal summary and the report;
* :func:`compare`: per series, which labelled windows only one run detects and
  which alerts only one run raises.  An alert is the same in both runs when the
  other run is firing at some point while it fires, so a change that only moves
  an alert by a minute is no difference;
* :func:`render_report`: one self-contained HTML page with all of these, and a plot per
  series (observed values, expected band, anomaly score, alert onsets,
  labelled windows) as inline SVG.  It loads nothing from anywhere: no scripts,
  no fonts, no style sheets.

Plots stay small for long series: each line keeps its minimum and maximum per
pixel column (:func:`envelope`), which looks the same as the full line, while
every alert onset is drawn from the full-resolution data.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import jinja2
import numpy as np
from markupsafe import Markup

from detector.backtest import SeriesResult
from detector.evaluation import (
    AlertRate,
    Budget,
    IncidentCoverage,
    SeriesEvaluation,
    Window,
    alert_rate,
    combine,
    cover,
    evaluate_series,
)

#: Pixel columns of a plot; lines are reduced to two points per column.
PLOT_COLUMNS = 1000
_RUN_COLOURS = ("#2563eb", "#ea580c")
_WINDOW_COLOUR = "#16a34a"


def format_timestamp(t: float) -> str:
    """UTC time as ``2026-03-02 00:00:00`` (fractions of a second only when present).

    :func:`detector.recorded.parse_timestamp` reads it back.

    >>> format_timestamp(1772409600.0), format_timestamp(0.5)
    ('2026-03-02 00:00:00', '1970-01-01 00:00:00.500000')
    """
    return datetime.fromtimestamp(t, UTC).replace(tzinfo=None).isoformat(sep=" ")


@dataclass(frozen=True)
class Run:
    """One configuration's backtest: a short name, the configuration it used, its budget, its results.

    Examples
    --------
    >>> run = Run("A", "a.yaml", Budget(false_alerts_per_week=1.0), results=[])
    >>> run.name, run.config, run.alerts, str(run.budget)
    ('A', 'a.yaml', 0, '1 a week per series')
    """

    name: str
    config: str
    budget: Budget
    results: list[SeriesResult]

    @property
    def alerts(self) -> int:
        """Alerts opened over all series."""
        return sum(result.alerts for result in self.results)

    def alert_rate(self, labels: Mapping[str, list[Window]] | None = None) -> AlertRate:
        """The run's alert onsets (with ``labels``, its false alerts) per day and per series-day."""
        return alert_rate(self.results, self.budget, labels)


#: A column of the alert-rate table: its title and how a run's :class:`AlertRate` fills it.
RateColumn = tuple[str, Callable[[AlertRate], str]]


def rate_columns(labelled: bool) -> list[RateColumn]:
    """The alert-rate table's columns, the same in the terminal summary and the report.

    >>> [title for title, _ in rate_columns(labelled=True)]
    ['budget', 'false alerts/day', 'budget/day', 'false alerts/series-day', 'budget/series-day']
    """
    counted = "false alerts" if labelled else "alerts"
    return [
        ("budget", lambda rate: str(rate.budget)),
        (f"{counted}/day", lambda rate: format_number(rate.per_day, 3)),
        ("budget/day", lambda rate: format_number(rate.budget_per_day, 3)),
        (f"{counted}/series-day", lambda rate: format_number(rate.per_series_day, 3)),
        ("budget/series-day", lambda rate: format_number(rate.budget_per_series_day, 3)),
    ]


def rate_caption(labelled: bool, series: int) -> str:
    """What the alert-rate table counts, in one line.

    >>> rate_caption(labelled=False, series=2)
    'alert rate against the budget, all 2 series together: every alert onset (no labels tell false ones)'
    """
    together = "1 series" if series == 1 else f"all {series} series together"
    counted = (
        "false alerts (onsets outside every labelled window)"
        if labelled
        else "every alert onset (no labels tell false ones)"
    )
    return f"alert rate against the budget, {together}: {counted}"


#: A column of the incident coverage table (after the series and run): its title and how it is filled.
CoverageColumn = tuple[str, Callable[[IncidentCoverage], str]]

COVERAGE_COLUMNS: list[CoverageColumn] = [
    ("incident", lambda row: format_window(row.incident)),
    ("coverage %", lambda row: format_number(100.0 * row.coverage, 0)),
    ("onsets inside", lambda row: str(row.onsets)),
    ("minutes to first alert", lambda row: format_number(row.minutes_to_first_alert, 1)),
    ("firing at end", lambda row: "yes" if row.firing_at_end else "no"),
]

#: What the incident coverage table counts, in one line.
COVERAGE_CAPTION = (
    "incident coverage: the share of each incident's rows (its own times, not a padded label window) "
    "where an alert was firing"
)


def coverage_rows(
    runs: list[Run], incidents: Mapping[str, list[Window]]
) -> list[tuple[str, IncidentCoverage]]:
    """Each run's name and coverage of every incident; with two runs, one incident's rows are adjacent.

    >>> coverage_rows([Run("A", "defaults", Budget(false_alerts_per_week=1.0), results=[])], {})
    []
    """
    per_run = [[(run.name, row) for row in cover(run.results, incidents)] for run in runs]
    return [row for group in zip(*per_run, strict=True) for row in group]


@dataclass(frozen=True)
class Figures:
    """One row of the summary: a series (or the total) under one run.

    Examples
    --------
    >>> evaluation = SeriesEvaluation("a.csv", windows=1, detected=1, false_alerts=1,
    ...                               series_days=2.0, minutes_to_detect=(3.0,))
    >>> row = Figures(run="A", points=2880, alerts=2, evaluation=evaluation)
    >>> row.series, row.alerts_per_day
    ('a.csv', 1.0)
    """

    run: str
    points: int
    alerts: int
    evaluation: SeriesEvaluation

    @property
    def series(self) -> str:
        return self.evaluation.name

    @property
    def alerts_per_day(self) -> float:
        """Alerts opened per series-day (NaN for series spanning no time)."""
        days = self.evaluation.series_days
        return self.alerts / days if days > 0 else math.nan


def figures(run: Run, labels: Mapping[str, list[Window]] | None = None) -> list[Figures]:
    """One row per series of ``run``, then its total (named ``total``)."""
    labels = labels or {}
    rows = [
        Figures(
            run=run.name,
            points=len(result.recording),
            alerts=result.alerts,
            evaluation=evaluate_series(result, labels.get(result.recording.name, [])),
        )
        for result in run.results
    ]
    total = Figures(
        run=run.name,
        points=sum(row.points for row in rows),
        alerts=sum(row.alerts for row in rows),
        evaluation=combine([row.evaluation for row in rows]),
    )
    return [*rows, total]


@dataclass(frozen=True)
class Difference:
    """What run B does differently from run A on one series.

    ``detected_only`` holds the labelled windows only A detects and those only
    B detects; ``alerts_only`` the onset times (Unix seconds) of A's alerts
    during which B never fired, and the reverse.

    Examples
    --------
    >>> Difference("a.csv").same
    True
    >>> Difference("a.csv", alerts_only=([], [1772409600.0])).same
    False
    """

    series: str
    detected_only: tuple[list[Window], list[Window]] = field(default_factory=lambda: ([], []))
    alerts_only: tuple[list[float], list[float]] = field(default_factory=lambda: ([], []))

    @property
    def same(self) -> bool:
        """True when both runs detect the same windows and raise the same alerts."""
        return not any([*self.detected_only, *self.alerts_only])


def unmatched_onsets(result: SeriesResult, other: SeriesResult) -> list[float]:
    """Onset times of the alerts in ``result`` during which ``other`` never fired.

    Both results must be of the same recording.  An alert lasts from its onset
    up to the next onset, over the rows where it is firing.
    """
    alert_id = np.cumsum(result.onset)  # 0 before the first onset, then k during the k-th alert
    shared = np.bincount(alert_id[result.alert & other.alert], minlength=result.alerts + 1)[1:]
    onset_times = result.recording.t[result.onset]
    return [float(t) for t in onset_times[shared == 0]]


def compare(a: SeriesResult, b: SeriesResult, windows: list[Window]) -> Difference:
    """How ``b`` differs from ``a`` (two runs on the same recording) given its labelled windows."""
    found = [
        (evaluate_series(a, [window]).detected, evaluate_series(b, [window]).detected) for window in windows
    ]
    return Difference(
        series=a.recording.name,
        detected_only=(
            [w for w, (in_a, in_b) in zip(windows, found, strict=True) if in_a and not in_b],
            [w for w, (in_a, in_b) in zip(windows, found, strict=True) if in_b and not in_a],
        ),
        alerts_only=(unmatched_onsets(a, b), unmatched_onsets(b, a)),
    )


def compare_runs(a: Run, b: Run, labels: Mapping[str, list[Window]] | None = None) -> list[Difference]:
    """:func:`compare` for every series of two runs over the same recordings, in order."""
    labels = labels or {}
    return [
        compare(x, y, labels.get(x.recording.name, [])) for x, y in zip(a.results, b.results, strict=True)
    ]


def envelope(t: np.ndarray, y: np.ndarray, columns: int = PLOT_COLUMNS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``2 * columns`` points that draw like ``(t, y)``: each column's minimum and maximum.

    Points stay in time order, and a column holding only gaps (NaN) stays a gap.

    >>> y = np.array([0, 5, 1, 1, np.nan, np.nan, np.nan, np.nan, 3, 2])
    >>> [v.tolist() for v in envelope(np.arange(10.0), y, columns=3)]  # columns of 4 points
    [[0.0, 1.0, 4.0, 4.0, 8.0, 9.0], [0.0, 5.0, nan, nan, 3.0, 2.0]]
    >>> len(envelope(np.arange(100_000.0), np.zeros(100_000))[0])
    2000
    """
    n = len(t)
    if n <= 2 * columns:
        return t, y
    size = math.ceil(n / columns)
    padded = np.full(size * math.ceil(n / size), np.nan)
    padded[:n] = y
    blocks = padded.reshape(-1, size)
    low = np.where(np.isnan(blocks), np.inf, blocks).argmin(axis=1)
    high = np.where(np.isnan(blocks), -np.inf, blocks).argmax(axis=1)
    index = np.sort(np.stack([low, high], axis=1), axis=1) + size * np.arange(len(blocks))[:, None]
    index = np.minimum(index.ravel(), n - 1)
    return t[index], padded[index]


def _per_column(t: np.ndarray, values: np.ndarray, reduce: np.ufunc) -> tuple[np.ndarray, np.ndarray]:
    """One point per pixel column: ``reduce`` (np.fmin, np.fmax) over each column's values."""
    if len(t) <= 2 * PLOT_COLUMNS:
        return t, values
    starts = np.arange(0, len(t), math.ceil(len(t) / PLOT_COLUMNS))
    # fmin/fmax skip NaN unless a whole column is NaN, which stays a gap.
    return t[starts], reduce.reduceat(values, starts)


def _finite(values: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(values), values, np.nan)


#: The score axis shows the tail: 0.9, 0.99, 0.999 ... are equally spaced (``-log10(1 - score)``).
_SCORE_TICKS = [0.0, 0.9, 0.99, 0.999, 0.9999]


def _surprise(score: np.ndarray) -> np.ndarray:
    return -np.log10(np.clip(1.0 - np.asarray(score, dtype=np.float64), 1e-6, 1.0))


def _score(surprise: np.ndarray) -> np.ndarray:
    return 1.0 - 10.0 ** -np.asarray(surprise, dtype=np.float64)


def plot_series(results: list[SeriesResult], runs: list[str], windows: list[Window]) -> str:
    """Inline SVG of one series as each run scored it: values and bands above, scores below.

    ``results`` holds the series' result from each run (named by ``runs``).
    Lines are reduced to what a pixel column can show; alert onsets are all drawn.
    """
    # matplotlib takes 0.6 s to import; only a report needs it, not every command.
    from matplotlib import rc_context
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator

    recording = results[0].recording
    days = recording.t / 86_400.0  # matplotlib's dates are days since 1970
    figure = Figure(figsize=(11, 3.8), layout="constrained")
    value_axes, score_axes = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1.2])
    for i, (start, end) in enumerate(windows):
        label = "labelled incident" if i == 0 else None
        for axes in (value_axes, score_axes):
            axes.axvspan(
                start / 86_400.0, end / 86_400.0, color=_WINDOW_COLOUR, alpha=0.15, lw=0, label=label
            )
    observed = _finite(recording.values)
    value_axes.plot(*envelope(days, observed), color="#222222", lw=0.7, label="observed")
    for index, (name, result) in enumerate(zip(runs, results, strict=True)):
        colour = _RUN_COLOURS[index % len(_RUN_COLOURS)]
        prefix = f"{name}: " if len(runs) > 1 else ""
        band_t, lower = _per_column(days, _finite(result.lower), np.fmin)
        upper = _per_column(days, _finite(result.upper), np.fmax)[1]
        value_axes.fill_between(
            band_t, lower, upper, color=colour, alpha=0.2, lw=0, label=f"{prefix}expected"
        )
        # The highest score per column: a calibrated score is uniform on normal data, so lows say nothing.
        score_axes.plot(*_per_column(days, result.anomaly_score, np.fmax), color=colour, lw=0.7)
        onsets = days[result.onset]
        # Markers hang from the top edge (axes coordinates), one row per run.
        value_axes.plot(
            onsets,
            np.full(len(onsets), 0.97 - 0.06 * index),
            "v",
            transform=value_axes.get_xaxis_transform(),
            color=colour,
            markersize=6,
            label=f"{prefix}alert onsets ({len(onsets)})",
            gid=f"alert-onsets-{name}",  # the SVG group holding one mark per onset
        )
        score_axes.vlines(onsets, 0, 1, transform=score_axes.get_xaxis_transform(), color=colour, lw=0.8)
    if np.isfinite(observed).any():
        # Frame the observed values: a band still wide from warm-up must not flatten them.
        low, high = np.nanmin(observed), np.nanmax(observed)
        margin = 0.1 * (high - low) or 0.1 * abs(high) or 1.0
        value_axes.set_ylim(low - margin, high + 1.5 * margin)
    value_axes.set_ylabel("value")
    value_axes.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=6, frameon=False, fontsize=7)
    score_axes.set_yscale("function", functions=(_surprise, _score))
    score_axes.set_ylim(0.0, 0.99999)
    score_axes.yaxis.set_major_locator(FixedLocator(_SCORE_TICKS))
    score_axes.set_yticklabels([f"{tick:g}" for tick in _SCORE_TICKS], fontsize=6)
    score_axes.set_ylabel("score")
    locator = AutoDateLocator()
    score_axes.xaxis.set_major_locator(locator)
    score_axes.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=UTC))
    buffer = io.StringIO()
    with rc_context({"svg.fonttype": "none", "font.size": 8}):
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None})
    text = buffer.getvalue()
    # Drop the XML prolog and DOCTYPE (a DTD address): inline SVG in HTML needs neither.
    return text[text.index("<svg") :]


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Backtest report</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { padding: 0.2em 0.7em; border-bottom: 1px solid #ddd; text-align: right; vertical-align: top; }
th:first-child, td:first-child, td.text { text-align: left; }
tr.total td { font-weight: 600; border-top: 2px solid #888; }
.run-A { color: #2563eb; } .run-B { color: #ea580c; }
code { font-size: 13px; }
section svg { width: 100%; height: auto; }
.meta { color: #555; }
</style>
</head>
<body>
<h1>Backtest report</h1>
<p class="meta">Source: {{ source }}<br>{{ series }} series, {{ points }} points per run;
generated {{ generated }} UTC.</p>
<table id="rates">
<tr><th>run</th><th>configuration</th><th>alerts</th>{% for title in rate_titles %}<th>{{ title }}</th>
{%- endfor %}</tr>
{% for run in runs %}<tr><td class="run-{{ run.name }}">{{ run.name }}</td><td class="text">
<code>{{ run.config }}</code></td><td>{{ run.alerts }}</td><td class="text">{{ rates[loop.index0][0] }}</td>
{%- for cell in rates[loop.index0][1:] %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</table>
<p class="meta">{{ rate_caption }}.</p>

<h2>Summary</h2>
<table>
<tr><th>series</th>{% if runs|length > 1 %}<th>run</th>{% endif %}<th>points</th><th>alerts</th>
<th>alerts/series-day</th>{% if labelled %}<th>windows</th><th>detected</th><th>false alerts</th>
<th>false alerts/series-day</th><th>median minutes to detect</th>{% endif %}</tr>
{% for row in rows %}<tr{% if row.series == "total" %} class="total"{% endif %}>
<td>{% if row.anchor %}<a href="#{{ row.anchor }}">{{ row.series }}</a>
{%- else %}{{ row.series }}{% endif %}</td>
{% if runs|length > 1 %}<td class="run-{{ row.run }}">{{ row.run }}</td>{% endif %}
<td>{{ row.points }}</td><td>{{ row.alerts }}</td><td>{{ row.alerts_per_day }}</td>
{% if labelled %}<td>{{ row.windows }}</td><td>{{ row.detected }}</td><td>{{ row.false_alerts }}</td>
<td>{{ row.false_alerts_per_day }}</td><td>{{ row.minutes_to_detect }}</td>{% endif %}</tr>
{% endfor %}</table>

{% if coverage is not none %}
<h2>Incident coverage</h2>
<table id="coverage">
<tr><th>series</th>{% if runs|length > 1 %}<th>run</th>{% endif %}{% for title in coverage_titles %}
<th>{{ title }}</th>{% endfor %}</tr>
{% for row in coverage %}<tr><td><a href="#{{ row.anchor }}">{{ row.series }}</a></td>
{% if runs|length > 1 %}<td class="run-{{ row.run }}">{{ row.run }}</td>{% endif %}
<td class="text">{{ row.cells[0] }}</td>{% for cell in row.cells[1:] %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</table>
<p class="meta">{{ coverage_caption }}.</p>
{% endif %}

{% if differences is not none %}
<h2>What {{ runs[1].name }} changes against {{ runs[0].name }}</h2>
{% if differences %}
<table>
<tr><th>series</th>{% if labelled %}<th>detected by {{ runs[0].name }} only</th>
<th>detected by {{ runs[1].name }} only</th>{% endif %}<th>alerts only in {{ runs[0].name }}</th>
<th>alerts only in {{ runs[1].name }}</th></tr>
{% for d in differences %}<tr><td><a href="#{{ d.anchor }}">{{ d.series }}</a></td>
{% for cell in d.cells %}<td class="text">{{ cell|join("<br>"|safe) }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% else %}
<p>Both detect the same windows and raise the same alerts.</p>
{% endif %}
{% endif %}

<h2>Series</h2>
{% for plot in plots %}<section id="{{ plot.anchor }}">
<h3>{{ plot.series }}</h3>
{{ plot.svg }}
</section>
{% endfor %}
</body>
</html>
"""


def format_number(value: float, digits: int) -> str:
    """``value`` with ``digits`` decimals, or ``-`` for NaN (a figure that does not exist).

    >>> format_number(0.14285, 3), format_number(float("nan"), 1)
    ('0.143', '-')
    """
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def abbreviate(items: list[str], limit: int) -> list[str]:
    """The first ``limit`` items, then how many more there are.

    >>> abbreviate(["a", "b", "c"], 2), abbreviate(["a"], 2)
    (['a', 'b', '... and 1 more'], ['a'])
    """
    return items if len(items) <= limit else [*items[:limit], f"... and {len(items) - limit} more"]


def format_window(window: Window) -> str:
    """A labelled window as text.

    >>> format_window((0.0, 60.0))
    '1970-01-01 00:00:00 to 1970-01-01 00:01:00'
    """
    return f"{format_timestamp(window[0])} to {format_timestamp(window[1])}"


def _row(row: Figures, anchors: Mapping[str, str]) -> dict[str, object]:
    e = row.evaluation
    return {
        "series": row.series,
        "anchor": anchors.get(row.series, ""),
        "run": row.run,
        "points": row.points,
        "alerts": row.alerts,
        "alerts_per_day": format_number(row.alerts_per_day, 2),
        "windows": e.windows,
        "detected": e.detected,
        "false_alerts": e.false_alerts,
        "false_alerts_per_day": format_number(e.false_alerts_per_day, 3),
        "minutes_to_detect": format_number(e.median_minutes_to_detect, 1),
    }


def _differences(
    a: Run, b: Run, labels: Mapping[str, list[Window]], anchors: Mapping[str, str]
) -> list[dict[str, object]]:
    shown: list[dict[str, object]] = []
    for difference in compare_runs(a, b, labels):
        if difference.same:
            continue
        cells = [[format_window(w) for w in only] for only in difference.detected_only] if labels else []
        cells += [abbreviate([format_timestamp(t) for t in only], 20) for only in difference.alerts_only]
        shown.append({"series": difference.series, "anchor": anchors[difference.series], "cells": cells})
    return shown


def render_report(
    runs: list[Run],
    labels: Mapping[str, list[Window]] | None = None,
    source: str = "",
    incidents: Mapping[str, list[Window]] | None = None,
) -> str:
    """The HTML page for one run, or two over the same recordings (compared A against B).

    ``source`` says where the data came from (files, or a Prometheus URL and
    query); it is shown as text.  With ``incidents`` the page has a table of
    how much of each one the alerts covered.

    Examples
    --------
    >>> run = Run("backtest", "defaults", Budget(false_alerts_per_week=1.0), results=[])
    >>> html = render_report([run], source="no data")
    >>> html.startswith("<!DOCTYPE html>"), "Source: no data" in html
    (True, True)
    """
    if not 1 <= len(runs) <= 2:
        raise ValueError(f"a report shows one run or compares two, not {len(runs)}")
    labels = labels or {}
    anchors = {result.recording.name: f"series-{i + 1}" for i, result in enumerate(runs[0].results)}
    tables = [figures(run, labels) for run in runs]
    names = [run.name for run in runs]
    plots = [
        {
            "series": series,
            "anchor": anchor,
            "svg": Markup(plot_series([run.results[i] for run in runs], names, labels.get(series, []))),
        }
        for i, (series, anchor) in enumerate(anchors.items())
    ]
    columns = rate_columns(bool(labels))
    caption = rate_caption(bool(labels), len(runs[0].results))
    rates = [run.alert_rate(labels or None) for run in runs]
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return environment.from_string(_TEMPLATE).render(
        source=source,
        series=len(runs[0].results),
        points=sum(len(result.recording) for result in runs[0].results),
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        runs=runs,
        rate_titles=[title for title, _ in columns],
        rates=[[cell(rate) for _, cell in columns] for rate in rates],
        rate_caption=caption[:1].upper() + caption[1:],
        labelled=bool(labels),
        # Interleave the runs' rows, so A and B of one series are adjacent.
        rows=[_row(row, anchors) for group in zip(*tables, strict=True) for row in group],
        differences=_differences(runs[0], runs[1], labels, anchors) if len(runs) == 2 else None,
        coverage_titles=[title for title, _ in COVERAGE_COLUMNS],
        coverage_caption=COVERAGE_CAPTION[:1].upper() + COVERAGE_CAPTION[1:],
        coverage=None
        if incidents is None
        else [
            {
                "series": row.series,
                "anchor": anchors[row.series],
                "run": run,
                "cells": [cell(row) for _, cell in COVERAGE_COLUMNS],
            }
            for run, row in coverage_rows(runs, incidents)
        ],
        plots=plots,
    )


def write_report(
    path: Path,
    runs: list[Run],
    labels: Mapping[str, list[Window]] | None = None,
    source: str = "",
    incidents: Mapping[str, list[Window]] | None = None,
) -> None:
    """Write :func:`render_report` to ``path`` (UTF-8), creating its directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(runs, labels, source, incidents), encoding="utf-8")

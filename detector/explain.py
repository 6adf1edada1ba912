"""Alert text in plain words: what was seen, what was expected, how rare that is.

The numbers an alert carries are calibrated, so they can be said plainly.  A
p-value of ``2e-06`` on a series sampled every minute means a deviation this
large comes about once in ``60 s / 2e-06`` = 347 days of that series' normal
behaviour: "about once in 11 months".

>>> rarity(2e-06, 60.0)
'a deviation this large happens about once in 11 months for this series'
>>> format_p(2e-06)
'p = 2e-06 (score 0.999998)'

:func:`summarize` writes an alert's one-line ``summary`` and :func:`describe`
its multi-line ``description``, both from the :class:`AlertEvent` alone, so a
sink may rebuild them from a stored event.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from detector.alerts import AlertEvent, SeriesFinding
from detector.labels import series_key
from detector.policy import DEFAULT_INTERVAL
from models.base import learning_rate
from models.patterns import SPIKE_HALFLIFE

#: (seconds, singular name), largest first: a duration is said in the largest
#: unit of which it holds at least ``_AT_LEAST`` (so 90 minutes, not 1 hour).
_UNITS = (
    (365.25 * 86400.0, "year"),
    (30.4375 * 86400.0, "month"),
    (7 * 86400.0, "week"),
    (86400.0, "day"),
    (3600.0, "hour"),
    (60.0, "minute"),
    (1.0, "second"),
)
_AT_LEAST = 2.0
_CENTURY = 100 * 365.25 * 86400.0
#: Further findings listed in a description before "… and N more".
_LISTED_FINDINGS = 9


def format_value(value: float) -> str:
    """A number in a few significant digits, whatever its unit.

    >>> [format_value(v) for v in (950.0, 12345.67, 0.012345, 1.5, 0.0, 3.2e7, -4e-05, float("nan"))]
    ['950', '12346', '0.01235', '1.5', '0', '3.2e+07', '-4e-05', 'n/a']
    """
    if not math.isfinite(value):
        return "n/a"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if 1e-3 <= magnitude < 1e6:
        decimals = max(0, 3 - math.floor(math.log10(magnitude)))
        text = f"{value:.{decimals}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return f"{value:.3g}"


def format_p(p: float) -> str:
    """A calibrated p-value with its score, the score given to as many digits as p needs.

    >>> format_p(2e-06), format_p(0.0123), format_p(1e-12)
    ('p = 2e-06 (score 0.999998)', 'p = 0.012 (score 0.99)', 'p = 1e-12 (score 0.999999999999)')
    """
    digits = max(1, math.ceil(-math.log10(p))) if p > 0 else 12
    return f"p = {p:.2g} (score {1.0 - p:.{digits}g})"


def format_duration(seconds: float) -> str:
    """A duration in the largest unit it holds at least two of (one unit below that).

    >>> format_duration(45), format_duration(720), format_duration(5400), format_duration(1.9e6)
    ('45 seconds', '12 minutes', '90 minutes', '3 weeks')
    """
    seconds = max(0.0, seconds)
    size, name = next(((s, n) for s, n in _UNITS if seconds >= _AT_LEAST * s), _UNITS[-1])
    count = round(seconds / size)
    return f"{count} {name}{'' if count == 1 else 's'}"


def format_time(t: float) -> str:
    """Unix seconds as UTC ISO 8601.

    >>> format_time(1700000000)
    '2023-11-14T22:13:20Z'
    """
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rarity(p: float, interval: float, warming: bool = False, what: str = "a deviation this large") -> str:
    """How often a deviation this large happens for this series, in words.

    ``interval`` is the series' sampling interval in seconds (0: not known yet,
    taken as one minute); a deviation with tail probability ``p`` recurs about
    every ``interval / p`` seconds of normal behaviour.

    >>> rarity(1e-4, 15.0)
    'a deviation this large happens about once in 42 hours for this series'
    >>> rarity(0.6, 60.0)
    'a deviation this large is ordinary for this series'
    >>> rarity(1e-12, 60.0)
    'a deviation this large happens less than once a century for this series'
    >>> rarity(0.01, 60.0, warming=True)
    'a deviation this large happens about once in 100 minutes for this series (provisional: warming up)'
    """
    if p >= 0.5:
        words = "is ordinary"
    else:
        recurrence = (interval if interval > 0 else DEFAULT_INTERVAL) / max(p, 1e-300)
        when = (
            "less than once a century"
            if recurrence >= _CENTURY
            else f"about once in {format_duration(recurrence)}"
        )
        words = f"happens {when}"
    caveat = " (provisional: warming up)" if warming else ""
    return f"{what} {words} for this series{caveat}"


def short_name(labels: Mapping[str, str], omit: Iterable[str] = ()) -> str:
    """The series' name and the labels that tell it apart (``omit`` those the group shares).

    >>> short_name({"__name__": "latency", "job": "api", "instance": "a"}, omit=["job"])
    'latency{instance="a"}'
    >>> short_name({"job": "api"}, omit=["job"])
    '{job="api"}'
    """
    left_out = set(omit) - {"__name__"}
    kept = {k: v for k, v in labels.items() if k not in left_out}
    return series_key(kept or labels)


def _side(finding: SeriesFinding) -> str:
    return "above" if finding.direction == "high" else "below"


def pattern_words(finding: SeriesFinding, verb: str = "is") -> str:
    """What a finding's pattern is, after the series' name; empty for a point's own deviation.

    >>> from detector.alerts import SeriesFinding
    >>> flat = SeriesFinding("a", {}, 512.0, 498.0, 480.0, 520.0, 1e-9, "low", 1700000000.0, "auto",
    ...                      False, 60.0, pattern="flat", pattern_seen=2820.0, pattern_usual=180.0)
    >>> pattern_words(flat)
    'has been unchanged at 512 for 47 minutes; it has not stayed flat for more than 3 minutes before'
    >>> import dataclasses
    >>> pattern_words(dataclasses.replace(flat, pattern="routine", pattern_seen=0.97, pattern_usual=1.6e8,
    ...                                   observed=2.1e6, pattern_at=1700000000.0 + 1800.0))
    'is missing its daily routine: around 22:43 UTC it usually reaches about 1.6e+08, now 2.1e+06'
    >>> pattern_words(dataclasses.replace(flat, pattern="spikes", pattern_seen=6.2, pattern_usual=0.12))
    'spiked 6 times in about the last 87 minutes, where such a stretch usually holds 0.12'
    >>> pattern_words(dataclasses.replace(flat, pattern="spread", pattern_seen=3.1, pattern_usual=1.4))
    'is 3.1 times as variable as usual around its level (ordinarily at most 1.4 times)'
    >>> pattern_words(dataclasses.replace(flat, pattern=""))
    ''
    """
    if finding.pattern == "flat":
        before = format_duration(finding.pattern_usual)
        has = "has been" if verb == "is" else "had been"
        never = (
            "it had not repeated a value before"
            if finding.pattern_usual <= 0
            else f"it has not stayed flat for more than {before} before"
        )
        lasted = format_duration(finding.pattern_seen)
        return f"{has} unchanged at {format_value(finding.observed)} for {lasted}; {never}"
    if finding.pattern == "routine":
        at = finding.pattern_at if finding.pattern_at > 0 else finding.started_at
        when = datetime.fromtimestamp(at, UTC).strftime("%H:%M")
        return (
            f"{verb} missing its daily routine: around {when} UTC it usually reaches about "
            f"{format_value(finding.pattern_usual)}, now {format_value(finding.observed)}"
        )
    if finding.pattern == "spikes":
        interval = finding.interval if finding.interval > 0 else DEFAULT_INTERVAL
        window = format_duration(interval / learning_rate(SPIKE_HALFLIFE))
        return (
            f"spiked {finding.pattern_seen:.0f} times in about the last {window}, "
            f"where such a stretch usually holds {format_value(finding.pattern_usual)}"
        )
    if finding.pattern == "spread":
        return (
            f"{verb} {finding.pattern_seen:.1f} times as variable as usual around its level "
            f"(ordinarily at most {finding.pattern_usual:.1f} times)"
        )
    return ""


def _band(finding: SeriesFinding) -> str:
    if finding.pattern == "routine":
        # The point's forecast and band may be another forecaster's: say what the routine expects.
        return f"its daily routine expects about {format_value(finding.pattern_usual)} there"
    expected = format_value(finding.expected)
    if math.isfinite(finding.lower) and math.isfinite(finding.upper):
        return f"expected {expected} (band {format_value(finding.lower)} – {format_value(finding.upper)})"
    return f"expected about {expected} (no band yet)"


def summarize(event: AlertEvent) -> str:
    """One line: detector, top series, direction, observed value against the band.

    >>> from detector.alerts import SeriesFinding
    >>> finding = SeriesFinding(
    ...     key='latency{instance="a",job="api"}',
    ...     labels={"__name__": "latency", "instance": "a", "job": "api"},
    ...     observed=950.0, expected=400.0, lower=300.0, upper=500.0, p_value=2e-6,
    ...     direction="high", started_at=1700000000.0, model="auto", warming=False, interval=60.0)
    >>> event = AlertEvent(
    ...     incident_id="0f1e", status="firing", change="opened", detector="latency",
    ...     group_labels={"job": "api"}, opened_at=1700000000.0, resolved_at=None,
    ...     updated_at=1700000720.0, sequence=1, findings=(finding, finding), summary="",
    ...     description="", links={"graph": "http://prometheus/graph"}, correlated=('errors{job="api"}',))
    >>> summarize(event)
    'latency: latency{instance="a"} is above its expected band: 950 vs 300 – 500 (and 1 more series)'

    An alert raised from data that arrived late says so:

    >>> import dataclasses
    >>> summarize(dataclasses.replace(event, findings=(finding,), late_by=7500.0))
    'latency: latency{instance="a"} is above its expected band: 950 vs 300 – 500 (late data)'
    """
    top = event.top
    verb = "is" if event.status == "firing" else "was"
    if math.isfinite(top.lower) and math.isfinite(top.upper):
        against = f"{format_value(top.lower)} – {format_value(top.upper)}"
    else:
        against = f"about {format_value(top.expected)}"
    more = f" (and {len(event.findings) - 1} more series)" if len(event.findings) > 1 else ""
    late = " (late data)" if event.late_by > 0 else ""
    name = short_name(top.labels, omit=event.group_labels) if top.labels else top.key
    pattern = pattern_words(top, verb)
    if pattern:
        return f"{event.detector}: {name} {pattern}{more}{late}"
    return (
        f"{event.detector}: {name} {verb} {_side(top)} its expected band: "
        f"{format_value(top.observed)} vs {against}{more}{late}"
    )


def describe(event: AlertEvent) -> str:
    """Several lines: labels, observed against band, p and rarity, timing, model, company, links.

    With ``event`` from :func:`summarize`'s example:

    >>> from detector.alerts import SeriesFinding
    >>> finding = SeriesFinding(
    ...     key='latency{instance="a",job="api"}',
    ...     labels={"__name__": "latency", "instance": "a", "job": "api"},
    ...     observed=950.0, expected=400.0, lower=300.0, upper=500.0, p_value=2e-6,
    ...     direction="high", started_at=1700000000.0, model="auto", warming=False, interval=60.0)
    >>> event = AlertEvent(
    ...     incident_id="0f1e", status="firing", change="opened", detector="latency",
    ...     group_labels={"job": "api"}, opened_at=1700000000.0, resolved_at=None,
    ...     updated_at=1700000720.0, sequence=1, findings=(finding,), summary="",
    ...     description="", links={"graph": "http://prometheus/graph"}, correlated=('errors{job="api"}',))
    >>> print(describe(event))
    latency{instance="a",job="api"} is above its expected band (direction: high).
    Observed 950, expected 400 (band 300 – 500).
    p = 2e-06 (score 0.999998): a deviation this large happens about once in 11 months for this series.
    Started 2023-11-14T22:13:20Z, firing for 12 minutes.
    Model auto, warmed up.
    Correlated series that moved too: errors{job="api"}
    Links:
      graph: http://prometheus/graph

    A resolved event says why it resolved when that was not the ordinary
    return to the band, and an alert raised from late data says how late:

    >>> import dataclasses
    >>> resolved = dataclasses.replace(
    ...     event, status="resolved", change="resolved", resolved_at=1700007200.0,
    ...     resolution="accepted as the new normal after 2 hours", late_by=7500.0)
    >>> for line in describe(resolved).splitlines()[3:5]:
    ...     print(line)  # doctest: +NORMALIZE_WHITESPACE
    Started 2023-11-14T22:13:20Z, resolved 2023-11-15T00:13:20Z after 2 hours:
      accepted as the new normal after 2 hours.
    The data arrived 2 hours late.
    """
    top = event.top
    verb = "is" if event.status == "firing" else "was"
    pattern = pattern_words(top, verb)
    headline = (
        f"{top.key} {pattern} (a pattern, direction: {top.direction})."
        if pattern
        else f"{top.key} {verb} {_side(top)} its expected band (direction: {top.direction})."
    )
    what = "a pattern this unusual" if pattern else "a deviation this large"
    lines = [
        headline,
        f"Observed {format_value(top.observed)}, {_band(top)}.",
        f"{format_p(top.p_value)}: {rarity(top.p_value, top.interval, top.warming, what)}.",
    ]
    started = f"Started {format_time(event.opened_at)}"
    if event.status == "firing":
        lines.append(f"{started}, firing for {format_duration(event.updated_at - event.opened_at)}.")
    else:
        ended = event.resolved_at if event.resolved_at is not None else event.updated_at
        why = f": {event.resolution.rstrip('.')}" if event.resolution else ""
        lines.append(
            f"{started}, resolved {format_time(ended)} after {format_duration(ended - event.opened_at)}{why}."
        )
    if event.late_by > 0:
        lines.append(f"The data arrived {format_duration(event.late_by)} late.")
    state = "still warming up: the score is provisional" if top.warming else "warmed up"
    lines.append(f"Model {top.model}, {state}.")
    others = event.findings[1:]
    if others:
        group = series_key(event.group_labels)
        lines.append(f"Also unusual in {group} ({len(others)} more series):")
        lines += [
            f"  {f.key}: {format_value(f.observed)}, {_band(f)}, {_side(f)}, {format_p(f.p_value)}"
            for f in others[:_LISTED_FINDINGS]
        ]
        if len(others) > _LISTED_FINDINGS:
            lines.append(f"  … and {len(others) - _LISTED_FINDINGS} more")
    if event.correlated:
        lines.append(f"Correlated series that moved too: {', '.join(event.correlated)}")
    if event.links:
        lines.append("Links:")
        lines += [f"  {name}: {url}" for name, url in event.links.items()]
    return "\n".join(lines)

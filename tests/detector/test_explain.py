"""Alert text: rarity in words, number formatting, summary and description contents."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from detector.alerts import AlertEvent, SeriesFinding
from detector.explain import describe, format_duration, format_p, format_value, rarity, summarize

FINDING = SeriesFinding(
    key='queue_depth{instance="q1",job="worker"}',
    labels={"__name__": "queue_depth", "instance": "q1", "job": "worker"},
    observed=3.0,
    expected=1250.0,
    lower=900.0,
    upper=1600.0,
    p_value=3e-7,
    direction="low",
    started_at=1700000000.0,
    model="auto",
    warming=False,
    interval=15.0,
)
EVENT = AlertEvent(
    incident_id="abc",
    status="firing",
    change="opened",
    detector="queues",
    group_labels={"job": "worker"},
    opened_at=1700000000.0,
    resolved_at=None,
    updated_at=1700005400.0,
    sequence=1,
    findings=(FINDING,),
    summary="",
    description="",
    links={},
)


@pytest.mark.parametrize(
    ("p", "interval", "words"),
    [
        (0.01, 60.0, "about once in 100 minutes"),
        (1e-3, 60.0, "about once in 17 hours"),
        (1e-4, 60.0, "about once in 7 days"),
        (2e-5, 60.0, "about once in 5 weeks"),
        (1e-6, 60.0, "about once in 23 months"),
        (1e-7, 60.0, "about once in 19 years"),
        (1e-7, 0.0, "about once in 19 years"),  # interval not known yet: one minute
        (1e-3, 15.0, "about once in 4 hours"),
    ],
)
def test_rarity_is_the_recurrence_time_in_a_sensible_unit(p: float, interval: float, words: str) -> None:
    assert rarity(p, interval) == f"a deviation this large happens {words} for this series"


def test_rarity_of_warming_series_is_provisional() -> None:
    assert rarity(1e-3, 60.0, warming=True).endswith("(provisional: warming up)")


def test_durations_and_numbers() -> None:
    assert [format_duration(s) for s in (1, 60, 119, 120, 86400, 3 * 86400)] == [
        "1 second",
        "60 seconds",
        "119 seconds",
        "2 minutes",
        "24 hours",
        "3 days",
    ]
    assert [format_value(v) for v in (-1250.0, 0.5, 999999.4, 1e6, 0.00099)] == [
        "-1250",
        "0.5",
        "999999",
        "1e+06",
        "0.00099",
    ]
    assert format_p(0.5) == "p = 0.5 (score 0.5)"


def test_summary_names_detector_series_direction_and_band() -> None:
    assert (
        summarize(EVENT) == 'queues: queue_depth{instance="q1"} is below its expected band: 3 vs 900 – 1600'
    )
    resolved = dataclasses.replace(EVENT, status="resolved", change="resolved", resolved_at=1700003600.0)
    assert summarize(resolved).startswith('queues: queue_depth{instance="q1"} was below')


def test_summary_without_labels_uses_the_key_and_without_band_the_expectation() -> None:
    bare = dataclasses.replace(FINDING, labels={}, key="latency/p99.csv", lower=float("nan"))
    event = dataclasses.replace(EVENT, findings=(bare,), group_labels={})
    assert summarize(event) == "queues: latency/p99.csv is below its expected band: 3 vs about 1250"


def test_description_says_everything_an_on_call_engineer_asks_first() -> None:
    others = tuple(
        dataclasses.replace(FINDING, key=f'queue_depth{{instance="q{i}",job="worker"}}', p_value=1e-5 * i)
        for i in range(2, 14)
    )
    event = dataclasses.replace(
        EVENT,
        findings=(FINDING, *others),
        correlated=('consumers{job="worker"}',),
        links={"graph": "http://prometheus:9090/graph", "runbook": "http://wiki/queues"},
    )
    lines = describe(event).splitlines()
    assert lines[:5] == [
        'queue_depth{instance="q1",job="worker"} is below its expected band (direction: low).',
        "Observed 3, expected 1250 (band 900 – 1600).",
        "p = 3e-07 (score 0.9999997): "
        "a deviation this large happens about once in 19 months for this series.",
        "Started 2023-11-14T22:13:20Z, firing for 90 minutes.",
        "Model auto, warmed up.",
    ]
    assert lines[5] == 'Also unusual in {job="worker"} (12 more series):'
    assert lines[6].startswith('  queue_depth{instance="q2",job="worker"}: 3, expected 1250')
    assert lines[15] == "  … and 3 more"
    assert lines[16:] == [
        'Correlated series that moved too: consumers{job="worker"}',
        "Links:",
        "  graph: http://prometheus:9090/graph",
        "  runbook: http://wiki/queues",
    ]


def test_a_routine_finding_is_told_at_its_own_time_against_what_the_routine_expects() -> None:
    missed = dataclasses.replace(
        FINDING, pattern="routine", pattern_seen=0.9, pattern_usual=1400.0, pattern_at=1700000000.0 + 1500.0
    )
    lines = describe(dataclasses.replace(EVENT, findings=(missed,))).splitlines()
    assert lines[:2] == [
        'queue_depth{instance="q1",job="worker"} is missing its daily routine: '
        "around 22:38 UTC it usually reaches about 1400, now 3 (a pattern, direction: low).",
        "Observed 3, its daily routine expects about 1400 there.",
    ]


def test_description_of_a_resolved_warming_alert() -> None:
    warming = dataclasses.replace(FINDING, warming=True)
    event = dataclasses.replace(
        EVENT, findings=(warming,), status="resolved", change="resolved", resolved_at=1700000600.0
    )
    text = describe(event)
    assert "Started 2023-11-14T22:13:20Z, resolved 2023-11-14T22:23:20Z after 10 minutes." in text
    assert "Model auto, still warming up: the score is provisional." in text
    assert "(provisional: warming up)" in text


def test_description_says_why_a_resolution_was_not_the_ordinary_one() -> None:
    resolved = dataclasses.replace(EVENT, status="resolved", change="resolved", resolved_at=1700007200.0)
    assert "resolved 2023-11-15T00:13:20Z after 2 hours." in describe(resolved)
    accepted = dataclasses.replace(resolved, resolution="accepted as the new normal after 2h")
    lines = describe(accepted).splitlines()
    assert lines[3] == (
        "Started 2023-11-14T22:13:20Z, resolved 2023-11-15T00:13:20Z after 2 hours: "
        "accepted as the new normal after 2h."
    )
    ended = dataclasses.replace(resolved, resolution="the series ended.")  # one full stop, not two
    assert describe(ended).splitlines()[3].endswith("after 2 hours: the series ended.")


def test_late_data_is_said_in_the_description_and_marked_in_the_summary() -> None:
    assert "arrived" not in describe(EVENT) and "late" not in summarize(EVENT)
    late = dataclasses.replace(EVENT, late_by=7500.0)
    lines = describe(late).splitlines()
    assert lines[3:5] == [
        "Started 2023-11-14T22:13:20Z, firing for 90 minutes.",
        "The data arrived 2 hours late.",
    ]
    assert summarize(late) == summarize(EVENT) + " (late data)"


def test_an_event_stored_before_resolution_and_lateness_existed_still_loads() -> None:
    stored = dataclasses.replace(EVENT, status="resolved", change="resolved", resolved_at=1700003600.0)
    old = {k: v for k, v in stored.to_dict().items() if k not in ("resolution", "late_by")}
    loaded = AlertEvent.from_dict(old)
    assert (loaded.resolution, loaded.late_by) == ("", 0.0)
    assert loaded == stored
    assert describe(loaded) == describe(stored)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"resolution": "accepted as the new normal after 2h"}, "is set on a firing event"),
        ({"late_by": -1.0}, "late_by -1.0 is not a number of seconds >= 0"),
        ({"late_by": float("nan")}, "late_by nan is not"),
    ],
)
def test_a_resolution_on_a_firing_event_or_a_negative_lateness_is_refused(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(EVENT, **changes)

"""Silences and maintenance windows: Alertmanager matcher semantics, time, batches, storage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detector.silences import SECONDS_PER_WEEK, MaintenanceWindow, Matcher, Silence, SilenceSet

SERIES = [
    {"job": "api", "instance": "api-1", "env": "prod"},
    {"job": "api", "instance": "api-12", "env": "dev"},
    {"job": "db", "instance": "db-1"},
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('job="api"', [True, True, False]),
        ('job!="api"', [False, False, True]),
        ('instance=~"api-1"', [True, False, False]),  # fully anchored: not api-12
        ('instance=~"api-.*"', [True, True, False]),
        ('instance!~"api-1|db-1"', [False, True, False]),
        ('env=""', [False, False, True]),  # a missing label is the empty string
        ('env!=""', [True, True, False]),
        ("env=~prod|dev", [True, True, False]),
    ],
)
def test_matchers_follow_alertmanager(text: str, expected: list[bool]) -> None:
    matcher = Matcher.parse(text)
    assert [matcher.matches(labels) for labels in SERIES] == expected
    assert matcher.matches_many(SERIES).tolist() == expected
    assert Matcher.parse(str(matcher)) == matcher


def test_quoted_values_may_hold_quotes_and_spaces() -> None:
    matcher = Matcher.parse(r'path = "/a \"b\" c"')
    assert matcher.value == '/a "b" c' and matcher.matches({"path": '/a "b" c'})
    assert Matcher.parse(str(matcher)) == matcher


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("job", "is not a matcher"),
        ('job=~"(api"', "not a regular expression"),
        ('1job="x"', "is not a matcher"),
    ],
)
def test_bad_matchers_say_what_to_write(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Matcher.parse(text)


def test_a_rule_must_not_match_every_series() -> None:
    with pytest.raises(ValueError, match="matches every series"):
        Silence([Matcher.parse('job=~".*"')], 0.0, 60.0)
    with pytest.raises(ValueError, match="matches every series"):
        Silence([], 0.0, 60.0)
    with pytest.raises(ValueError, match="must be after"):
        Silence([Matcher.parse("job=api")], 60.0, 60.0)


def test_silences_cover_their_time_range_per_point() -> None:
    rules = SilenceSet([Silence([Matcher.parse("job=api")], 100.0, 200.0)])
    labels = [SERIES[0]] * 4
    assert rules.silenced(labels, np.array([99.0, 100.0, 199.0, 200.0])).tolist() == [
        False,
        True,
        True,
        False,
    ]
    assert not rules.maintenance(labels, 150.0).any()


def test_every_matcher_of_a_rule_must_hold() -> None:
    rules = SilenceSet([Silence([Matcher.parse("job=api"), Matcher.parse("env=prod")], 0.0, 60.0)])
    assert rules.silenced(SERIES, 30.0).tolist() == [True, False, False]


def test_maintenance_is_silenced_and_not_learned() -> None:
    rules = SilenceSet(
        [
            Silence([Matcher.parse("job=api")], 0.0, 60.0),
            MaintenanceWindow([Matcher.parse("job=db")], 0.0, 60.0),
        ]
    )
    silenced, maintenance = rules.silenced(SERIES, 30.0), rules.maintenance(SERIES, 30.0)
    assert silenced.tolist() == [True, True, True]
    assert maintenance.tolist() == [False, False, True]
    assert not (maintenance & ~silenced).any()


def test_weekly_windows_recur() -> None:
    sunday = 3 * 86400.0  # 1970-01-04, a Sunday
    window = MaintenanceWindow([Matcher.parse("job=db")], sunday + 7200, sunday + 10800, weekly=True)
    t = sunday + np.array([7200.0, 10799.0, 10800.0, 7200 + 5 * SECONDS_PER_WEEK, 7200 - SECONDS_PER_WEEK])
    assert window.active(t).tolist() == [True, True, False, True, False]
    with pytest.raises(ValueError, match="at most a week"):
        MaintenanceWindow([Matcher.parse("job=db")], 0.0, 2 * SECONDS_PER_WEEK, weekly=True)


def test_json_round_trip_keeps_kinds_and_ids() -> None:
    rules = SilenceSet(
        [
            Silence([Matcher.parse('instance=~"api-.*"')], 0.0, 60.0, comment="deploy", created_by="ana"),
            MaintenanceWindow([Matcher.parse("job=db")], 0.0, 3600.0, weekly=True, id="nightly"),
        ]
    )
    stored = json.loads(json.dumps(rules.to_dict()))
    restored = SilenceSet.from_dict(stored)
    assert restored == rules
    assert [type(r).__name__ for r in restored.rules] == ["Silence", "MaintenanceWindow"]
    assert restored.rules[1].id == "nightly"


def test_ids_are_content_hashes() -> None:
    def make(comment: str) -> Silence:
        return Silence([Matcher.parse("job=api")], 0.0, 60.0, comment=comment)

    assert make("deploy").id == make("deploy").id != make("other").id
    assert len(make("deploy").id) == 16


def test_many_series_are_matched_by_distinct_values() -> None:
    labels = [{"job": f"job{i % 50}", "instance": f"i{i}"} for i in range(100_000)]
    rules = SilenceSet([Silence([Matcher.parse('job=~"job1.*"')], 0.0, 60.0)])
    covered = rules.silenced(labels, 30.0)
    assert int(covered.sum()) == 11 * 2000
    assert not rules.silenced(labels, 90.0).any()

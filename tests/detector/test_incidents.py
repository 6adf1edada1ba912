"""Incidents: grouping per-series alerts, updates, refreshes, resolution, ids, checkpoints."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from detector import AlertPolicy, Engine, TailCalibrator
from detector.alerts import AlertEvent, SeriesFinding
from detector.engine import ScoredBatch
from detector.incidents import IncidentTracker, incident_id
from detector.labels import series_key
from models import RobustEWMA

LABELS = {
    "a": {"job": "api", "instance": "a"},
    "b": {"job": "api", "instance": "b"},
    "c": {"job": "api", "instance": "c"},
    "d": {"job": "db", "instance": "d"},
}
KEYS = list(LABELS)


def _tracker(**kwargs: Any) -> IncidentTracker:
    settings: dict[str, Any] = {"group_by": ["job"], "group_window": 120.0, "refresh_interval": 60.0}
    return IncidentTracker("latency", **{**settings, **kwargs})


def _observe(
    tracker: IncidentTracker,
    t: float,
    alert: dict[str, float],
    p: dict[str, float] | None = None,
    deviation: dict[str, float] | None = None,
    undecided: Sequence[str] = (),
) -> list[AlertEvent]:
    """One batch of all four series: ``alert`` maps alerting keys to their onset time."""
    p = p or {}
    deviation = deviation or {}
    n = len(KEYS)
    firing = np.array([key in alert for key in KEYS])
    p_value = np.array([p.get(key, 1e-6 if key in alert else 0.5) for key in KEYS])
    sign = np.array([np.sign(deviation.get(key, 1.0)) for key in KEYS])
    scored = ScoredBatch(
        anomaly_score=1 - p_value,
        p_value=p_value,
        deviation=np.array([deviation.get(key, 8.0 if key in alert else 0.1) for key in KEYS]),
        expected=np.full(n, 100.0),
        lower=np.full(n, 90.0),
        upper=np.full(n, 110.0),
        warming=np.zeros(n, dtype=bool),
        alert=firing,
        onset=firing & np.array([alert.get(key) == t for key in KEYS]),
        decided=np.array([key not in undecided for key in KEYS]),
        accepted=np.zeros(n, dtype=bool),
        since=np.array([alert.get(key, np.nan) for key in KEYS]),
        lowest_p=np.where(firing, p_value, np.nan),
        alert_sign=np.where(firing, sign, 0).astype(np.int8),
        interval=np.full(n, 60.0),
    )
    return tracker.observe(t, KEYS, LABELS, np.full(n, t), np.where(firing, 180.0, 100.0), scored, "auto")


def _changes(events: list[AlertEvent]) -> list[tuple[str, int, list[str]]]:
    return [(e.change, e.sequence, [f.key for f in e.findings]) for e in events]


def test_ten_series_spiking_together_make_one_incident() -> None:
    labels = [{"__name__": "latency", "job": "api", "instance": f"i{i}"} for i in range(10)]
    labels.append({"__name__": "latency", "job": "db", "instance": "x"})
    keys = [series_key(one) for one in labels]
    by_key = dict(zip(keys, labels, strict=True))
    engine = Engine(RobustEWMA(), TailCalibrator(warmup=100), AlertPolicy())
    tracker = _tracker()
    ids = engine.register(keys)
    rng = np.random.default_rng(5)
    events: list[AlertEvent] = []
    for step in range(1040):
        t = np.full(len(keys), 60.0 * step)
        x = rng.normal(100, 2, len(keys))
        if 1000 <= step < 1010:
            x[:10] += 20 + np.arange(10)  # one job's ten instances, each a bit further off
        scored = engine.process(ids, t, x)
        found = tracker.observe(t[0], keys, by_key, t, x, scored, "ewma")
        # A week's budget over eleven series allows a false alert in the warm-up: not this test's subject.
        events += found if step >= 1000 else []
    changes = [e.change for e in events if e.change != "refreshed"]
    # The furthest-off instances alert at once, the others join the same incident a point or two later.
    assert changes[0] == "opened" and changes[-1] == "resolved" and set(changes[1:-1]) <= {"updated"}
    opened, complete = events[0], events[-1]
    assert 60.0 * 1000 <= opened.opened_at <= 60.0 * 1003  # within a few points of the spike
    assert opened.group_labels == {"job": "api"}
    assert len(complete.findings) == 10
    p_values = [f.p_value for f in complete.findings]
    assert p_values == sorted(p_values)
    assert {f.key for f in complete.findings} == set(keys[:10])
    assert all(f.direction == "high" and f.model == "ewma" for f in complete.findings)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert len({e.incident_id for e in events}) == 1


def test_separate_groups_make_separate_incidents() -> None:
    events = _observe(_tracker(), 0.0, {"a": 0.0, "b": 0.0, "d": 0.0})
    assert sorted((e.group_labels["job"], e.change, len(e.findings)) for e in events) == [
        ("api", "opened", 2),
        ("db", "opened", 1),
    ]
    assert len({e.incident_id for e in events}) == 2


def test_group_by_nothing_puts_every_series_in_one_incident() -> None:
    events = _observe(_tracker(group_by=[]), 0.0, {"a": 0.0, "d": 0.0})
    assert _changes(events) == [("opened", 1, ["a", "d"])] and events[0].group_labels == {}


def test_later_series_join_within_the_window_and_open_a_new_incident_after_it() -> None:
    tracker = _tracker()
    first = _observe(tracker, 0.0, {"a": 0.0})
    joined = _observe(tracker, 60.0, {"a": 0.0, "b": 60.0, "c": 60.0})
    # b and c arrive in one batch: one update.
    assert _changes(joined) == [("updated", 2, ["a", "b", "c"])]
    assert joined[0].incident_id == first[0].incident_id
    quiet = _observe(tracker, 300.0, {"a": 0.0, "b": 60.0})
    later = _observe(tracker, 330.0, {"a": 0.0, "b": 60.0, "c": 330.0})
    assert [e.change for e in quiet] == ["refreshed"]
    assert _changes(later) == [("opened", 1, ["c"])]
    assert later[0].incident_id != first[0].incident_id


def test_a_late_report_of_an_early_onset_joins_the_incident_it_belongs_to() -> None:
    tracker = _tracker()
    first = _observe(tracker, 0.0, {"a": 0.0})
    _observe(tracker, 100.0, {"a": 0.0, "b": 100.0})
    late = _observe(tracker, 400.0, {"a": 0.0, "b": 100.0, "c": 0.0})  # same id as the first
    assert _changes(late) == [("updated", 3, ["a", "b", "c"])]
    assert late[0].incident_id == first[0].incident_id


def test_findings_are_ranked_most_unusual_first() -> None:
    events = _observe(_tracker(), 0.0, {"a": 0.0, "b": 0.0, "c": 0.0}, p={"a": 1e-4, "b": 1e-9, "c": 1e-6})
    assert [f.key for f in events[0].findings] == ["b", "c", "a"]


def test_resolves_when_every_member_has_recovered() -> None:
    tracker = _tracker()
    _observe(tracker, 0.0, {"a": 0.0, "b": 0.0})
    assert _observe(tracker, 30.0, {"b": 0.0}) == []
    assert _observe(tracker, 45.0, {"b": 0.0}, undecided=["b"]) == []  # a gap or a silence is no news
    events = _observe(tracker, 50.0, {})
    assert _changes(events) == [("resolved", 2, ["a", "b"])]
    assert events[0].status == "resolved" and events[0].resolved_at == 50.0
    assert tracker.open_incidents == []
    assert _observe(tracker, 200.0, {}) == []


def test_firing_incidents_are_refreshed_on_schedule() -> None:
    tracker = _tracker(refresh_interval=60.0)
    events = [(t, e.change, e.sequence) for t in range(0, 300, 15) for e in _observe(tracker, t, {"a": 0.0})]
    assert events == [
        (0, "opened", 1),
        (60, "refreshed", 2),
        (120, "refreshed", 3),
        (180, "refreshed", 4),
        (240, "refreshed", 5),
    ]


def test_incident_ids_are_deterministic_and_survive_a_checkpoint() -> None:
    script: list[tuple[float, dict[str, float]]] = [
        (0.0, {"a": 0.0}),
        (60.0, {"a": 0.0, "b": 60.0}),
        (120.0, {"a": 0.0, "b": 60.0, "d": 120.0}),
        (180.0, {"b": 60.0, "d": 120.0}),
        (240.0, {"d": 120.0}),
        (300.0, {}),
    ]
    whole = _tracker()
    straight = [e.to_dict() for t, alert in script for e in _observe(whole, t, alert)]
    before = _tracker()
    resumed = [e.to_dict() for t, alert in script[:3] for e in _observe(before, t, alert)]
    after = _tracker()
    after.load_state_dict(json.loads(json.dumps(before.state_dict())))
    resumed += [e.to_dict() for t, alert in script[3:] for e in _observe(after, t, alert)]
    assert resumed == straight
    assert straight[0]["incident_id"] == incident_id("latency", {"job": "api"}, 0.0)
    assert {e["incident_id"] for e in straight} == {
        incident_id("latency", {"job": "api"}, 0.0),
        incident_id("latency", {"job": "db"}, 120.0),
    }


def test_correlated_series_are_quiet_members_of_the_group_that_moved_too() -> None:
    events = _observe(
        _tracker(),
        0.0,
        {"a": 0.0},
        p={"b": 0.005, "c": 0.001, "d": 1e-5},
        deviation={"b": 3.0, "c": -3.5, "d": 5.0},
    )
    # b moved the incident's way, so it comes first; d is in another group.
    assert events[0].correlated == ("b", "c")


def test_a_member_keeps_its_most_extreme_point() -> None:
    tracker = _tracker()
    _observe(tracker, 0.0, {"a": 0.0}, p={"a": 1e-5})
    _observe(tracker, 30.0, {"a": 0.0}, p={"a": 1e-8})
    events = _observe(tracker, 60.0, {"a": 0.0}, p={"a": 1e-3})
    assert [e.top.p_value for e in events] == [1e-8]


def test_forgotten_series_resolve_their_incidents() -> None:
    tracker = _tracker()
    _observe(tracker, 0.0, {"a": 0.0, "d": 0.0})
    events = tracker.forget(["a"], now=20.0)
    assert [(e.change, e.group_labels) for e in events] == [("resolved", {"job": "api"})]


def test_events_carry_text_and_links() -> None:
    def links(findings: Sequence[SeriesFinding]) -> dict[str, str]:
        return {"graph": f"http://prometheus/graph?g0.expr={findings[0].key}"}

    events = _observe(_tracker(links=links), 0.0, {"a": 0.0, "b": 0.0}, p={"a": 1e-4, "b": 1e-7})
    event = events[0]
    assert event.links == {"graph": "http://prometheus/graph?g0.expr=b"}
    assert (
        event.summary
        == 'latency: {instance="b"} is above its expected band: 180 vs 90 – 110 (and 1 more series)'
    )
    assert "p = 1e-07 (score 0.9999999)" in event.description
    assert "graph: http://prometheus/graph?g0.expr=b" in event.description


def _restored(script: list[tuple[float, dict[str, float]]]) -> IncidentTracker:
    """A tracker restored from a checkpoint of one that saw ``script``."""
    before = _tracker()
    for t, alert in script:
        _observe(before, t, alert)
    after = _tracker()
    after.load_state_dict(json.loads(json.dumps(before.state_dict())))
    return after


def _observe_only(tracker: IncidentTracker, t: float, key: str, alerting: bool) -> list[AlertEvent]:
    """One point of one series: alerting since 0, or back to normal."""
    one = {
        "anomaly_score": np.array([0.9]), "p_value": np.array([1e-6 if alerting else 0.5]),
        "deviation": np.array([8.0]), "expected": np.array([100.0]), "lower": np.array([90.0]),
        "upper": np.array([110.0]), "warming": np.zeros(1, bool), "alert": np.array([alerting]),
        "onset": np.zeros(1, bool), "decided": np.ones(1, bool), "accepted": np.zeros(1, bool),
        "since": np.array([0.0 if alerting else np.nan]), "lowest_p": np.array([1e-6]),
        "alert_sign": np.array([1 if alerting else 0], np.int8), "interval": np.array([60.0]),
    }  # fmt: skip
    return tracker.observe(t, [key], LABELS, np.array([t]), np.array([150.0]), ScoredBatch(**one), "auto")


def test_a_restored_incident_is_neither_refreshed_nor_resolved_until_one_of_its_series_is_seen() -> None:
    tracker = _restored([(0.0, {"a": 0.0})])
    assert tracker.unconfirmed == tracker.open_incidents
    # Another group's series comes and goes: the restored incident is not refreshed meanwhile.
    assert _observe_only(tracker, 600.0, "d", alerting=False) == []
    # Its series is seen still alerting: confirmed, and refreshed from then on.
    assert [e.change for e in _observe_only(tracker, 660.0, "a", alerting=True)] == ["refreshed"]
    assert tracker.unconfirmed == []
    assert [(e.change, e.resolved_at) for e in _observe_only(tracker, 720.0, "a", alerting=False)] == [
        ("resolved", 720.0)
    ]


def test_restored_alerts_that_are_not_this_trackers_to_resolve_end_silently() -> None:
    tracker = _restored([(0.0, {"a": 0.0, "d": 0.0})])
    assert tracker.forget(["a"], now=900.0) == [], "a series gone while unconfirmed says nothing"
    tracker.withdraw(["d"])
    assert tracker.open_incidents == [] and tracker.firing_keys == []


def test_a_confirmed_series_that_stops_reporting_resolves_at_its_last_sample() -> None:
    tracker = _tracker()
    _observe(tracker, 0.0, {"a": 0.0})
    [event] = tracker.forget(["a"], now=900.0, last_seen={"a": 240.0})
    assert (event.change, event.resolved_at, event.updated_at) == ("resolved", 240.0, 900.0)


def test_a_restored_incident_numbers_its_events_after_those_already_sent() -> None:
    tracker = _restored([(0.0, {"a": 0.0})])
    [incident] = tracker.open_incidents
    tracker.continue_sequences({incident: 7, "another": 40})
    [event] = _observe_only(tracker, 600.0, "a", alerting=False)
    assert (event.change, event.sequence) == ("resolved", 8)

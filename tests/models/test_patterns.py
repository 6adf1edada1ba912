"""The pattern detectors: each one finds its pattern, stays quiet on ordinary data, and does not learn it.

The statistics are fed as the engine feeds them (:func:`feed`): assessed, then
learned with a weight that drops to 0 for points the statistic flags (as the
engine's protection does once an alert builds), and ``seen`` for every real
sample.  The end-to-end test runs the real engine and incident tracker.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from detector.config import build_engine, build_tracker, parse_config
from detector.engine import ScoredBatch
from detector.policy import AlertPolicy
from models.auto import AutoModel
from models.base import FLAT, PATTERN_KINDS, ROUTINE, SPIKES, SPREAD, Pattern
from models.patterns import PatternStatistics, normal_deviate
from models.routine import DailyRoutine

MINUTE = 60.0
DAY = 1440


def feed(
    stats: PatternStatistics, x: np.ndarray, deviation: np.ndarray, flag_below: float = -4.0
) -> list[Pattern]:
    """Every point through assess and learn, one series, one sample a minute; returns the patterns."""
    return feed_on(stats, x, deviation, flag_below)


def feed_on(
    stats: PatternStatistics, x: np.ndarray, deviation: np.ndarray, flag_below: float = -4.0, start: int = 0
) -> list[Pattern]:
    """:func:`feed` from the point ``start`` on (its time: ``start`` minutes)."""
    ids, out = np.array([0]), []
    for k in range(start, len(x)):
        t, xk, dk = np.array([MINUTE * k]), x[k : k + 1], deviation[k : k + 1]
        pattern = stats.assess(ids, t, xk, dk)
        flagged = abs(pattern.deviation[0]) > -flag_below
        stats.learn(ids, t, xk, dk, np.zeros(1) if flagged else np.ones(1), np.ones(1, bool))
        out.append(pattern)
    return out


def fresh() -> PatternStatistics:
    stats = PatternStatistics()
    stats.resize(1)
    return stats


def kinds(patterns: list[Pattern]) -> np.ndarray:
    return np.array([int(p.kind[0]) for p in patterns])


def deviations(patterns: list[Pattern]) -> np.ndarray:
    return np.array([float(p.deviation[0]) for p in patterns])


def test_normal_deviate_matches_the_normal_tail() -> None:
    from scipy.special import ndtr

    for tail in (0.1, 1e-3, 1e-6, 1e-12):
        assert ndtr(-normal_deviate(tail)) == pytest.approx(tail, rel=0.05)
    assert normal_deviate(0.5) == 0.0


def test_a_busy_series_gone_flat_is_found_within_minutes_and_not_before() -> None:
    rng = np.random.default_rng(0)
    n, stuck = 3 * DAY, 3 * DAY - 60
    x = 500 + rng.normal(0, 5, n)
    x[stuck:] = x[stuck - 1]
    out = feed(fresh(), x, (x - 500) / 5)
    z = deviations(out)
    assert np.all(np.abs(z[DAY:stuck]) < 4), "ordinary noise is no pattern"
    found = stuck + int(np.argmax(z[stuck:] < -5))
    assert z[found] < -5 and found - stuck <= 15
    assert PATTERN_KINDS[kinds(out)[-1]] == "flat"
    # The run began at the last sample before the exporter stuck: the value it repeats.
    assert out[-1].seen[0] == pytest.approx(60 * MINUTE)
    assert out[-1].usual[0] < 5 * MINUTE


def test_the_longest_flat_run_is_the_history_before_the_run_being_reported() -> None:
    rng = np.random.default_rng(3)
    stats = fresh()
    x = np.round(500 + rng.normal(0, 4, 2 * DAY + 120), 0)
    before = 2 * DAY
    x[before:] = x[before - 1]
    out = feed(stats, x[:before], (x[:before] - 500) / 5)
    longest = float(stats.arrays["longest"][0])
    assert 0 < longest < 30 * MINUTE
    out = feed_on(stats, x, (x - 500) / 5, start=before)
    flat = [p for p in out if p.kind[0] == FLAT]
    assert flat and flat[-1].seen[0] > 100 * MINUTE
    assert max(float(p.usual[0]) for p in flat) <= longest


def test_a_series_idle_at_zero_most_of_the_time_is_not_watched_for_flat_runs() -> None:
    rng = np.random.default_rng(1)
    x = np.where(rng.random(4 * DAY) < 0.05, rng.poisson(20, 4 * DAY), 0).astype(float)
    x[-300:] = 0.0  # five hours of quiet: long, but quiet is what this series does
    out = feed(fresh(), x, x / 3)
    assert not np.any(kinds(out) == FLAT)


def test_a_spike_storm_of_ordinary_spikes_is_found() -> None:
    rng = np.random.default_rng(2)
    n = 6 * DAY
    x = rng.poisson(0.2, n).astype(float)
    spikes = rng.choice(np.arange(n - DAY), size=10, replace=False)  # about two a day
    x[spikes] = 30.0
    storm = np.arange(n - 150, n, 10)
    x[storm] = 30.0
    out = feed(fresh(), x, (x - 0.2) / 0.45)
    z, kind = deviations(out), kinds(out)
    assert np.all(z[DAY : n - DAY] < 4), "a spike twice a day is what this series does"
    assert np.any((kind[n - 150 :] == SPIKES) & (z[n - 150 :] > 5))


def test_three_times_the_noise_around_the_same_level_is_found() -> None:
    rng = np.random.default_rng(3)
    d = rng.normal(0, 1, 5 * DAY)
    d[-90:] *= 3.0
    out = feed(fresh(), 100 + d, d)
    z, kind = deviations(out), kinds(out)
    assert np.all(np.abs(z[DAY:-90]) < 4), "ordinary noise is no pattern"
    # Three times the noise is both more spread and more points beyond the spike level.
    late, kind = z[-60:], kind[-60:]
    assert np.any(late > 4) and np.all(np.isin(kind[late > 4], [SPREAD, SPIKES]))


def test_nothing_is_reported_in_the_first_day() -> None:
    rng = np.random.default_rng(4)
    x = 500 + rng.normal(0, 5, DAY)
    x[600:] = x[599]
    assert not np.any(deviations(feed(fresh(), x, (x - 500) / 5)))


def test_a_flagged_point_moves_what_tracks_the_present_but_teaches_nothing() -> None:
    rng = np.random.default_rng(5)
    stats = fresh()
    x = 500 + rng.normal(0, 5, 2 * DAY)
    feed(stats, x, (x - 500) / 5)
    before = stats.state_dict()
    ids, t = np.array([0]), np.array([MINUTE * 2 * DAY])
    stats.assess(ids, t, np.array([600.0]), np.array([20.0]))
    stats.learn(ids, t, np.array([600.0]), np.array([20.0]), np.zeros(1), np.ones(1, bool))
    after = stats.state_dict()
    learned = ("counts", "total", "unit", "spread_long", "spike_rate", "spike_level", "step", "longest")
    assert all(np.array_equal(before[name], after[name]) for name in learned)
    assert after["last_x"][0] == 600.0 and after["spike_count"][0] > before["spike_count"][0]


def test_adopt_takes_the_current_run_as_normal() -> None:
    rng = np.random.default_rng(6)
    stats = fresh()
    x = 500 + rng.normal(0, 5, 2 * DAY + 30)
    x[-30:] = x[-31]
    out = feed(stats, x, (x - 500) / 5)
    assert deviations(out)[-1] < -4
    stats.adopt(np.array([0]))
    t = np.array([MINUTE * len(x)])
    assert stats.assess(np.array([0]), t, x[-1:], np.zeros(1)).deviation[0] == 0.0


def test_the_daily_routine_expects_a_nightly_burst_and_misses_a_missing_one() -> None:
    rng = np.random.default_rng(7)
    days = 8
    minutes = np.arange(days * DAY)
    burst = (minutes % DAY >= 120) & (minutes % DAY < 150)
    x = 5.0 + 100.0 * burst + rng.normal(0, 1, len(minutes))
    x[(days - 1) * DAY + 120 : (days - 1) * DAY + 150] = 5.0 + rng.normal(0, 1, 30)
    model = AutoModel(routine=True, patterns=True)
    model.resize(1)
    ids, out = np.array([0]), []
    for m in minutes:
        t, xm = np.array([MINUTE * m]), x[m : m + 1]
        assessed = model.assess(ids, t, xm)
        model.learn(ids, t, xm, np.ones(1) if m < (days - 1) * DAY else np.zeros(1), np.ones(1, bool))
        out.append(assessed)
    night = [out[(days - 2) * DAY + m] for m in range(125, 145)]
    assert all(abs(a.deviation[0]) < 4 for a in night), "a burst that comes every night is expected"
    missing = [out[(days - 1) * DAY + m] for m in range(125, 150)]
    assert any(a.pattern.kind[0] == ROUTINE and a.pattern.deviation[0] < -4 for a in missing)
    assert min(a.deviation[0] for a in missing) < -5


def test_a_missing_nightly_dip_is_reported_high() -> None:
    rng = np.random.default_rng(7)
    days = 8
    minutes = np.arange(days * DAY)
    dip = (minutes % DAY >= 120) & (minutes % DAY < 150)
    x = 105.0 - 100.0 * dip + rng.normal(0, 1, len(minutes))
    x[(days - 1) * DAY + 120 : (days - 1) * DAY + 150] = 105.0 + rng.normal(0, 1, 30)
    model = AutoModel(routine=True, patterns=True)
    model.resize(1)
    ids, out = np.array([0]), []
    for m in minutes:
        t, xm = np.array([MINUTE * m]), x[m : m + 1]
        out.append(model.assess(ids, t, xm))
        model.learn(ids, t, xm, np.ones(1) if m < (days - 1) * DAY else np.zeros(1), np.ones(1, bool))
    missing = [out[(days - 1) * DAY + m].pattern for m in range(125, 150)]
    routine = [p for p in missing if p.kind[0] == ROUTINE]
    assert routine and all(p.deviation[0] > 0 for p in routine)
    assert max(p.deviation[0] for p in routine) > 4


def test_routine_learns_bins_from_seen_points_only_once_a_day_clipped() -> None:
    model = DailyRoutine(warmup=5)
    model.resize(1)
    ids = np.array([0])
    for m in range(2 * DAY):
        model.learn(ids, np.array([MINUTE * m]), np.array([10.0 + (m % 7)]), np.ones(1))
    before = model.state_dict()
    # A flagged, seen point: the bins move a little (clipped), the level and scales do not.
    model.learn(ids, np.array([MINUTE * 2 * DAY]), np.array([1e6]), np.zeros(1), np.ones(1, bool))
    after = model.state_dict()
    for name in ("level", "mean_abs", "spread"):
        np.testing.assert_array_equal(before[name], after[name])
    moved = float(np.abs(after["offset"] - before["offset"]).max())
    assert 0 < moved < 10.0


def test_the_policy_rises_to_a_pattern_level_one_strong_point_at_a_time() -> None:
    policy = AlertPolicy(false_alerts_per_week=1)
    policy.resize(1)
    ids, levels = np.array([0]), []
    for step in range(10):
        policy.decide(ids, np.array([60.0 * step]), np.array([0.5]), pattern=np.array([-1e-20]))
        levels.append(float(policy.arrays["evidence"][0, 1]))
    steps = np.diff([0.0, *levels])
    assert np.all(steps <= -np.log(1e-4) + np.log(0.05) + 1e-9)
    assert levels[-1] == pytest.approx(-np.log(1e-20) + np.log(0.05))


def run_engine(
    x: np.ndarray, t0: float = 1_700_000_000.0, scored: list[ScoredBatch] | None = None
) -> list[tuple[int, Any]]:
    """Every point through the engine and incident tracker, patterns on; returns (index, event)s.

    The engine's output for each point is appended to ``scored`` if given.
    """
    config = parse_config({"model_params": {"routine": True, "patterns": True}})
    engine, tracker = build_engine(config), build_tracker(config, "cpu")
    key, labels = 'cpu{job="api"}', {'cpu{job="api"}': {"__name__": "cpu", "job": "api"}}
    ids = engine.register([key])
    events = []
    for k in range(len(x)):
        t = np.array([t0 + MINUTE * k])
        out = engine.process(ids, t, x[k : k + 1])
        events += [(k, e) for e in tracker.observe(float(t[0]), [key], labels, t, x[k : k + 1], out, "auto")]
        if scored is not None:
            scored.append(out)
    return events


def test_a_regular_nightly_burst_leaves_the_hours_after_it_alone() -> None:
    rng = np.random.default_rng(7)
    days = 8
    minutes = np.arange(days * DAY)
    burst = (minutes % DAY >= 120) & (minutes % DAY < 150)
    x = 5.0 + 100.0 * burst + rng.normal(0, 1, len(minutes))
    scored: list[ScoredBatch] = []
    midnight = 1_699_920_000.0
    events = run_engine(x, midnight, scored)
    assert not [k for k, e in events if e.change == "opened" and k >= DAY], "no alert once a day is learned"
    # From 02:30 to 08:00 the forecast is right on average: no half-hour is off to one side.
    deviation = np.array([float(out.deviation[0]) for out in scored])
    for day in range(3, days):
        after = deviation[day * DAY + 150 : day * DAY + 480]
        assert np.abs(np.convolve(after, np.ones(30) / 30, "valid")).max() < 1.0, f"day {day}"


def test_a_stuck_count_alerts_although_the_engine_dithers_counts() -> None:
    rng = np.random.default_rng(8)
    n, stuck = 3 * DAY, 3 * DAY - 120
    x = np.round(40 + 5 * np.sin(np.arange(n) * 2 * np.pi / DAY) + rng.normal(0, 3, n))
    x[stuck:] = x[stuck - 1]
    opened = [(k, e) for k, e in run_engine(x) if e.change == "opened"]
    assert opened and all(k >= stuck for k, _ in opened)
    assert opened[0][1].top.pattern == "flat"


def test_a_stuck_series_alerts_for_as_long_as_it_is_stuck() -> None:
    rng = np.random.default_rng(3)
    n, stuck, moves = 4 * DAY, 4 * DAY - 360, 4 * DAY - 120
    x = 40 + 5 * np.sin(np.arange(n) * 2 * np.pi / DAY) + rng.normal(0, 1, n)
    x[stuck:moves] = x[stuck - 1]
    changes = [(k, e.change) for k, e in run_engine(x) if e.change in ("opened", "resolved")]
    assert changes[0][1] == "opened" and stuck <= changes[0][0] < stuck + 30
    assert changes[1][1] == "resolved" and changes[1][0] >= moves, "not accepted as a new normal"
    assert len(changes) == 2


def test_a_stuck_exporter_alerts_through_the_engine_and_the_alert_says_so() -> None:
    config = parse_config({"model_params": {"routine": True, "patterns": True}})
    engine, tracker = build_engine(config), build_tracker(config, "cpu")
    key, labels = 'cpu{job="api"}', {'cpu{job="api"}': {"__name__": "cpu", "job": "api"}}
    ids = engine.register([key])
    rng = np.random.default_rng(8)
    n, stuck = 3 * DAY, 3 * DAY - 90
    x = 40 + 5 * np.sin(np.arange(n) * 2 * np.pi / DAY) + rng.normal(0, 1, n)
    x[stuck:] = x[stuck - 1]
    opened = []
    for k in range(n):
        t = np.array([1_700_000_000.0 + MINUTE * k])
        out = engine.process(ids, t, x[k : k + 1])
        events = tracker.observe(float(t[0]), [key], labels, t, x[k : k + 1], out, "auto")
        opened += [(k, e) for e in events if e.change == "opened"]
    assert opened and all(k >= stuck for k, _ in opened), "one alert, once stuck"
    k, event = opened[0]
    assert k - stuck <= 30
    assert event.top.pattern == "flat"
    assert "unchanged at" in event.summary and "unchanged at" in event.description

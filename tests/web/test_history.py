"""RecentHistory: ring order, repeats within a batch, gaps, resets, size."""

from __future__ import annotations

import numpy as np
import pytest

from detector.calibration import TailCalibrator
from detector.engine import Engine
from detector.policy import AlertPolicy
from models import RobustEWMA
from service.history import RecentHistory


def _record(history: RecentHistory, engine: Engine, keys: list[str], t: np.ndarray, x: np.ndarray) -> None:
    ids = engine.register(keys)
    history.record(ids, t, x, engine.process(ids, t, x))


@pytest.fixture
def engine() -> Engine:
    # A generous budget: a series 200 points old may alert on a short spike.
    return Engine(RobustEWMA(warmup=3), TailCalibrator(warmup=5), AlertPolicy(false_alerts_per_week=100))


def test_keeps_the_newest_points_in_time_order_across_batches_and_wraps(engine: Engine) -> None:
    history = RecentHistory(capacity=4)
    for start in range(0, 10, 3):
        t = np.arange(start, start + 3, dtype=float)
        _record(history, engine, ["a"] * 3, t, 100.0 + t)
    points = history.series(0)
    assert points["t"].tolist() == [8.0, 9.0, 10.0, 11.0]
    assert points["value"].tolist() == [108.0, 109.0, 110.0, 111.0]
    assert points["value"].dtype == np.float32 and points["t"].dtype == np.float64


def test_a_batch_longer_than_the_buffer_keeps_its_last_points(engine: Engine) -> None:
    history = RecentHistory(capacity=3)
    keys = ["a", "b"] * 5
    t = np.repeat(np.arange(5.0), 2)
    _record(history, engine, keys, t, np.arange(10.0))
    assert history.series(0)["value"].tolist() == [4.0, 6.0, 8.0]
    assert history.series(1)["value"].tolist() == [5.0, 7.0, 9.0]


def test_gaps_are_not_kept_and_results_travel_with_each_point(engine: Engine) -> None:
    history = RecentHistory(capacity=250)
    rng = np.random.default_rng(3)
    x = rng.normal(10.0, 1.0, 200)
    x[[5, 6]] = np.nan
    x[-6:] = 60.0
    _record(history, engine, ["a"] * 200, 60.0 * np.arange(200.0), x)
    points = history.series(0)
    assert len(points["t"]) == 198 and 300.0 not in points["t"]
    assert points["score"][-6] > 0.999 and points["alert"][-1]
    assert np.isnan(points["lower"][0]) and np.isfinite(points["upper"][-10])


def test_reset_forgets_only_those_series_and_unknown_rows_are_empty(engine: Engine) -> None:
    history = RecentHistory(capacity=5)
    _record(history, engine, ["a", "b"], np.zeros(2), np.ones(2))
    history.reset(np.array([1]))
    assert len(history.series(0)["t"]) == 1
    assert len(history.series(1)["t"]) == 0
    assert len(history.series(99)["t"]) == 0


def test_costs_about_25_bytes_a_point() -> None:
    assert RecentHistory().nbytes_per_series() == 240 * 25 + 8
    with pytest.raises(ValueError, match="at least one point"):
        RecentHistory(capacity=0)


def test_beyond_max_series_slots_go_to_series_that_alert_or_are_looked_at(engine: Engine) -> None:
    history = RecentHistory(capacity=50, max_series=2)
    keys = ["a", "b", "c"]
    rng = np.random.default_rng(5)
    for step in range(40):  # a and b take the two slots; c has none
        _record(history, engine, keys, np.full(3, float(step)), rng.normal(10.0, 1.0, 3))
    assert [len(history.series(row)["t"]) for row in range(3)] == [40, 40, 0]
    assert history.kept == 2
    for step in range(40, 46):  # c spikes: it takes the slot earned longest ago
        _record(history, engine, keys, np.full(3, float(step)), np.array([10.0, 10.0, 90.0]))
    kept = history.series(2)
    assert len(kept["t"]) >= 1 and kept["score"][0] >= 0.999
    assert [len(history.series(row)["t"]) for row in range(2)].count(0) == 1
    # Looking at a series gives it a slot: the one earned longest ago (c's is newer, and alerting).
    looked = next(row for row in range(2) if len(history.series(row)["t"]) == 0)
    history.watch(looked)
    assert len(history.series(2)["t"]) > 0 and history.kept == 2
    _record(history, engine, keys, np.full(3, 46.0), np.array([10.0, 10.0, 90.0]))
    assert history.series(looked)["t"].tolist() == [46.0]


def test_reset_frees_the_slot_for_another_series(engine: Engine) -> None:
    history = RecentHistory(capacity=5, max_series=1)
    _record(history, engine, ["a"], np.zeros(1), np.ones(1))
    history.reset(np.array([0]))
    _record(history, engine, ["b"], np.ones(1), np.ones(1))
    assert history.kept == 1 and len(history.series(1)["t"]) == 1

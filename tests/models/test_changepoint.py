"""Behaviour of the CUSUM level-shift model: flag a shift once, then adopt it."""

from __future__ import annotations

import numpy as np
import pytest

from models.changepoint import LevelShift


def replay(model: LevelShift, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score and learn like the engine does; returns (expected, scale, deviation) per point."""
    ids = np.array([0])
    expected, scale, deviation = [], [], []
    for k, value in enumerate(values):
        t, x = np.array([60.0 * k]), np.array([value])
        out = model.assess(ids, t, x)
        weight = 1.0 if out.warming[0] or abs(out.deviation[0]) < 4 else 0.01
        model.learn(ids, t, x, np.full(1, weight))
        expected.append(out.expected[0])
        scale.append(out.scale[0])
        deviation.append(out.deviation[0])
    return np.array(expected), np.array(scale), np.array(deviation)


def noisy(n: int, level: float, sd: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(level, sd, n)


@pytest.mark.parametrize("factor", [1.3, 0.7])
def test_thirty_percent_shift_is_flagged_then_becomes_normal(factor: float) -> None:
    model = LevelShift()
    model.resize(1)
    before = noisy(400, 200.0, 10.0, seed=0)
    after = noisy(200, 200.0 * factor, 10.0, seed=1)
    expected, _, deviation = replay(model, np.concatenate([before, after]))
    assert np.max(np.abs(deviation[60:400])) < 5.5
    assert np.max(np.abs(deviation[400:403])) > 5, "flagged within a few points"
    assert np.sign(deviation[400]) == np.sign(factor - 1)
    assert np.max(np.abs(deviation[450:])) < 4.5, "normal again within 50 points"
    assert expected[-1] == pytest.approx(200.0 * factor, rel=0.03)


def test_small_sustained_shift_shows_in_the_evidence_not_one_point() -> None:
    model = LevelShift()
    model.resize(1)
    values = np.concatenate([noisy(400, 0.0, 1.0, seed=2), noisy(200, 1.2, 1.0, seed=3)])
    expected, scale, deviation = replay(model, values)
    point = (values[400:425] - expected[400:425]) / scale[400:425]
    assert np.max(deviation[400:425]) > 3.5
    # Run evidence, not single points, carries the score through the shift.
    assert np.median(deviation[405:420]) > np.median(point[5:20]) + 1.0
    assert expected[-1] == pytest.approx(1.2, abs=0.5), "the new level was adopted"


def test_a_single_spike_is_not_adopted() -> None:
    model = LevelShift()
    model.resize(1)
    values = noisy(400, 50.0, 2.0, seed=4)
    values[300] = 150.0
    expected, _, deviation = replay(model, values)
    assert deviation[300] > 20
    assert abs(expected[301] - expected[299]) < 1.0
    assert np.max(np.abs(deviation[301:])) < 5


def test_warming_series_do_not_run_the_cusum() -> None:
    model = LevelShift(warmup=20)
    model.resize(1)
    replay(model, np.arange(15.0) * 10)
    assert model.arrays["up"][0] == 0 and model.arrays["down"][0] == 0


def test_parameters_are_checked_and_stored() -> None:
    with pytest.raises(ValueError, match="threshold"):
        LevelShift(threshold=0.0)
    with pytest.raises(ValueError, match="warmup"):
        LevelShift(warmup=1)
    model = LevelShift(drift=0.25, threshold=6.0, halflife=10.0, scale_halflife=100.0, huber=2.0, warmup=5)
    assert (model.drift, model.threshold, model.halflife) == (0.25, 6.0, 10.0)
    assert (model.scale_halflife, model.huber, model.warmup) == (100.0, 2.0, 5)


def test_a_wild_first_value_is_not_taken_as_the_level() -> None:
    model = LevelShift()
    model.resize(1)
    values = np.concatenate([[1e6], noisy(60, 100.0, 5.0, seed=6)])
    expected, scale, _ = replay(model, values)
    assert abs(expected[3] - 100.0) < 20
    assert expected[-1] == pytest.approx(100.0, abs=5.0)
    assert scale[-1] == pytest.approx(5.0, rel=0.5)

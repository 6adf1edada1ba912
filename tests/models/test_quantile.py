"""Behaviour of the online median/MAD model on the data it exists for."""

from __future__ import annotations

import numpy as np
import pytest

from models.quantile import RobustQuantile


def feed(model: RobustQuantile, values: np.ndarray, series: int = 0) -> np.ndarray:
    """Learn every value; returns the median the model held before each one."""
    ids = np.array([series])
    medians = np.empty(len(values))
    for k, value in enumerate(values):
        medians[k] = model.arrays["median"][series]
        model.learn(ids, np.array([60.0 * k]), np.array([value]), np.ones(1))
    return medians


def state(model: RobustQuantile, value: float = 0.0) -> tuple[float, float]:
    out = model.assess(np.array([0]), np.zeros(1), np.array([value]))
    return float(out.expected[0]), float(out.scale[0])


def test_gaussian_median_and_scale_match_mean_and_sigma() -> None:
    model = RobustQuantile()
    model.resize(1)
    feed(model, np.random.default_rng(0).normal(100.0, 5.0, 3000))
    median, scale = state(model)
    assert median == pytest.approx(100.0, abs=2.0)
    assert scale == pytest.approx(5.0, rel=0.15)


def test_student_t_median_and_scale_hold_against_outliers() -> None:
    rng = np.random.default_rng(1)
    model = RobustQuantile()
    model.resize(1)
    clean_medians = feed(model, 100.0 + rng.standard_t(2, 2000))
    clean_scale = state(model)[1]
    # Student-t(2) has median 0 and 1.4826 * MAD = 1.21 (its sd is infinite).
    assert np.mean(clean_medians[500:]) == pytest.approx(100.0, abs=0.1)
    assert np.std(clean_medians[500:]) < 0.4
    assert clean_scale == pytest.approx(1.21, rel=0.25)

    contaminated = 100.0 + rng.standard_t(2, 1000)
    contaminated[rng.random(1000) < 0.1] = 1e4  # 10% wild points, all on one side
    medians = feed(model, contaminated)
    scale = state(model)[1]
    # 10% on one side moves the true median to t2's 55.6% quantile, 0.14.
    assert np.mean(medians[200:]) == pytest.approx(100.14, abs=0.2)
    assert np.max(np.abs(medians - 100.0)) < 2.0
    assert 0.8 < scale / clean_scale < 1.4


def test_low_count_poisson_scale_stays_positive_and_meaningful() -> None:
    model = RobustQuantile()
    model.resize(2)
    rng = np.random.default_rng(2)
    feed(model, rng.poisson(0.3, 3000).astype(float), series=0)
    feed(model, rng.poisson(0.02, 3000).astype(float), series=1)
    ids = np.array([0, 1])
    out = model.assess(ids, np.zeros(2), np.array([1.0, 1.0]))
    assert np.all(np.isfinite(out.scale)) and np.all(out.scale > 0)
    # Poisson(0.3) has sd 0.55; its MAD is 0.
    assert model.arrays["mad"][0] < 0.1
    assert 0.3 < out.scale[0] < 0.8
    assert abs(out.expected[0]) < 0.05
    assert out.deviation[0] < 3.0, "a single event at rate 0.3 is ordinary"
    assert 0.05 < out.scale[1] < 0.5, "rarer events, smaller but not collapsed scale"
    burst = model.assess(ids, np.zeros(2), np.array([6.0, 6.0]))
    assert np.all(burst.deviation > 8)


def test_constant_series_gives_finite_large_deviation_for_a_change() -> None:
    model = RobustQuantile()
    model.resize(1)
    feed(model, np.full(100, 7.0))
    out = model.assess(np.array([0]), np.zeros(1), np.array([8.0]))
    assert out.scale[0] > 0 and np.isfinite(out.deviation[0]) and out.deviation[0] > 1e3


def test_weight_scales_the_median_step() -> None:
    model = RobustQuantile()
    model.resize(2)
    values = np.random.default_rng(3).normal(0.0, 1.0, 200)
    feed(model, values, series=0)
    feed(model, values, series=1)
    before = model.arrays["median"][:2].copy()
    model.learn(np.array([0, 1]), np.zeros(2), np.array([50.0, 50.0]), np.array([1.0, 0.5]))
    moved = model.arrays["median"][:2] - before
    assert moved[0] > 0 and moved[1] == pytest.approx(moved[0] / 2, rel=0.05)


def test_hyper_parameters_are_the_constructor_arguments() -> None:
    model = RobustQuantile(halflife=5.0, scale_halflife=50.0, warmup=7)
    assert (model.halflife, model.scale_halflife, model.warmup) == (5.0, 50.0, 7)
    assert repr(model) == "RobustQuantile(halflife=5.0, scale_halflife=50.0, warmup=7)"


def test_a_wild_first_value_is_not_taken_as_the_level() -> None:
    model = RobustQuantile()
    model.resize(1)
    medians = feed(model, np.concatenate([[1e6], np.random.default_rng(5).normal(100.0, 5.0, 60)]))
    median, scale = state(model)
    assert abs(medians[3] - 100.0) < 20
    assert median == pytest.approx(100.0, abs=5.0) and scale == pytest.approx(5.0, rel=0.5)


def test_warmup_shorter_than_the_start_is_refused() -> None:
    with pytest.raises(ValueError, match="warmup must be at least 3"):
        RobustQuantile(warmup=2)

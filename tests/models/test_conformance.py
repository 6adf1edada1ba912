"""One suite every univariate model must pass (river's ``checks``, vectorised).

Each model is run on five deliberately different series (Gaussian, heavy
tailed, sparse counts, daily cycle, level shift with a spike), with the
engine's weighting: full weight while warming, 0.01 for points beyond 4
scales, and weight 0 with ``x = 0`` for gaps, which is how the engine passes
NaN.
"""

from __future__ import annotations

import inspect
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import models
from models.auto import AutoModel
from models.changepoint import LevelShift
from models.ewma import RobustEWMA
from models.quantile import RobustQuantile
from models.routine import DailyRoutine
from models.seasonal import SeasonalProfile

Factory = Callable[[], Any]

MODELS: dict[str, Factory] = {
    "RobustEWMA": RobustEWMA,
    "SeasonalProfile": SeasonalProfile,
    "AutoModel": AutoModel,
    "RobustQuantile": RobustQuantile,
    "LevelShift": LevelShift,
    "DailyRoutine": DailyRoutine,
    "AutoModel+patterns": lambda: AutoModel(routine=True, patterns=True),
}

N_SERIES = 5
STEPS = 400
INTERVAL = 600.0
GAP_EVERY = 13


def make_data(steps: int = STEPS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps (steps,) and values (steps, N_SERIES), one column per kind of series."""
    rng = np.random.default_rng(seed)
    t = 1_700_000_000.0 + INTERVAL * np.arange(steps)
    shifted = rng.normal(50.0, 2.0, steps) + np.where(np.arange(steps) >= steps // 2, 15.0, 0.0)
    shifted[steps // 3] += 60.0
    x = np.column_stack(
        [
            rng.normal(100.0, 5.0, steps),
            20.0 + rng.standard_t(2, steps),
            rng.poisson(0.3, steps).astype(np.float64),
            300.0 + 80.0 * np.sin(2 * np.pi * t / 86_400.0) + rng.normal(0.0, 4.0, steps),
            shifted,
        ]
    )
    return t, x


def engine_weight(warming: np.ndarray, deviation: np.ndarray) -> np.ndarray:
    return np.where(warming | (np.abs(deviation) < 4.0), 1.0, 0.01)


def step(model: Any, ids: np.ndarray, t: np.ndarray, x: np.ndarray, gap: bool = False) -> Any:
    """One engine round: assess, then learn with the engine's weights."""
    if gap:
        x = np.zeros_like(x)
    out = model.assess(ids, t, x)
    weight = np.zeros(len(ids)) if gap else engine_weight(out.warming, out.deviation)
    model.learn(ids, t, x, weight)
    return out


def fresh(factory: Factory, n_series: int) -> Any:
    model = factory()
    model.resize(n_series)
    return model


def present(k: int, series: int) -> bool:
    """Not every series reports every round: the batch is a varying subset."""
    return (k + series) % 7 != 3


@pytest.fixture(params=list(MODELS), ids=list(MODELS))
def factory(request: pytest.FixtureRequest) -> Factory:
    return MODELS[request.param]


def test_every_exported_univariate_model_is_checked() -> None:
    exported = {
        name
        for name in models.__all__
        if inspect.isclass(obj := getattr(models, name))
        and not getattr(obj, "_is_protocol", False)
        and all(callable(getattr(obj, m, None)) for m in ("assess", "learn", "resize"))
    }
    assert exported <= set(MODELS), f"add {sorted(exported - set(MODELS))} to MODELS"


def test_batch_path_equals_one_series_at_a_time(factory: Factory) -> None:
    t, x = make_data()
    rng = np.random.default_rng(1)
    together = fresh(factory, N_SERIES)
    alone = [fresh(factory, 1) for _ in range(N_SERIES)]
    batch_out = np.full((STEPS, N_SERIES, 2), np.nan)
    single_out = np.full((STEPS, N_SERIES, 2), np.nan)
    for k in range(STEPS):
        gap = k % GAP_EVERY == 5
        ids = rng.permutation(N_SERIES)
        ids = np.array([s for s in ids if present(k, s)])
        out = step(together, ids, np.full(len(ids), t[k]), x[k, ids], gap)
        batch_out[k, ids] = np.column_stack([out.expected, out.deviation])
        for s in ids:
            one = step(alone[s], np.array([0]), t[k : k + 1], x[k, s : s + 1], gap)
            single_out[k, s] = [one.expected[0], one.deviation[0]]
    np.testing.assert_allclose(batch_out, single_out, rtol=1e-9, atol=1e-9)


def run(model: Any, t: np.ndarray, x: np.ndarray, start: int, stop: int) -> np.ndarray:
    ids = np.arange(N_SERIES)
    rows = []
    for k in range(start, stop):
        out = step(model, ids, np.full(N_SERIES, t[k]), x[k], gap=k % GAP_EVERY == 5)
        columns = [out.expected, out.scale, out.deviation, out.warming]
        if out.pattern is not None:
            pattern = out.pattern
            columns += [pattern.deviation, pattern.kind, pattern.seen, pattern.usual]
        rows.append(np.column_stack(columns))
    return np.array(rows)


def test_state_round_trips_through_npz_without_pickle(factory: Factory) -> None:
    t, x = make_data()
    original = fresh(factory, N_SERIES)
    run(original, t, x, 0, 250)
    buffer = io.BytesIO()
    np.savez(buffer, **original.state_dict())
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as stored:
        state = {name: stored[name] for name in stored.files}
    restored = factory()
    restored.load_state_dict(state)
    after = run(original, t, x, 250, STEPS)
    np.testing.assert_array_equal(run(restored, t, x, 250, STEPS), after)
    if after.shape[2] > 4:
        # Saved after more than a day (the patterns' warm-up), with patterns found after it.
        assert t[250] - t[0] > 86_400.0 and np.any(after[:, :, 4] != 0)


def test_deterministic(factory: Factory) -> None:
    t, x = make_data()
    first = run(fresh(factory, N_SERIES), t, x, 0, STEPS)
    second = run(fresh(factory, N_SERIES), t, x, 0, STEPS)
    np.testing.assert_array_equal(first, second)


def test_warming_then_warm(factory: Factory) -> None:
    t, x = make_data()
    model = fresh(factory, N_SERIES)
    out = run(model, t, x, 0, 200)
    warming = out[:, :, 3].astype(bool)
    assert warming[:5].all(), "a model must not trust its first points"
    assert not warming[-1].any(), "after 200 rounds (185 learned points) a model must be warm"


def test_weight_zero_teaches_nothing(factory: Factory) -> None:
    t, x = make_data()
    model = fresh(factory, N_SERIES)
    run(model, t, x, 0, 150)
    before = model.state_dict()
    ids = np.arange(N_SERIES)
    for k, value in enumerate([0.0, 1e6, -1e6, np.pi]):
        model.learn(ids, np.full(N_SERIES, t[-1] + k), np.full(N_SERIES, value), np.zeros(N_SERIES))
    after = model.state_dict()
    assert before.keys() == after.keys()
    changed = [name for name in before if not np.array_equal(before[name], after[name])]
    assert not changed, f"weight 0 changed {changed}"


def test_spike_after_normal_points_deviates(factory: Factory) -> None:
    rng = np.random.default_rng(2)
    model = fresh(factory, 1)
    ids = np.array([0])
    for k in range(500):
        step(model, ids, np.array([INTERVAL * k]), rng.normal(100.0, 5.0, 1))
    out = model.assess(ids, np.array([INTERVAL * 500]), np.array([200.0]))
    assert abs(out.deviation[0]) > 5
    assert not out.warming[0]


def test_state_per_series_is_small(factory: Factory) -> None:
    model = fresh(factory, 3)
    if not hasattr(model, "nbytes_per_series"):
        pytest.skip("model does not report its size")
    # The budget is 8 KiB of engine state per series, models and calibration together;
    # the default models keep to a quarter of it, the opt-in patterns may take half.
    limit = 4096 if isinstance(model, AutoModel) and model.patterns else 2048
    assert 0 < model.nbytes_per_series() < limit


def test_adopt_moves_the_forecast_by_the_shift_and_nothing_else(factory: Factory) -> None:
    t, x = make_data()
    model = fresh(factory, N_SERIES)
    run(model, t, x, 0, 150)
    ids = np.arange(N_SERIES)
    when, value = np.full(N_SERIES, t[-1] + INTERVAL), x[-1]
    before = model.assess(ids, when, value)
    shift = np.linspace(-50.0, 50.0, N_SERIES)
    model.adopt(ids[1:], shift[1:])  # series 0 is not adopted: it must not move
    after = model.assess(ids, when, value)
    np.testing.assert_allclose(after.expected - before.expected, np.r_[0.0, shift[1:]], rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(after.scale, before.scale)

"""The calibration contract: a score of 1 - a happens about a times per point on normal data.

On anomaly-free data of several kinds, after warm-up, the fraction of points
with ``anomaly_score >= 1 - a`` must lie within [a/2, 2a] for a = 0.01 and
0.001, through the full default engine (auto model, tail calibration).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from detector import AlertPolicy, Engine, TailCalibrator
from models import AutoModel

POINTS = 30_000
WARMUP = 5_000  # three and a half days at 1-minute sampling: the daily profile is learned
SERIES_PER_KIND = 8
STEP = 60.0


def _ar1(rng: np.random.Generator, phi: float) -> np.ndarray:
    noise = rng.standard_normal(POINTS)
    out = np.empty(POINTS)
    out[0] = noise[0]
    for i in range(1, POINTS):
        out[i] = phi * out[i - 1] + noise[i]
    return out


def _kinds() -> dict[str, Callable[[np.random.Generator], np.ndarray]]:
    t = np.arange(POINTS) * STEP
    return {
        "gaussian": lambda rng: rng.normal(100, 5, POINTS),
        "heavy-tailed (Student t, 3 df)": lambda rng: 50 + 3 * rng.standard_t(3, POINTS),
        "seasonal (daily + weekly)": lambda rng: (
            200
            + 80 * np.sin(2 * np.pi * t / 86_400)
            + 20 * np.sin(2 * np.pi * t / 604_800)
            + rng.normal(0, 8, POINTS)
        ),
        "autocorrelated (AR1, 0.8)": lambda rng: 10 + _ar1(rng, 0.8),
        "low-rate counts (Poisson 0.5)": lambda rng: rng.poisson(0.5, POINTS).astype(float),
        "counts (Poisson 4)": lambda rng: rng.poisson(4, POINTS).astype(float),
    }


@pytest.fixture(scope="module")
def normal_scores() -> dict[str, np.ndarray]:
    """Scores of every kind of normal data, all series scored together in batches."""
    rng = np.random.default_rng(20261121)
    kinds = _kinds()
    names = [f"{kind}#{i}" for kind in kinds for i in range(SERIES_PER_KIND)]
    data = np.stack([kinds[name.split("#")[0]](rng) for name in names])
    engine = Engine(AutoModel(), TailCalibrator(), AlertPolicy())
    ids = engine.register(names)
    scores = np.empty_like(data)
    for i in range(POINTS):
        scores[:, i] = engine.process(ids, np.full(len(ids), i * STEP), data[:, i]).anomaly_score
    return {kind: scores[[j for j, n in enumerate(names) if n.startswith(kind)], WARMUP:] for kind in kinds}


@pytest.mark.parametrize("alpha", [0.01, 0.001])
@pytest.mark.parametrize("kind", list(_kinds()))
def test_score_frequency_matches_its_probability(normal_scores, kind, alpha):
    scores = normal_scores[kind]
    rate = float(np.mean(scores >= 1 - alpha))
    assert alpha / 2 <= rate <= 2 * alpha, f"{kind}: {rate:.5f} of points scored >= {1 - alpha}"


def test_no_confident_scores_while_warming_up():
    engine = Engine(AutoModel(), TailCalibrator(warmup=100), AlertPolicy())
    ids = engine.register(["fresh"])
    scores, warming = [], []
    for i, value in enumerate([10.0, 11.0, 9.0, 500.0, 10.0, 10.0, -400.0, 10.0]):
        out = engine.process(ids, np.array([i * STEP]), np.array([value]))
        scores.append(float(out.anomaly_score[0]))
        warming.append(bool(out.warming[0]))
    assert all(warming)
    assert max(scores) < 0.9, "a series with a handful of points must not claim confidence"


def test_calibrator_p_values_are_uniform_on_its_own_history():
    calibrator = TailCalibrator(memory=5_000, warmup=100)
    calibrator.resize(1)
    ids = np.array([0])
    rng = np.random.default_rng(3)
    p_values = []
    for z in rng.standard_t(4, 20_000):
        p_values.append(float(calibrator.p_value(ids, np.array([z]))[0]))
        calibrator.learn(ids, np.array([z]), np.ones(1))
    p = np.array(p_values[1_000:])
    for level in (0.5, 0.1, 0.01):
        assert level / 1.5 <= np.mean(p <= level) <= level * 1.5

"""Behavioural tests of the NAB baselines in ``benchmarks/baselines.py``."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks import baselines

SCORERS: dict[str, baselines.Scorer] = {
    "windowed_gaussian": baselines.windowed_gaussian_scores,
    "half_space_trees": baselines.half_space_trees_scores,
}
WARMUP = 400  # past HST's first reference window (250 points)
SPIKE_AT = 900


@pytest.fixture(scope="module")
def spiky() -> np.ndarray:
    """Return a flat-ish noisy series with one big spike at ``SPIKE_AT``."""
    rng = np.random.default_rng(0)
    values = 10.0 + rng.normal(0.0, 0.2, SPIKE_AT + 100)
    values[SPIKE_AT] = 20.0
    return values


@pytest.fixture(scope="module")
def spiky_scores(spiky: np.ndarray) -> dict[str, np.ndarray]:
    """Return the scores of the spiky series by each baseline, computed once."""
    return {name: scorer(spiky) for name, scorer in SCORERS.items()}


def _reference_windowed_gaussian(values: np.ndarray, window: int, step: int) -> np.ndarray:
    """Point-by-point windowed Gaussian, following NAB's detector loop."""
    learned: list[float] = []
    buffer: list[float] = []
    mean, std = 0.0, 1.0
    scores = np.zeros(len(values))
    for i, value in enumerate(values.tolist()):
        if not math.isfinite(value):
            continue
        if learned:
            scores[i] = 1.0 - 0.5 * math.erfc(abs(value - mean) / std / math.sqrt(2.0))
        if len(learned) < window:
            learned.append(value)
        else:
            buffer.append(value)
            if len(buffer) < step:
                continue
            learned = learned[step:] + buffer
            buffer = []
        mean, std = float(np.mean(learned)), float(np.std(learned))
        std = std if std > 0.0 else baselines.MIN_STD
    return scores


@pytest.mark.parametrize("name", SCORERS)
def test_spike_scores_above_normal_points(name: str, spiky_scores: dict[str, np.ndarray]) -> None:
    """A big spike outscores 99 % of the normal points before it."""
    scores = spiky_scores[name]
    normal = scores[WARMUP:SPIKE_AT]
    assert scores[SPIKE_AT] > np.quantile(normal, 0.99)


def test_windowed_gaussian_spike_beats_every_normal_point(
    spiky_scores: dict[str, np.ndarray],
) -> None:
    """The z-score detector ranks the spike above every earlier normal point."""
    scores = spiky_scores["windowed_gaussian"]
    assert scores[SPIKE_AT] > scores[WARMUP:SPIKE_AT].max()


@pytest.mark.parametrize("name", SCORERS)
def test_scores_lie_in_unit_interval(name: str, spiky: np.ndarray) -> None:
    """Scores stay in [0, 1], also on constant stretches and huge values."""
    values = np.concatenate([spiky[:600], np.full(50, 3.0), [np.nan, -1e9, np.inf, 1e9]])
    scores = SCORERS[name](values)
    assert scores.shape == values.shape
    assert np.all((scores >= 0.0) & (scores <= 1.0))


@pytest.mark.parametrize("name", SCORERS)
def test_nan_scores_zero_and_is_not_learned(name: str, spiky: np.ndarray) -> None:
    """NaN scores 0 and the other scores are those of the series without it."""
    values = spiky[:700].copy()
    gaps = np.array([0, 5, 300, 301, 650])
    values[gaps] = np.nan
    scores = SCORERS[name](values)
    assert np.all(scores[gaps] == 0.0)
    kept = np.ones(values.size, dtype=bool)
    kept[gaps] = False
    np.testing.assert_array_equal(scores[kept], SCORERS[name](values[kept]))


@pytest.mark.parametrize("name", SCORERS)
def test_scores_are_causal(name: str, spiky: np.ndarray, spiky_scores: dict[str, np.ndarray]) -> None:
    """Appending later points leaves earlier scores unchanged."""
    for end in (1, 260, SPIKE_AT, SPIKE_AT + 1):
        np.testing.assert_array_equal(SCORERS[name](spiky[:end]), spiky_scores[name][:end])


def test_windowed_gaussian_matches_nab_loop(spiky: np.ndarray) -> None:
    """The vectorised detector matches NAB's point-by-point loop."""
    values = spiky[:300].copy()
    values[[3, 40, 41]] = np.nan
    values[100:130] = 7.0  # a constant stretch: zero deviation in a small window
    for window, step in ((20, 5), (50, 1), (6400, 100)):
        np.testing.assert_allclose(
            baselines.windowed_gaussian_scores(values, window=window, step=step),
            _reference_windowed_gaussian(values, window, step),
            rtol=0.0,
            atol=1e-9,
        )


def test_half_space_trees_depends_on_seed(spiky: np.ndarray) -> None:
    """HST is reproducible for a seed and differs across seeds."""
    values = spiky[:400]
    first = baselines.half_space_trees_scores(values, seed=1)
    np.testing.assert_array_equal(first, baselines.half_space_trees_scores(values, seed=1))
    assert not np.array_equal(first, baselines.half_space_trees_scores(values, seed=2))


def test_write_results_keeps_rows_and_order(tmp_path: Path) -> None:
    """Result files keep every row, in order, with the original text."""
    data_dir, out_dir = tmp_path / "data", tmp_path / "out"
    files = {
        "catA/one.csv": [
            ("2014-01-01 00:05:00", "3"),
            ("2014-01-01 00:00:00", ""),
            ("2014-01-01 00:00:00", "nan"),
            ("2014-01-01 00:10:00", "4.5"),
        ],
        "catB/two.csv": [(f"2014-01-02 00:{m:02d}:00", str(m)) for m in range(7)],
    }
    for rel, rows in files.items():
        path = data_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            csv.writer(fh).writerows([("timestamp", "value"), *rows])
    seen: list[np.ndarray] = []

    def scorer(values: np.ndarray) -> np.ndarray:
        seen.append(values)
        return np.linspace(0.0, 1.0, values.size)

    assert baselines.write_results(data_dir, out_dir, scorer) == 11
    np.testing.assert_array_equal(seen[0], [3.0, np.nan, np.nan, 4.5])
    for rel, rows in files.items():
        with (out_dir / rel).open(newline="") as fh:
            out = list(csv.reader(fh))
        assert out[0] == ["timestamp", "value", "anomaly_score"]
        assert [tuple(row[:2]) for row in out[1:]] == rows
        np.testing.assert_allclose([float(row[2]) for row in out[1:]], np.linspace(0.0, 1.0, len(rows)))

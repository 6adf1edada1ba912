"""Group Half-Space Trees: joint anomalies, warm-up, NaN, and a pickle-free round trip."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest

from models.multivariate import GroupHalfSpaceTrees

MEMBERS = [f"latency{{pod='{i}'}}" for i in range(5)]
LOADINGS = np.array([1.0, 0.8, 1.2, 0.9, 1.1])


def correlated(rng: np.random.Generator, n: int, load: np.ndarray | None = None) -> np.ndarray:
    """Five series driven by one shared load, plus a little noise of their own."""
    if load is None:
        load = rng.normal(0.0, 1.0, (n, 1))
    return 100.0 + 10.0 * load * LOADINGS + rng.normal(0.0, 1.0, (n, 5))


def sample(row: np.ndarray) -> dict[str, float]:
    """The group's sample at one moment; a shorter row covers the first members."""
    return dict(zip(MEMBERS[: len(row)], row.tolist(), strict=True))


def test_breaking_the_correlation_scores_higher_than_normal_points() -> None:
    rng = np.random.default_rng(0)
    model = GroupHalfSpaceTrees(window_size=200, seed=3)
    for row in correlated(rng, 600):
        model.score_and_learn("checkout", sample(row))
    normal = correlated(rng, 50)
    # At 1.5 sigma of load, pod 2 goes the other way: each value alone is ordinary.
    loaded = correlated(rng, 50, load=rng.choice([-1.5, 1.5], (50, 1)))
    broken = loaded.copy()
    broken[:, 2] = 200.0 - broken[:, 2]

    def scores(rows: np.ndarray) -> np.ndarray:
        return np.array([model.score_and_learn("checkout", sample(r), learn=False) for r in rows])

    assert np.median(scores(broken)) > np.quantile(scores(normal), 0.9)
    assert np.mean(scores(broken)) > np.mean(scores(loaded)) + 0.02


def test_warming_until_the_first_window_fills() -> None:
    model = GroupHalfSpaceTrees(window_size=50)
    assert model.warming("new") and model.n_groups == 0
    rows = correlated(np.random.default_rng(1), 60)
    scores = [model.score_and_learn("g", sample(r)) for r in rows]
    assert scores[:50] == [0.0] * 50
    assert not model.warming("g") and scores[-1] > 0.0 and model.n_groups == 1


def test_nan_values_are_dropped_and_unknown_features_ignored() -> None:
    model = GroupHalfSpaceTrees(window_size=20)
    rows = correlated(np.random.default_rng(2), 40)
    for r in rows:
        model.score_and_learn("g", sample(r))
    gappy = sample(rows[0]) | {MEMBERS[1]: float("nan"), "not_a_member": 1e9}
    assert 0.0 <= model.score_and_learn("g", gappy) <= 1.0
    learned = int(model.state_dict()["g0.learned"])
    assert model.score_and_learn("g", {m: float("nan") for m in MEMBERS}) == 0.0
    assert int(model.state_dict()["g0.learned"]) == learned, "an empty sample teaches nothing"


def save_and_load(model: GroupHalfSpaceTrees) -> GroupHalfSpaceTrees:
    buffer = io.BytesIO()
    state: dict[str, Any] = model.state_dict()  # Any: savez's keywords include allow_pickle
    np.savez(buffer, **state)
    buffer.seek(0)
    restored = GroupHalfSpaceTrees(
        n_trees=model.n_trees, height=model.height, window_size=model.window_size, seed=model.seed
    )
    with np.load(buffer, allow_pickle=False) as stored:
        restored.load_state_dict({name: stored[name] for name in stored.files})
    return restored


def test_state_round_trip_gives_the_same_scores() -> None:
    rng = np.random.default_rng(4)
    window = 100
    model = GroupHalfSpaceTrees(n_trees=5, height=6, window_size=window, seed=7)
    rows = correlated(rng, 560)
    # Gaps, one of them on the first sample of a window (the replay's first row).
    rows[rng.random(len(rows)) < 0.05, 3] = np.nan
    rows[2 * window, 1] = np.nan
    for r in rows[:537]:
        model.score_and_learn("a", sample(r))
    for r in rows[:30]:
        model.score_and_learn("still warming", sample(r[:3]))
    restored = save_and_load(model)
    assert restored.n_groups == 2 and restored.warming("still warming")
    for r in rows[537:] + rng.normal(0.0, 5.0, (23, 5)):
        for group, features in (("a", sample(r)), ("still warming", sample(r[:3]))):
            expected = model.score_and_learn(group, features)
            assert restored.score_and_learn(group, features) == expected
    again = save_and_load(restored)
    probe = sample(rows[0] + 40.0)
    expected = model.score_and_learn("a", probe, learn=False)
    assert again.score_and_learn("a", probe, learn=False) == expected


def test_loading_into_a_model_with_other_parameters_is_refused() -> None:
    model = GroupHalfSpaceTrees(window_size=10)
    for r in correlated(np.random.default_rng(5), 15):
        model.score_and_learn("g", sample(r))
    other = GroupHalfSpaceTrees(window_size=20)
    with pytest.raises(ValueError, match="window_size"):
        other.load_state_dict(model.state_dict())

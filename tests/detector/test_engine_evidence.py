"""What the engine counts as evidence: a repeated sample is not new, and bands stay in the series' domain."""

from __future__ import annotations

import numpy as np

from detector import Engine
from detector.config import build_engine, parse_config

STEP = 60.0


def _engine() -> Engine:
    return build_engine(parse_config({}))


def _run(engine: Engine, keys: list[str], t: np.ndarray, x: np.ndarray) -> None:
    ids = engine.register(keys)
    for step in range(t.shape[1]):
        engine.process(ids, t[:, step], x[:, step])


def _learned(engine: Engine) -> dict[str, np.ndarray]:
    """Everything learned from samples (not the bookkeeping of which samples were seen)."""
    return {k: v.copy() for k, v in engine.state_dict().items() if not k.startswith(("repeats.", "engine."))}


def test_a_resent_sample_changes_nothing() -> None:
    engine = _engine()
    rng = np.random.default_rng(0)
    t = STEP * np.arange(500)[None, :]
    x = rng.normal(100.0, 3.0, (1, 500))
    _run(engine, ["a"], t, x)
    before = _learned(engine)
    # Prometheus resends the last samples (same timestamps) after a failed request.
    ids = engine.register(["a"])
    for step in range(495, 500):
        out = engine.process(ids, t[:, step], x[:, step])
        assert not out.decided[0]
    for name, value in _learned(engine).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_samples_evaluated_four_times_per_scrape_are_learned_once() -> None:
    rng = np.random.default_rng(1)
    scrapes = rng.normal(100.0, 3.0, (2, 2000))
    once, four_times = _engine(), _engine()
    _run(once, ["a", "b"], STEP * np.tile(np.arange(2000), (2, 1)), scrapes)
    # Evaluated every 15 s: each scrape's value comes back four times, at new timestamps.
    _run(four_times, ["a", "b"], STEP / 4 * np.tile(np.arange(8000), (2, 1)), np.repeat(scrapes, 4, axis=1))
    seen_once = once.calibrator.arrays["seen"][:2]
    seen_four = four_times.calibrator.arrays["seen"][:2]
    # Until a series has changed value ten times its update interval is unknown: 3 repeats x 10.
    assert (seen_four - seen_once <= 30).all()
    np.testing.assert_allclose(four_times.repeats.arrays["update_interval"][:2], STEP, rtol=0.05)
    np.testing.assert_allclose(four_times.policy.arrays["interval"][:2], STEP, rtol=0.05)


def test_an_exactly_flat_stretch_of_a_series_that_updates_every_sample_is_still_counted() -> None:
    # A count that changes at nearly every scrape, then sticks at zero: the zeros are real samples.
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.poisson(5.0, 300), np.zeros(100)]).astype(float)[None, :]
    engine = _engine()
    ids = engine.register(["queue"])
    decided = [bool(engine.process(ids, np.array([STEP * i]), x[:, i]).decided[0]) for i in range(400)]
    assert all(decided)


def test_bands_stay_in_the_series_domain() -> None:
    rng = np.random.default_rng(3)
    steps = 600
    # Error counts near zero (never negative), and an error ratio (always within [0, 1]).
    rate = rng.poisson(0.5, steps).astype(float)
    ratio = np.clip(rng.normal(0.97, 0.03, steps), 0.0, 1.0)
    engine = _engine()
    ids = engine.register(["errors", "availability"])
    lowers, uppers = [], []
    for step in range(steps):
        out = engine.process(ids, np.full(2, STEP * step), np.array([rate[step], ratio[step]]))
        lowers.append(out.lower)
        uppers.append(out.upper)
    lower, upper = np.array(lowers[200:]), np.array(uppers[200:])
    assert np.nanmin(lower[:, 0]) >= 0.0 and np.nanmin(lower[:, 1]) >= 0.0
    assert np.nanmax(upper[:, 1]) <= 1.0
    # The clipping only bounds what is shown: a ratio past 1 is still scored as unusual.
    out = engine.process(ids, np.full(2, STEP * steps), np.array([0.0, 1.5]))
    assert out.anomaly_score[1] > 0.999

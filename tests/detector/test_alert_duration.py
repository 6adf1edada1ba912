"""An alert lasts as long as the incident: judged against the series from before, resolved when it is back,
accepted as a new normal only when the shift has persisted (or on-call says so)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from detector import AlertPolicy, Engine
from detector.backtest import run_backtest
from detector.config import build_engine, parse_config
from detector.engine import ScoredBatch
from detector.evaluation import cover_series, load_labels
from detector.incidents import IncidentTracker, transition_points
from detector.policy import AlertDecision
from detector.recorded import read_recording

STEP = 60.0
WARM = 3000


def _engine(**alerting: Any) -> Engine:
    return build_engine(parse_config({"alerting": alerting}))


def _play(engine: Engine, x: np.ndarray, start: int = 0) -> list[ScoredBatch]:
    ids = engine.register(["s"])
    return [engine.process(ids, np.array([STEP * (start + k)]), x[k : k + 1]) for k in range(len(x))]


def _column(results: list[ScoredBatch], name: str) -> np.ndarray:
    return np.concatenate([getattr(r, name) for r in results])


def _ar1(rng: np.random.Generator, n: int, phi: float = 0.9) -> np.ndarray:
    noise = np.zeros(n)
    for k in range(1, n):
        noise[k] = phi * noise[k - 1] + rng.normal()
    return noise


def test_a_sustained_100_sigma_outage_stays_improbable_and_alerting_for_as_long_as_it_lasts() -> None:
    engine = _engine(accept_shift_after=0)
    rng = np.random.default_rng(3)
    _play(engine, 100.0 + rng.normal(0, 1, WARM))
    outage = _play(engine, 200.0 + rng.normal(0, 1, 240), start=WARM)  # 4 hours at +100 sigma
    back = _play(engine, 100.0 + rng.normal(0, 1, 30), start=WARM + 240)
    p, alert, onset = _column(outage, "p_value"), _column(outage, "alert"), _column(outage, "onset")
    assert (p < 1e-4).all(), p.max()
    first = int(np.argmax(alert))
    assert first <= 2 and alert[first:].all() and onset.sum() == 1
    back_alert = _column(back, "alert")
    assert not back_alert[3:].any(), "resolves within resolve_after (2m, at least 3 samples) of the return"
    assert not _column(back, "onset").any()
    expected = _column(back, "expected")
    assert abs(expected[-1] - 100.0) < 2.0, "the model did not learn the outage as normal"


def test_an_autocorrelated_series_outage_is_judged_against_the_band_from_before_it() -> None:
    # A wandering series (AR(1), phi 0.9): the whitening forecast must not follow the outage down.
    engine = _engine(accept_shift_after=0)
    rng = np.random.default_rng(4)
    _play(engine, 1000.0 + 10.0 * _ar1(rng, WARM))
    drop = _play(engine, 700.0 + 10.0 * _ar1(rng, 90), start=WARM)  # 90 minutes at -30 sigma
    alert = _column(drop, "alert")
    assert alert.mean() >= 0.95 and _column(drop, "onset").sum() == 1
    assert (np.abs(_column(drop, "expected") - 700.0) > 200.0).all(), "the expected value moved to the outage"


def test_a_persistent_shift_is_accepted_after_accept_shift_after_and_adopted() -> None:
    engine = _engine(accept_shift_after="1h")
    rng = np.random.default_rng(5)
    _play(engine, 100.0 + rng.normal(0, 1, WARM))
    shifted = _play(engine, 130.0 + rng.normal(0, 1, 240), start=WARM)
    onset, accepted, alert = (
        _column(shifted, "onset"),
        _column(shifted, "accepted"),
        _column(shifted, "alert"),
    )
    assert onset.sum() == 1 and accepted.sum() == 1
    opened, adopted = int(np.argmax(onset)), int(np.argmax(accepted))
    assert adopted - opened == 60, "accepted one hour (60 samples) after the onset"
    assert alert[opened:adopted].all() and not alert[adopted:].any()
    assert abs(_column(shifted, "expected")[-1] - 130.0) < 2.0


def test_on_call_can_accept_a_new_normal_at_once() -> None:
    engine = _engine()
    rng = np.random.default_rng(6)
    _play(engine, 100.0 + rng.normal(0, 1, WARM))
    shifted = _play(engine, 150.0 + rng.normal(0, 1, 10), start=WARM)
    assert _column(shifted, "alert")[-1]
    ids = engine.register(["s"])
    assert engine.accept_new_normal(ids, np.array([STEP * (WARM + 9)])).tolist() == [True]
    after = _play(engine, 150.0 + rng.normal(0, 1, 30), start=WARM + 10)
    assert not _column(after, "alert").any()
    assert abs(_column(after, "expected")[-1] - 150.0) < 3.0
    assert engine.accept_new_normal(ids, np.array([STEP * (WARM + 40)])).tolist() == [False]


def test_an_alert_held_up_by_a_pattern_is_never_accepted_as_a_new_normal() -> None:
    policy = AlertPolicy(accept_shift_after=3600.0)
    policy.resize(1)
    ids, accepted, firing = np.array([0]), [], []
    for k in range(300):
        # A stuck series: ordinary points, a flat run this rare (its tail, signed low).
        pattern = np.array([-1e-12 if k >= 10 else 0.0])
        out = policy.decide(ids, np.array([STEP * k]), np.array([0.5]), np.array([-1.0]), pattern=pattern)
        accepted.append(bool(out.accepted[0]))
        firing.append(bool(out.firing[0]))
    assert firing[-1] and not any(accepted)


def test_a_confirmed_incident_is_never_accepted_as_a_new_normal() -> None:
    engine = _engine(accept_shift_after="1h")
    rng = np.random.default_rng(7)
    _play(engine, 100.0 + rng.normal(0, 1, WARM))
    _play(engine, 150.0 + rng.normal(0, 1, 10), start=WARM)
    engine.mark_incident(engine.register(["s"]), "high")
    outage = _play(engine, 150.0 + rng.normal(0, 1, 180), start=WARM + 10)
    assert _column(outage, "alert").all() and not _column(outage, "accepted").any()


def test_an_incident_inside_one_batch_reaches_the_tracker_as_opened_then_resolved() -> None:
    engine = _engine()
    rng = np.random.default_rng(8)
    _play(engine, 100.0 + rng.normal(0, 1, WARM))
    x = np.r_[100.0 + rng.normal(0, 1, 5), 160.0 + rng.normal(0, 1, 20), 100.0 + rng.normal(0, 1, 10)]
    t = STEP * (WARM + np.arange(len(x)))
    ids = engine.register(["s"]).repeat(len(x))
    scored = engine.process(ids, t, x)
    chosen = transition_points(ids, scored, np.zeros(1, dtype=bool))
    tracker = IncidentTracker("d", group_by=[], group_window=120.0, refresh_interval=60.0)
    now = float(t[-1]) + 1.0
    events = tracker.observe(
        now, ["s"] * len(chosen), {"s": {}}, t[chosen], x[chosen], scored.take(chosen), "auto"
    )
    assert [e.change for e in events] == ["opened", "resolved"]
    opened, resolved = events
    assert opened.incident_id == resolved.incident_id
    assert t[5] <= opened.opened_at <= t[7]
    assert resolved.resolved_at is not None and t[25] < resolved.resolved_at <= t[25] + 180.0
    assert resolved.top.observed > 150.0, "the finding is the incident's most extreme point"
    assert resolved.late_by == now - opened.opened_at, "a backlog is late data, and says so"


def test_an_alert_from_late_data_says_how_late() -> None:
    tracker = IncidentTracker("d", group_by=[], group_window=120.0, refresh_interval=60.0, late_after=300.0)
    engine = _engine()
    rng = np.random.default_rng(9)
    _play(engine, 100.0 + rng.normal(0, 1, WARM))
    spike = _play(engine, 160.0 + rng.normal(0, 1, 5), start=WARM)
    onset = int(np.argmax(_column(spike, "onset")))
    t = STEP * (WARM + onset)
    [event] = tracker.observe(
        t + 3600.0, ["s"], {"s": {}}, np.array([t]), np.array([160.0]), spike[onset], "auto"
    )
    assert event.change == "opened" and event.late_by == 3600.0


def _batch(alert: list[bool], decided: list[bool], p: list[float], since: list[float]) -> ScoredBatch:
    n = len(alert)
    flags = np.array(alert)
    return ScoredBatch(
        anomaly_score=1 - np.array(p), p_value=np.array(p), deviation=np.full(n, 5.0),
        expected=np.full(n, 10.0), lower=np.full(n, 8.0), upper=np.full(n, 12.0),
        warming=np.zeros(n, bool), alert=flags, onset=flags & np.isfinite(since) & (np.array(since) >= 0),
        decided=np.array(decided), accepted=np.zeros(n, bool), since=np.array(since),
        lowest_p=np.where(flags, p, np.nan), alert_sign=flags.astype(np.int8), interval=np.full(n, 60.0),
    )  # fmt: skip


def test_transition_points_keep_every_change_of_interleaved_series_and_skip_undecided_points() -> None:
    ids = np.array([0, 1, 0, 1, 0, 1, 0])
    scored = _batch(
        alert=[False, True, True, True, False, False, False],
        decided=[True, True, True, False, True, True, False],  # an undecided point changes nothing
        p=[0.5, 1e-3, 1e-6, 0.9, 0.4, 0.6, 0.9],
        since=[np.nan, -1.0, 120.0, -1.0, np.nan, np.nan, np.nan],
    )
    # Series 1 was already firing before the batch; series 0 was not.
    chosen = transition_points(ids, scored, np.array([False, True]))
    # 0 opens at 2 and resolves at 4 (its last decided point); 1 is extreme at 1 and resolves at 5.
    assert chosen.tolist() == [1, 2, 4, 5]


def test_the_incidents_do_not_depend_on_how_the_data_was_cut_into_requests() -> None:
    keys, labels = ["a", "b"], {"a": {"job": "x"}, "b": {"job": "x"}}

    def run(parts: list[list[int]]) -> list[tuple[str, float]]:
        tracker = IncidentTracker("d", group_by=["job"], group_window=300.0, refresh_interval=1e9)
        tracker.observe(
            0.0, ["a"], labels, np.array([0.0]), np.array([9.0]), _batch([True], [True], [1e-6], [0.0]), "m"
        )
        # a resolves at 60, then b opens at 100: b's alert is a new incident, however the points arrive.
        t, alert, since = np.array([60.0, 100.0]), [False, True], [np.nan, 100.0]
        events = []
        for part in parts:
            index = np.array(part)
            p = [0.5 if i == 0 else 1e-6 for i in part]
            scored = _batch([alert[i] for i in part], [True] * len(part), p, [since[i] for i in part])
            events += tracker.observe(200.0, [keys[i] for i in part], labels, t[index], t[index], scored, "m")
        return [(e.change, e.opened_at) for e in events]

    assert run([[0, 1]]) == run([[0], [1]]) == [("resolved", 0.0), ("opened", 100.0)]


def test_the_replayed_web_traffic_outage_is_covered_from_onset_to_return() -> None:
    root = Path(__file__).resolve().parents[2] / "replay_data"
    name = "web_traffic/http_requests_per_second.csv"
    [result] = run_backtest(_engine(), [read_recording(root / name, name)])
    [incident] = cover_series(result, load_labels(root / "incidents.json")[name])
    assert incident.coverage >= 0.9 and incident.onsets == 1 and incident.firing_at_end
    assert result.alerts == 1


def _alert_for_an_hour_then(deviation: float) -> tuple[bool, bool]:
    """A policy alerting on a shift of 10 for an hour, then one calm point ``deviation`` from the forecast.

    Returns whether that point accepted the shift and whether the alert is still open after it.
    """
    policy = AlertPolicy(accept_shift_after=3600.0)
    policy.resize(1)
    ids, k, since = np.array([0]), 0, np.inf

    def point(p: float, observed: float) -> AlertDecision:
        return policy.decide(
            ids, np.array([STEP * k]), np.array([p]), np.ones(1), np.array([observed]), np.zeros(1)
        )

    while STEP * k < since + 3600.0:
        decision = point(1e-6, 10.0)
        since = min(since, float(decision.since[0]) if decision.firing[0] else np.inf)
        k += 1
    assert decision.firing[0] and not decision.accepted[0]
    calm = point(0.5, deviation)
    return bool(calm.accepted[0]), bool(calm.firing[0])


def test_a_shift_is_accepted_on_a_calm_point_that_has_not_come_back() -> None:
    # Past accept_shift_after, a point that adds no evidence but still sits near the shift's level
    # (a shift not much larger than the noise has such points) does not keep the alert open.
    assert _alert_for_an_hour_then(8.0) == (True, False)


def test_a_series_coming_back_is_not_accepted_at_the_level_it_is_leaving() -> None:
    # Accepting here would adopt the outage's level as the new normal just as the series returns.
    assert _alert_for_an_hour_then(1.0) == (False, True)

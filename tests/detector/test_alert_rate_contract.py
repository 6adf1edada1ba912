"""The alert budget is a contract: on ordinary data, false alert onsets come at about the budgeted rate.

Ordinary means what production metrics do, not independent noise: seasonal
load, autocorrelated and heavy-tailed latency, counts, ratios, a GC sawtooth,
slow drift, AR(1) noise with phi = 0.9, and a series evaluated four times per
scrape (each sample seen four times).  The generators are the fleet
benchmark's (``benchmarks/fleet_data.py``), with seeds the benchmark does not
use.  Each kind runs 100 anomaly-free series for 16 days at one sample a minute
through the default engine; onsets after the first 8 days must stay within
twice the budget, for the per-series budget (the default, one a week) and for
a per-detector budget (three a day for the whole detector, three times
stricter per series here).  The warm-up is a week and a day because load, and
what follows it, is lower at weekends: a series that has never seen a weekend
meets behaviour it has never shown, which no budget covers (see
:mod:`detector.policy`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from benchmarks.fleet_data import KINDS, kind_series
from detector.config import build_engine, parse_config

SERIES = 100
DAYS = 16.0
WARMUP_DAYS = 8.0
SEED = 23


def _onsets_per_budget(kind: str, alerting: dict[str, Any], repeat: int = 1) -> float:
    """Alert onsets after the warm-up per series-day, as a multiple of the budget per series-day."""
    series = kind_series(kind, SERIES, DAYS, seed=SEED, repeat=repeat)
    engine = build_engine(parse_config({"alerting": alerting}))
    ids = engine.register([s.name for s in series])
    t = np.stack([s.t for s in series])
    x = np.stack([s.x for s in series])
    counted_from = t[0, 0] + WARMUP_DAYS * 86_400
    onsets = 0
    for step in range(t.shape[1]):
        out = engine.process(ids, t[:, step], x[:, step])
        if t[0, step] >= counted_from:
            onsets += int(out.onset.sum())
    series_days = SERIES * (t[0, -1] - counted_from) / 86_400
    budget_per_series_day = engine.policy.budget_per_second * 86_400
    return onsets / series_days / budget_per_series_day


CASES = [(kind, 1) for kind in KINDS] + [("ar1_phi09", 4)]
BUDGETS = {"per-series-1-a-week": {}, "per-detector-3-a-day": {"false_alerts_per_day": 3.0}}
#: Known gaps, measured: each fails the contract, and the mark says why (strict: it must keep failing).
KNOWN_GAPS = {
    ("memory_bytes", 1, "per-detector-3-a-day"): (
        "2.4x: the GC sawtooth runs slower at weekends (less load); with a week of calibration memory "
        "(10,000 points at 1 min) each weekend looks new again, and at a strict budget its alerts dominate"
    ),
    ("ar1_phi09", 4, "per-detector-3-a-day"): (
        "2.00004x: at the edge (the same samples seen once: 1.71x); at 0.03 alerts per series-day the "
        "level sits where a few hundred episodes per series say little, and errors in it add alerts"
    ),
}


def _cases() -> list[Any]:
    out = []
    for budget, alerting in BUDGETS.items():
        for kind, repeat in CASES:
            gap = KNOWN_GAPS.get((kind, repeat, budget))
            marks = [pytest.mark.xfail(reason=gap, strict=True)] if gap else []
            out.append(pytest.param(kind, repeat, alerting, id=f"{budget}-{kind}x{repeat}", marks=marks))
    return out


@pytest.mark.parametrize(("kind", "repeat", "alerting"), _cases())
def test_false_alerts_stay_within_twice_the_budget(kind: str, repeat: int, alerting: dict[str, Any]) -> None:
    ratio = _onsets_per_budget(kind, alerting, repeat)
    print(f"{kind} x{repeat} {alerting or 'default'}: {ratio:.2f} x budget")
    assert ratio <= 2.0

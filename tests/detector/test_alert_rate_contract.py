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

import functools
from typing import Any

import numpy as np
import pytest

from benchmarks.fleet_data import KINDS, kind_series
from detector.config import build_engine, parse_config

pytestmark = pytest.mark.slow

SERIES = 100
DAYS = 16.0
WARMUP_DAYS = 8.0
SEED = 23


@functools.cache
def _ratios(budget: str, repeat: int) -> dict[str, float]:
    """Per kind: alert onsets after the warm-up per series-day, as a multiple of the budget.

    All kinds run through one engine (one batch per time step, as the service
    scores them): series share nothing but the detector's budget, and one run
    costs far less than one per kind.
    """
    kinds = KINDS if repeat == 1 else REPEATED
    series = [s for kind in kinds for s in kind_series(kind, SERIES, DAYS, seed=SEED, repeat=repeat)]
    per_series_day = BUDGETS[budget]
    alerting = {} if per_series_day is None else {"false_alerts_per_day": per_series_day * len(series)}
    engine = build_engine(parse_config({"alerting": alerting}))
    ids = engine.register([s.name for s in series])
    t = np.stack([s.t for s in series])
    x = np.stack([s.x for s in series])
    counted_from = t[0, 0] + WARMUP_DAYS * 86_400
    onsets = np.zeros(len(series), dtype=np.int64)
    for step in range(t.shape[1]):
        out = engine.process(ids, t[:, step], x[:, step])
        if t[0, step] >= counted_from:
            onsets += out.onset
    series_days = SERIES * (t[0, -1] - counted_from) / 86_400
    budget_per_series_day = engine.policy.budget_per_second * 86_400
    kind_of = np.array([s.kind for s in series])
    return {kind: onsets[kind_of == kind].sum() / series_days / budget_per_series_day for kind in kinds}


#: Kinds also run as if evaluated four times per scrape (each sample seen four times).
REPEATED = ("ar1_phi09",)
CASES = [(kind, 1) for kind in KINDS] + [(kind, 4) for kind in REPEATED]
#: The budgets, as false alerts per series-day: None is the default (one a week per series);
#: a number is a per-detector budget of that much per series (three a day for 100 series).
BUDGETS: dict[str, float | None] = {"per-series-1-a-week": None, "per-detector-3-a-day": 0.03}
#: Known gaps, measured: each fails the contract, and the mark says why (strict: it must keep failing).
KNOWN_GAPS = {
    ("memory_bytes", 1, "per-detector-3-a-day"): (
        "2.08x: the GC sawtooth runs slower at weekends (less load); with a week of calibration memory "
        "(10,000 points at 1 min) each weekend looks new again, and at a strict budget its alerts dominate"
    ),
}


def _cases() -> list[Any]:
    out = []
    for budget in BUDGETS:
        for kind, repeat in CASES:
            gap = KNOWN_GAPS.get((kind, repeat, budget))
            marks = [pytest.mark.xfail(reason=gap, strict=True)] if gap else []
            out.append(pytest.param(kind, repeat, budget, id=f"{budget}-{kind}x{repeat}", marks=marks))
    return out


@pytest.mark.parametrize(("kind", "repeat", "budget"), _cases())
def test_false_alerts_stay_within_twice_the_budget(kind: str, repeat: int, budget: str) -> None:
    ratio = _ratios(budget, repeat)[kind]
    print(f"{kind} x{repeat} {budget}: {ratio:.2f} x budget")
    assert ratio <= 2.0

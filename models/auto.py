"""The default model: picks flat, seasonal or daily-routine per series, catches shifts and patterns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from models.base import (
    Assessment,
    Mask,
    learning_rate,
)
from models.ewma import RobustEWMA
from models.patterns import PatternStatistics
from models.routine import STANDS_OUT, DailyRoutine
from models.seasonal import SeasonalProfile

#: The forecasters :class:`AutoModel` chooses between, in its ``choice`` codes.
_FLAT, _SEASONAL, _ROUTINE = 0, 1, 2
_DAY = 86_400.0


class AutoModel:
    """Runs a flat and a seasonal forecaster (and, opted in, a daily routine) and uses whichever fits.

    Per series it keeps the recent mean absolute deviation of both forecasters
    and reports the one that has been more accurate (the seasonal one must win
    by ``seasonal_margin`` to be chosen, so noise does not make it flap).

    With ``routine`` it also runs a daily routine
    (:class:`models.routine.DailyRoutine`, a phase-aligned profile in
    10-minute steps), chosen where its error over about the last day, on
    every seen point, beats the usual choice's by the same margin: what a
    series with square-wave habits needs, so a nightly job's burst is expected
    where it happens (and raises no alert) and its absence is a deviation.
    With ``patterns`` it also watches what no single point reveals
    (:class:`models.patterns.PatternStatistics`: a flat run, a missed routine,
    the rate of spikes, the spread of recent deviations, each against the
    series' own past) and reports the most unusual in
    :attr:`Assessment.pattern`.  Both are off by default: measured on the NAB
    development split they cost more than they find (see
    ``benchmarks/nab.py --patterns`` and ``benchmarks/fleet.py``), and they
    cost a third more time per sample.

    Its deviation also sees slow trouble a single point does not show: an
    exponentially weighted mean of recent deviations, rescaled to unit variance
    on independent normal data and weighted by ``shift_weight``, and the larger
    of the two is reported.  A sustained shift thus scores high within a few
    points even when no single point is extreme.  The weight is below 1
    because real residuals are autocorrelated: there the mean of recent
    deviations varies more than the independent-data rescaling assumes, and at
    full weight it fills the calibrated tail with slow wander, so that sharp
    anomalies (single points) get larger p-values.  (Measured on the NAB
    development split: 0.5 keeps most of what the shift statistic finds for
    the alert policy and raises the swept NAB score.)

    The seasonal forecaster learns its daily profile over ``season_halflife=4``
    passes (days) by default, not one: a profile and per-knot spread estimated
    from about one day of points are noisy, which both hides real departures
    from the daily shape and makes the choice between flat and seasonal flap.

    A small level shift that the model is still allowed to learn from
    (``adopt_after`` points in a row beyond ``adopt_z`` on the same side, each
    with a positive learning weight) is taken as the new normal: every
    forecaster moves its level to where the series now is.  This is the
    model's own bookkeeping, counted in the points it learns from; a shift
    large enough to alert is not learned from while the alert is open, and is
    adopted only when the alert policy accepts it (``accept_shift_after``, a
    duration) or on-call does (:meth:`adopt`).

    Examples
    --------
    >>> import numpy as np
    >>> model = AutoModel()
    >>> model.resize(1)
    >>> ids, rng = np.array([0]), np.random.default_rng(0)
    >>> for step in range(400):
    ...     value = rng.normal(100, 1) + (30 if step >= 300 else 0)
    ...     out = model.assess(ids, np.array([60.0 * step]), np.array([value]))
    ...     if step == 300:
    ...         first = float(out.deviation[0])
    ...     weight = 1.0 if step < 300 else 1e-6  # flagged points barely teach
    ...     model.learn(ids, np.array([60.0 * step]), np.array([value]), np.array([weight]))
    >>> first > 10, abs(float(out.deviation[0])) < 4
    (True, True)
    """

    def __init__(
        self,
        flat: RobustEWMA | None = None,
        seasonal: SeasonalProfile | None = None,
        routine: bool = False,
        patterns: bool = False,
        shift_halflife: float = 12.0,
        seasonal_margin: float = 0.9,
        adopt_after: int = 12,
        adopt_z: float = 3.0,
        shift_weight: float = 0.5,
    ) -> None:
        if shift_weight < 0:
            raise ValueError(f"shift_weight must not be negative, got {shift_weight}")
        self.flat = flat or RobustEWMA()
        self.seasonal = seasonal or SeasonalProfile(season_halflife=4.0)
        self.routine = routine
        self.patterns = patterns
        self._routine = DailyRoutine() if routine else None
        self._patterns = PatternStatistics(routine=routine) if patterns else None
        self.shift_weight = shift_weight
        self.shift_halflife = shift_halflife
        self.seasonal_margin = seasonal_margin
        self.adopt_after = adopt_after
        self.adopt_z = adopt_z
        self._shift_rate = learning_rate(shift_halflife)
        # Variance of an EWMA of unit-variance noise, to rescale it to unit variance.
        self._shift_norm = float(np.sqrt(self._shift_rate / (2.0 - self._shift_rate)))
        self._error_rate = learning_rate(288.0)
        self._own_specs: dict[str, tuple[type, float]] = {
            "error_flat": (np.float64, 0.0),
            "error_seasonal": (np.float64, 0.0),
            "mean_deviation": (np.float64, 0.0),
            "run": (np.int32, 0),
            "run_sum": (np.float64, 0.0),
        }
        if routine:
            # The routine's error and the usual choice's, both over about a day (see _learn_kernel).
            self._own_specs.update({"error_routine": (np.float64, 0.0), "error_usual": (np.float64, 0.0)})
            # The routine's own residuals over a run that may be adopted (see _learn_kernel).
            self._own_specs["run_sum_routine"] = (np.float64, 0.0)
            self._own_specs["run_count_routine"] = (np.int32, 0)
        # Without a routine its errors are never read: empty arrays keep the kernels' signature.
        self.own: dict[str, np.ndarray] = {
            name: np.zeros(0) for name in ("error_routine", "error_usual", "run_sum_routine")
        }
        self.own["run_count_routine"] = np.zeros(0, dtype=np.int32)
        self.own.update({name: np.zeros(0, dtype=dtype) for name, (dtype, _) in self._own_specs.items()})
        self._last: _Assessed | None = None

    @property
    def warmup(self) -> int:
        return self.flat.warmup

    def _parts(self) -> dict[str, RobustEWMA | SeasonalProfile | DailyRoutine | PatternStatistics]:
        parts: dict[str, RobustEWMA | SeasonalProfile | DailyRoutine | PatternStatistics] = {
            "flat": self.flat,
            "seasonal": self.seasonal,
        }
        if self._routine is not None:
            parts["routine"] = self._routine
        if self._patterns is not None:
            parts["patterns"] = self._patterns
        return parts

    def resize(self, n_series: int) -> None:
        for part in self._parts().values():
            part.resize(n_series)
        old = len(self.own["run"])
        if n_series > old:
            capacity = self.flat.n_series
            for name, (dtype, initial) in self._own_specs.items():
                grown = np.full(capacity, initial, dtype=dtype)
                grown[:old] = self.own[name][:old]
                self.own[name] = grown

    def reset(self, ids: np.ndarray) -> None:
        self._last = None
        for part in self._parts().values():
            part.reset(ids)
        for name, (_, initial) in self._own_specs.items():
            self.own[name][ids] = initial

    @property
    def takes_raw(self) -> bool:
        """Whether the pattern statistics watch for repeats, which need the samples undithered."""
        return self._patterns is not None

    def assess(
        self, ids: np.ndarray, t: np.ndarray, x: np.ndarray, raw: np.ndarray | None = None
    ) -> Assessment:
        """Forecast and deviation of each point; ``raw``: the samples before the engine's dither."""
        assessed = self._assess(ids, t, x)
        self._last = assessed
        flat = assessed.forecasts[_FLAT]
        pattern = None
        if self._patterns is not None:
            routine = assessed.forecasts[_ROUTINE].expected if self._routine is not None else None
            pattern = self._patterns.assess(
                ids, t, x if raw is None else raw, assessed.point, assessed.shortfall, routine
            )
        return Assessment(assessed.expected, assessed.scale, assessed.deviation, flat.warming, pattern)

    def _assess(self, ids: np.ndarray, t: np.ndarray, x: np.ndarray) -> _Assessed:
        forecasts = [self.flat.assess(ids, t, x), self.seasonal.assess(ids, t, x)]
        if self._routine is not None:
            forecasts.append(self._routine.assess(ids, t, x))
        expected, scale, deviation, point, choice = _combine_kernel(
            self.own["error_flat"],
            self.own["error_seasonal"],
            self.own["error_routine"],
            self.own["error_usual"],
            self.own["mean_deviation"],
            np.asarray(ids, dtype=np.int64),
            tuple(f.expected for f in forecasts),
            tuple(f.scale for f in forecasts),
            tuple(f.deviation for f in forecasts),
            self._settings(),
        )
        shortfall, off_routine = None, None
        if self._routine is not None:
            # How much of its routine each point misses, where the routine departs from the level
            # by several of its own scales there and of the series' overall ones: 1 for a burst (or
            # dip) that should be there and is not, 0 for one that is; signed as the departure.
            routine = forecasts[_ROUTINE]
            departure = routine.expected - self._routine.arrays["level"][ids]
            missed = np.divide(routine.expected - x, departure, out=np.zeros(len(x)), where=departure != 0)
            in_routine = np.abs(self._routine.routine_offset(ids, t)) > STANDS_OUT
            stands_out = (np.abs(departure) > STANDS_OUT * routine.scale) & in_routine
            shortfall = np.where(
                stands_out & ~routine.warming, np.clip(missed, 0.0, 1.5) * np.sign(departure), 0.0
            )
            # Where the routine's error speaks of its level: a day after it began (before, what
            # it misses is a day not yet learned), outside its bursts and dips.
            known = t - self._routine.arrays["first_t"][ids] >= self._routine.period
            off_routine = known & ~in_routine
        return _Assessed(
            ids, t, x, forecasts, expected, scale, deviation, point, choice, shortfall, off_routine
        )

    def _settings(self) -> tuple[float, float, float, float, float, float]:
        return (
            self.seasonal_margin,
            self._shift_rate,
            self.shift_weight / self._shift_norm,
            self._error_rate,
            self.adopt_z,
            float(self.adopt_after),
        )

    def _assessed(self, ids: np.ndarray, t: np.ndarray, x: np.ndarray) -> _Assessed:
        """The forecasters' view of a batch about to be learned.

        The engine learns each batch right after assessing it, with the same
        arrays and no learning in between, so :meth:`assess`'s work is reused
        rather than done twice.
        """
        last, self._last = self._last, None
        if last is not None and last.ids is ids and last.t is t and last.x is x:
            return last
        return self._assess(ids, t, x)

    def adopt(self, ids: np.ndarray, shift: np.ndarray) -> None:
        self._last = None
        for part in self._parts().values():
            if isinstance(part, PatternStatistics):
                part.adopt(ids)
            else:
                part.adopt(ids, shift)
        for name in ("mean_deviation", "run", "run_sum", "run_sum_routine", "run_count_routine"):
            if len(self.own[name]):
                self.own[name][ids] = 0

    def learn(
        self,
        ids: np.ndarray,
        t: np.ndarray,
        x: np.ndarray,
        weight: np.ndarray,
        seen: Mask | None = None,
        raw: np.ndarray | None = None,
    ) -> None:
        assessed = self._assessed(ids, t, x)
        forecasts = assessed.forecasts
        seen = np.asarray(weight) > 0 if seen is None else np.asarray(seen, dtype=bool)
        routine_level = self._routine.arrays["level"] if self._routine is not None else np.zeros(0)
        routine_last_t = self._routine.arrays["last_t"] if self._routine is not None else np.zeros(0)
        _learn_kernel(
            *(
                self.own[name]
                for name in (
                    "error_flat",
                    "error_seasonal",
                    "error_routine",
                    "error_usual",
                    "mean_deviation",
                    "run",
                    "run_sum",
                    "run_sum_routine",
                    "run_count_routine",
                )
            ),
            self.flat.arrays["level"],
            self.seasonal.arrays["level"],
            routine_level,
            routine_last_t,
            np.asarray(ids, dtype=np.int64),
            np.asarray(t, dtype=np.float64),
            np.asarray(x, dtype=np.float64),
            np.asarray(weight, dtype=np.float64),
            tuple(f.expected for f in forecasts),
            assessed.point,
            assessed.choice,
            np.zeros(0, dtype=np.bool_) if assessed.off_routine is None else assessed.off_routine,
            forecasts[_FLAT].warming,
            seen,
            self._settings(),
        )
        for part in self._parts().values():
            if isinstance(part, PatternStatistics):
                exact = x if raw is None else raw
                part.learn(ids, t, exact, assessed.point, weight, seen, assessed.shortfall)
            elif isinstance(part, DailyRoutine):
                part.learn(ids, t, x, weight, seen)
            else:
                part.learn(ids, t, x, weight)

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {
            f"{prefix}.{name}": value
            for prefix, part in self._parts().items()
            for name, value in part.state_dict().items()
        }
        state.update({name: self.own[name].copy() for name in self._own_specs})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self._last = None
        for prefix, part in self._parts().items():
            start = len(prefix) + 1
            part.load_state_dict({k[start:]: v for k, v in state.items() if k.startswith(prefix + ".")})
        for name, (dtype, _) in self._own_specs.items():
            if name not in state:
                raise ValueError(f"AutoModel state lacks {name!r}; it was saved by a different version")
            self.own[name] = np.asarray(state[name], dtype=dtype).copy()

    def nbytes_per_series(self) -> int:
        own = sum(np.dtype(dtype).itemsize for dtype, _ in self._own_specs.values())
        return sum(part.nbytes_per_series() for part in self._parts().values()) + own

    def __repr__(self) -> str:
        return f"AutoModel(routine={self.routine}, patterns={self.patterns})"


@dataclass(frozen=True)
class _Assessed:
    """One batch as :meth:`AutoModel.assess` saw it: inputs, each forecaster's view and the choice."""

    ids: np.ndarray
    t: np.ndarray
    x: np.ndarray
    forecasts: list[Assessment]
    expected: np.ndarray
    scale: np.ndarray
    deviation: np.ndarray
    point: np.ndarray
    choice: np.ndarray
    shortfall: np.ndarray | None
    off_routine: np.ndarray | None


@njit(cache=True)
def _next_mean_deviation(mean: float, point: float, rate: float) -> float:
    return mean + rate * (min(max(point, -3.0), 3.0) - mean)


@njit(cache=True)
def _usual(error_flat, error_seasonal, row, margin):  # type: ignore[no-untyped-def]
    """Flat or seasonal: the seasonal forecaster only when clearly better."""
    return _SEASONAL if error_seasonal[row] < margin * error_flat[row] else _FLAT


@njit(cache=True)
def _choose(error_flat, error_seasonal, error_routine, error_usual, row, margin, forecasters):  # type: ignore[no-untyped-def]
    """The forecaster a series uses: the routine only when clearly better than the usual choice over days."""
    if forecasters > _ROUTINE and error_routine[row] < margin * error_usual[row]:
        return _ROUTINE
    return _usual(error_flat, error_seasonal, row, margin)


@njit(cache=True)
def _combine_kernel(  # type: ignore[no-untyped-def]
    error_flat,
    error_seasonal,
    error_routine,
    error_usual,
    mean_deviation,
    ids,
    expected_by,
    scale_by,
    deviation_by,
    settings,
):
    """The chosen forecaster's view of each point, and the larger of its point and shift deviations."""
    margin, shift_rate, shift_factor = settings[0], settings[1], settings[2]
    n, forecasters = len(ids), len(expected_by)
    expected, scale, deviation, point = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    choice = np.empty(n, dtype=np.int8)
    for i in range(n):
        row = ids[i]
        c = _choose(error_flat, error_seasonal, error_routine, error_usual, row, margin, forecasters)
        choice[i] = c
        expected[i], scale[i], point[i] = expected_by[c][i], scale_by[c][i], deviation_by[c][i]
        shift = shift_factor * _next_mean_deviation(mean_deviation[row], point[i], shift_rate)
        deviation[i] = shift if abs(shift) > abs(point[i]) else point[i]
    return expected, scale, deviation, point, choice


@njit(cache=True)
def _learn_kernel(  # type: ignore[no-untyped-def]
    error_flat,
    error_seasonal,
    error_routine,
    error_usual,
    mean_deviation,
    run,
    run_sum,
    run_sum_routine,
    run_count_routine,
    flat_level,
    seasonal_level,
    routine_level,
    routine_last_t,
    ids,
    t,
    x,
    weight,
    expected_by,
    point,
    choice,
    off_routine,
    flat_warming,
    seen,
    settings,
):
    """Forecaster errors, the shift statistic, and level adoption after a sustained shift.

    An adopted shift moves the flat and seasonal levels by the chosen
    forecaster's mean residual over the run, and the routine's by its own
    where that speaks of its level (``off_routine``: after its first day,
    outside the phases where its routine stands out): what it misses inside
    a burst, or on the day it first sees it, is a routine not yet learned
    (its bins learn it, over days), not a new level, and moving the level by
    it would make it expect the burst all day.  A run with no such point
    leaves the routine's level where it is.

    The routine is compared with the usual choice (flat or seasonal) over a
    day, on every seen point, flagged or not: whether a series has a daily
    routine is a question about whole days, and a routine that has learned a
    nightly burst must get the credit for it on the nights it alerts no more.
    """
    margin, shift_rate, _, error_rate, adopt_z, adopt_after = settings
    forecasters = len(expected_by)
    for i in range(len(ids)):
        row, w = ids[i], weight[i]
        # A point with no weight (a gap, a flagged point) teaches the shift statistic nothing.
        warm = not flat_warming[i] and w > 0
        if warm:
            mean_deviation[row] = _next_mean_deviation(mean_deviation[row], point[i], shift_rate)
        elif w > 0:
            mean_deviation[row] = 0.0
        if forecasters > _ROUTINE and seen[i]:
            usual = _usual(error_flat, error_seasonal, row, margin)
            gap = t[i] - routine_last_t[row]
            day_rate = 1.0 - 0.5 ** (min(gap, _DAY) / _DAY) if np.isfinite(gap) and gap > 0 else 0.0
            for errors, k in ((error_routine, _ROUTINE), (error_usual, usual)):
                error = abs(x[i] - expected_by[k][i])
                errors[row] = error if flat_warming[i] else errors[row] + day_rate * (error - errors[row])
        if w > 0:
            for errors, k in ((error_flat, _FLAT), (error_seasonal, _SEASONAL)):
                error = abs(x[i] - expected_by[k][i])
                errors[row] = error if flat_warming[i] else errors[row] + error_rate * (error - errors[row])
        if not warm:
            continue
        residual = x[i] - expected_by[choice[i]][i]
        side = np.sign(point[i])
        if abs(point[i]) > adopt_z:
            if np.sign(run[row]) == side:
                run[row] += np.int32(side)
                run_sum[row] += residual
            else:
                run[row], run_sum[row] = np.int32(side), residual
                if forecasters > _ROUTINE:
                    run_sum_routine[row], run_count_routine[row] = 0.0, 0
            if forecasters > _ROUTINE and off_routine[i]:
                run_sum_routine[row] += x[i] - expected_by[_ROUTINE][i]
                run_count_routine[row] += 1
        else:
            run[row], run_sum[row] = 0, 0.0
        if abs(run[row]) >= adopt_after:
            offset = run_sum[row] / abs(run[row])
            flat_level[row] += offset
            seasonal_level[row] += offset
            if forecasters > _ROUTINE and run_count_routine[row] > 0:
                routine_level[row] += run_sum_routine[row] / run_count_routine[row]
            run[row], run_sum[row], mean_deviation[row] = 0, 0.0, 0.0
            if forecasters > _ROUTINE:
                run_sum_routine[row], run_count_routine[row] = 0.0, 0

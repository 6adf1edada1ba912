"""A daily routine, minute by minute: what the series did at this time of day on past days."""

from __future__ import annotations

import numpy as np
from numba import njit

from models.base import (
    MEAN_ABS_TO_SIGMA,
    SCALE_FLOOR,
    Assessment,
    FieldSpecs,
    Mask,
    as_floats,
    learning_rate,
)
from models.seasonal import DAY, PhaseModel

#: A bin this many overall scales from the level stands out: a burst or dip of the routine.
STANDS_OUT = 3.0


class DailyRoutine(PhaseModel):
    """Level plus a step-shaped profile of ``bins`` phases per period, learned across periods.

    The forecast for time ``t`` is ``level + offset[bin(t)]``, where each bin
    holds what the series did in that slice of the day on past days, relative
    to its level (a phase-aligned, seasonal-naive reference, averaged over
    about ``season_halflife`` days), and its scale is that bin's own spread
    across days.  Unlike :class:`models.seasonal.SeasonalProfile`, whose knots
    are hours apart and linearly interpolated, the bins are steps of
    ``period / bins`` (10 minutes by default), so a square-wave routine (the
    nightly backup's 20-minute burst, a job at a fixed minute of every hour)
    is expected where it happens, and its absence is a deviation.  A burst
    whose start jitters from day to day makes its edge bins' spread wide, so
    the jitter is not an anomaly either.

    The level follows the series between its routines as
    :class:`models.ewma.RobustEWMA` does, learning only from what is not
    flagged (``weight``) and not in a bin that stands out from it by
    :data:`STANDS_OUT` overall scales (so a burst that does not come is not
    taken for a fall of the level).  The bins' values are the exception to
    "don't learn from what you flag": they learn from every *seen* point (see
    :meth:`models.base.OnlineModel.learn`).  A routine is what recurs, and
    the first time a burst comes it is an anomaly: only by learning it can
    the model ever expect it.  What protects them is that they learn over
    days and, after the first day, clip each point at ``huber`` of the bin's
    spread, which itself learns only from unflagged points: one bad night
    moves a bin by at most a few of its scales, and a routine that changes
    after the first day is learned a few of them a night.

    The offsets are kept centred on zero lazily (their running sum is
    subtracted at forecast time), so a point costs the same whatever ``bins``.

    Parameters
    ----------
    period
        Seconds in one cycle (a day).
    bins
        Phases per period.
    halflife
        Memory of the level, in samples.
    season_halflife
        Memory of each bin, in passes over it (days).
    scale_halflife
        Memory of the overall scale, in samples.
    huber
        Clip residuals at this many scales before learning from them.
    calm_fraction
        No bin may claim a spread below this share of the overall one.
    warmup
        Samples before the forecast is trusted.

    Examples
    --------
    A nightly burst from 02:00 to 02:20, then a night without it:

    >>> import numpy as np
    >>> model = DailyRoutine()
    >>> model.resize(1)
    >>> ids, rng = np.array([0]), np.random.default_rng(0)
    >>> minutes = np.arange(7 * 1440 + 120)
    >>> burst = (minutes % 1440 >= 120) & (minutes % 1440 < 140)
    >>> values = 10 + 80 * burst + rng.normal(0, 1, len(minutes))
    >>> for m, v in zip(minutes, values):
    ...     model.learn(ids, np.array([60.0 * m]), np.array([v]), np.ones(1))
    >>> night = model.assess(ids, np.array([60.0 * (7 * 1440 + 130)]), np.array([10.0]))
    >>> round(float(night.expected[0])), bool(night.deviation[0] < -5)
    (89, True)
    """

    def __init__(
        self,
        period: float = DAY,
        bins: int = 144,
        halflife: float = 12.0,
        season_halflife: float = 4.0,
        scale_halflife: float = 288.0,
        huber: float = 3.0,
        calm_fraction: float = 0.25,
        warmup: int = 30,
    ) -> None:
        super().__init__(
            period, bins, halflife, season_halflife, scale_halflife, huber, calm_fraction, warmup
        )

    def field_specs(self) -> FieldSpecs:
        return {
            "level": (np.float64, (), 0.0),
            "mean_abs": (np.float64, (), 0.0),
            "seen": (np.float64, (), 0.0),
            "last_t": (np.float64, (), np.nan),
            "first_t": (np.float64, (), np.nan),
            "offset_sum": (np.float64, (), 0.0),
            "offset": (np.float32, (self.bins,), 0.0),
            "spread": (np.float32, (self.bins,), 0.0),
        }

    def _settings(self) -> tuple[float, ...]:
        return (
            self.period,
            float(self.bins),
            self.calm_fraction,
            float(self.warmup),
            self.huber,
            learning_rate(self.halflife),
            learning_rate(self.scale_halflife),
            self.season_halflife,
        )

    def _state(self) -> tuple[np.ndarray, ...]:
        return tuple(self.arrays[name] for name in self.field_specs())

    def assess(self, ids: np.ndarray, t: np.ndarray, x: np.ndarray) -> Assessment:
        expected, scale, deviation, warming = _assess_kernel(
            *self._state(), np.asarray(ids, dtype=np.int64), *as_floats(t, x), self._settings()
        )
        return Assessment(expected, scale, deviation, warming)

    def routine_offset(self, ids: np.ndarray, t: np.ndarray) -> np.ndarray:
        """How far each series' routine at time ``t`` is from its level, in units of its overall scale.

        Beyond :data:`STANDS_OUT` either way, the routine stands out there.
        """
        ids = np.asarray(ids, dtype=np.int64)
        return _offset_kernel(*self._state(), ids, *as_floats(t), self._settings())

    def learn(
        self, ids: np.ndarray, t: np.ndarray, x: np.ndarray, weight: np.ndarray, seen: Mask | None = None
    ) -> None:
        weight = np.asarray(weight, dtype=np.float64)
        seen = weight > 0 if seen is None else np.asarray(seen, dtype=np.bool_)
        _learn_kernel(
            *self._state(), np.asarray(ids, dtype=np.int64), *as_floats(t, x, weight), seen, self._settings()
        )

    def __repr__(self) -> str:
        return f"DailyRoutine(period={self.period}, bins={self.bins}, season_halflife={self.season_halflife})"


@njit(cache=True)
def _bin(t: float, period: float, bins: float) -> int:
    cycles = t / period
    # A hair past the boundary: 02:00 is the first point of its bin, not the last of the one before.
    return min(int((cycles - np.floor(cycles)) * bins + 1e-9), int(bins) - 1)


@njit(cache=True)
def _forecast(level, offset_sum, offset, row, b, bins):  # type: ignore[no-untyped-def]
    return level[row] + offset[row, b] - offset_sum[row] / bins


@njit(cache=True)
def _scale(level, mean_abs, spread, row, b, calm_fraction):  # type: ignore[no-untyped-def]
    overall = mean_abs[row]
    local = spread[row, b]
    if not local > 0:
        local = overall
    floor = SCALE_FLOOR * max(1.0, abs(level[row]))
    return max(max(local, calm_fraction * overall) * MEAN_ABS_TO_SIGMA, floor)


@njit(cache=True)
def _assess_kernel(level, mean_abs, seen, last_t, first_t, offset_sum, offset, spread, ids, t, x, settings):  # type: ignore[no-untyped-def]
    period, bins, calm_fraction, warmup = settings[0], settings[1], settings[2], settings[3]
    n = len(ids)
    expected, scale, deviation = np.empty(n), np.empty(n), np.empty(n)
    warming = np.empty(n, dtype=np.bool_)
    for i in range(n):
        row = ids[i]
        b = _bin(t[i], period, bins)
        expected[i] = _forecast(level, offset_sum, offset, row, b, bins)
        scale[i] = _scale(level, mean_abs, spread, row, b, calm_fraction)
        deviation[i] = (x[i] - expected[i]) / scale[i] if seen[row] > 0 else 0.0
        warming[i] = seen[row] < warmup
    return expected, scale, deviation, warming


@njit(cache=True)
def _offset_kernel(level, mean_abs, seen, last_t, first_t, offset_sum, offset, spread, ids, t, settings):  # type: ignore[no-untyped-def]
    period, bins = settings[0], settings[1]
    out = np.zeros(len(ids))
    for i in range(len(ids)):
        row = ids[i]
        overall = mean_abs[row] * MEAN_ABS_TO_SIGMA
        if overall > 0:
            b = _bin(t[i], period, bins)
            out[i] = (offset[row, b] - offset_sum[row] / bins) / overall
    return out


@njit(cache=True)
def _learn_kernel(
    level, mean_abs, seen, last_t, first_t, offset_sum, offset, spread, ids, t, x, weight, observed, settings
):  # type: ignore[no-untyped-def]
    period, bins, calm_fraction, warmup, huber, level_rate, scale_rate, season_halflife = settings
    span = period / bins
    for i in range(len(ids)):
        row, w = ids[i], weight[i]
        before = seen[row]
        b = _bin(t[i], period, bins)
        start = x[i] if before == 0 else level[row]
        residual = x[i] - start - (offset[row, b] - offset_sum[row] / bins)
        # Nothing is clipped while warming up, nor on the first pass over the day: until each
        # bin has been seen once, what happens in it is how the day goes, not an outlier.
        first_pass = not t[i] - first_t[row] >= period
        warm = before >= warmup and not first_pass
        limit = huber * _scale(level, mean_abs, spread, row, b, calm_fraction)
        clipped = min(max(residual, -limit), limit) if warm else residual
        # The level, though, is clipped from the end of the warm-up on, as RobustEWMA's: on the
        # first pass a burst is the bins' to learn, and a level that followed it would teach the
        # bins after it to expect that much less, for days.
        moved = min(max(residual, -limit), limit) if before >= warmup else residual
        overall = mean_abs[row] * MEAN_ABS_TO_SIGMA
        stands_out = warm and abs(offset[row, b] - offset_sum[row] / bins) > STANDS_OUT * overall
        level_w = 0.0 if stands_out else w
        level[row] = start + max(level_rate, 1.0 / (before + 1.0)) * level_w * moved
        mean_abs[row] += max(scale_rate, 1.0 / (before + 1.0)) * level_w * (abs(moved) - mean_abs[row])
        if w > 0:
            seen[row] = before + 1.0
        if not (observed[i] or w > 0):
            continue
        # Each bin learns at a rate set by the time a point covers of it, so the routine is
        # learned in passes over each bin (days) whatever the sampling interval.
        gap = t[i] - last_t[row]
        covered = min(gap, span) if np.isfinite(gap) and gap > 0 else 0.0
        last_t[row] = t[i]
        if np.isnan(first_t[row]):
            first_t[row] = t[i]
        # A running mean over the first days, then the halflife's rate: per pass, and shared
        # out by the time each point covers of its bin.
        passes = (t[i] - first_t[row]) / period
        per_pass = max(1.0 - 0.5 ** (1.0 / season_halflife), 1.0 / (passes + 1.0))
        season_rate = 1.0 - (1.0 - min(per_pass, 0.9)) ** (covered / span)
        step = np.float32(season_rate * clipped)
        offset[row, b] += step
        offset_sum[row] += step
        # The spread is what the bin varies across days: from the second pass on, from the
        # routine as learned, and from unflagged points only (a burst that did not come must not
        # teach the bin that bursts are optional).
        if not first_pass and w > 0:
            old = spread[row, b]
            size = np.float32(abs(clipped - step))
            spread[row, b] = old + np.float32(season_rate * w) * (size - old) if old > 0 else size

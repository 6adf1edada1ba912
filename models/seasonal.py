"""Daily and weekly shape, learned online (Holt-Winters style, additive, binned)."""

from __future__ import annotations

import numpy as np
from numba import njit

from models.base import (
    MEAN_ABS_TO_SIGMA,
    SCALE_FLOOR,
    ArrayState,
    Assessment,
    FieldSpecs,
    Mask,
    as_floats,
    learning_rate,
)

DAY = 86_400.0
WEEK = 7 * DAY


class PhaseModel(ArrayState):
    """What the models of a shape over a period share: its hyper-parameters and a movable level.

    The forecast is ``level`` plus the shape at the time's phase; a new
    normal (:meth:`adopt`) moves the level and keeps the shape.  See
    :class:`SeasonalProfile` and :class:`models.routine.DailyRoutine` for the
    parameters and examples.
    """

    def __init__(
        self,
        period: float,
        bins: int,
        halflife: float,
        season_halflife: float,
        scale_halflife: float,
        huber: float,
        calm_fraction: float,
        warmup: int,
    ) -> None:
        if period <= 0 or bins < 2:
            raise ValueError(f"period must be positive and bins >= 2, got {period}, {bins}")
        self.period = period
        self.bins = bins
        self.halflife = halflife
        self.season_halflife = season_halflife
        self.scale_halflife = scale_halflife
        self.huber = huber
        self.calm_fraction = calm_fraction
        self.warmup = warmup
        super().__init__()

    def adopt(self, ids: np.ndarray, shift: np.ndarray) -> None:
        self.arrays["level"][ids] += shift


class SeasonalProfile(PhaseModel):
    """Level plus a time-of-period profile plus a day-of-week offset.

    The forecast for time ``t`` is ``level + profile(t) + weekday(t)``, where
    ``profile`` has ``bins`` knots over ``period`` seconds, linearly interpolated
    so the shape is smooth whatever the sampling interval.  Each point's
    (Huber-clipped, weighted) residual is shared out between the level and the
    profile knots it falls between, and the profile is kept centred on zero so
    the level stays the period's mean.  The period is configurable; use
    :func:`detect_period` on history to choose it, and :meth:`fit_history` to
    start a series from its past instead of from nothing.

    Parameters
    ----------
    period
        Seconds in one cycle of the profile (a day by default).
    bins
        Knots in the profile.
    weekly
        Also learn one offset per day of the week.
    halflife, scale_halflife
        Memories of the level and the overall scale, in samples.
    season_halflife
        Memory of the profile, in passes over each knot (days, for a daily
        profile), independent of the sampling interval.
    huber
        Clip residuals at this many scales before learning from them.
    warmup
        Samples before the forecast is trusted (by default a little over a
        period at 5-minute sampling is not required; the profile keeps
        improving after warm-up).

    Examples
    --------
    >>> import numpy as np
    >>> model = SeasonalProfile(bins=24, weekly=False)
    >>> model.resize(1)
    >>> ids = np.array([0])
    >>> hours = np.arange(24 * 14)
    >>> values = 100 + 50 * np.sin(2 * np.pi * hours / 24)
    >>> for h, v in zip(hours, values):
    ...     model.learn(ids, np.array([3600.0 * h]), np.array([v]), np.ones(1))
    >>> noon = model.assess(ids, np.array([3600.0 * (24 * 14 + 6)]), np.array([150.0]))
    >>> abs(float(noon.expected[0]) - 150) < 10
    True
    """

    def __init__(
        self,
        period: float = DAY,
        bins: int = 24,
        weekly: bool = True,
        halflife: float = 48.0,
        season_halflife: float = 1.0,
        scale_halflife: float = 288.0,
        huber: float = 3.0,
        calm_fraction: float = 0.25,
        warmup: int = 30,
    ) -> None:
        self.weekly = weekly
        super().__init__(
            period, bins, halflife, season_halflife, scale_halflife, huber, calm_fraction, warmup
        )
        self._level_rate = learning_rate(halflife)
        self._scale_rate = learning_rate(scale_halflife)

    def field_specs(self) -> FieldSpecs:
        return {
            "level": (np.float64, (), 0.0),
            "mean_abs": (np.float64, (), 0.0),
            "seen": (np.float64, (), 0.0),
            "profile": (np.float32, (self.bins,), 0.0),
            "spread": (np.float32, (self.bins,), 0.0),
            "weekday": (np.float32, (7,), 0.0),
            "last_t": (np.float64, (), np.nan),
        }

    def assess(self, ids: np.ndarray, t: np.ndarray, x: np.ndarray) -> Assessment:
        expected, scale, deviation, warming = _assess_kernel(
            *self._state(), np.asarray(ids, dtype=np.int64), *as_floats(t, x), self._shape_settings()
        )
        return Assessment(expected, scale, deviation, warming)

    def learn(
        self, ids: np.ndarray, t: np.ndarray, x: np.ndarray, weight: np.ndarray, seen: Mask | None = None
    ) -> None:
        _learn_kernel(
            *self._state(),
            np.asarray(ids, dtype=np.int64),
            *as_floats(t, x, weight),
            self._shape_settings(),
            (self.huber, self._level_rate, self._scale_rate, self.season_halflife),
        )

    def _state(self) -> tuple[np.ndarray, ...]:
        names = ("level", "mean_abs", "seen", "last_t", "profile", "spread", "weekday")
        return tuple(self.arrays[name] for name in names)

    def _shape_settings(self) -> tuple[float, int, bool, float, float]:
        return (self.period, self.bins, self.weekly, self.calm_fraction, float(self.warmup))

    def fit_history(self, series_id: int, t: np.ndarray, x: np.ndarray) -> None:
        """Start one series from its history (statsmodels STL), not from nothing.

        Fits a seasonal-trend decomposition on the history resampled to the
        profile's knots, takes the profile from the seasonal component, the
        level from the end of the trend and the scale from the remainder.
        Needs at least two periods of history; with less, it learns the
        history point by point instead.
        """
        from statsmodels.tsa.seasonal import STL

        keep = np.isfinite(t) & np.isfinite(x)
        t, x = t[keep], x[keep]
        if len(t) == 0:
            return
        step = self.period / self.bins
        slot = np.floor((t - t.min()) / step).astype(np.int64)
        n_slots = int(slot.max()) + 1
        if n_slots < 2 * self.bins:
            ids = np.array([series_id])
            for moment, value in zip(t, x, strict=True):
                self.learn(ids, np.array([moment]), np.array([value]), np.ones(1))
            return
        sums = np.bincount(slot, weights=x, minlength=n_slots)
        counts = np.bincount(slot, minlength=n_slots)
        grid = np.divide(sums, counts, out=np.full(n_slots, np.nan), where=counts > 0)
        filled = np.interp(np.arange(n_slots), np.nonzero(counts)[0], grid[counts > 0])
        fit = STL(filled, period=self.bins, robust=True).fit()
        slot_start = t.min() + np.arange(n_slots) * step
        knot = np.floor(np.mod(slot_start, self.period) / step).astype(np.int64) % self.bins
        seasonal = np.bincount(knot, weights=fit.seasonal, minlength=self.bins)
        seasonal /= np.maximum(np.bincount(knot, minlength=self.bins), 1)
        self.arrays["profile"][series_id] = (seasonal - seasonal.mean()).astype(np.float32)
        self.arrays["weekday"][series_id] = 0.0
        self.arrays["level"][series_id] = float(fit.trend[-1])
        remainder = np.interp(t, slot_start, fit.resid) if len(t) else np.zeros(0)
        self.arrays["mean_abs"][series_id] = float(np.mean(np.abs(remainder))) or SCALE_FLOOR
        self.arrays["seen"][series_id] = float(len(t))

    def __repr__(self) -> str:
        return f"SeasonalProfile(period={self.period}, bins={self.bins}, weekly={self.weekly})"


# The kernels below are the model's arithmetic, one series at a time, compiled:
# a batch of 100k series is one pass over memory instead of dozens of numpy
# temporaries.  Each series appears at most once per batch (the engine's rule).


@njit(cache=True)
def _knots(t: float, period: float, bins: int) -> tuple[int, int, float]:
    """The profile knots either side of time t, and how far t is from the left one."""
    cycles = t / period
    # Not np.mod: libm's fmod is exact but costs more than everything else here.
    position = (cycles - np.floor(cycles)) * bins
    whole = np.floor(position)
    left = min(int(whole), bins - 1)
    right = left + 1 if left + 1 < bins else 0
    return left, right, position - whole


@njit(cache=True)
def _shape(profile, weekday, row, t, period, bins, weekly):  # type: ignore[no-untyped-def]
    """Profile plus weekday offset of one series at time t."""
    left, right, frac = _knots(t, period, bins)
    shape = (1.0 - frac) * profile[row, left] + frac * profile[row, right]
    if weekly:
        # The Unix epoch was a Thursday; any fixed labelling works.
        shape += weekday[row, int(np.floor(t / DAY)) % 7]
    return shape


@njit(cache=True)
def _scale(level, mean_abs, spread, row, t, period, bins, calm_fraction):  # type: ignore[no-untyped-def]
    """Scale at time t: the knots' own spread where learned, else the overall one.

    Noise often follows the daily shape (busy hours are noisier), so each knot
    keeps its own mean absolute deviation; the overall one fills in for knots
    not yet visited and bounds how calm a knot may claim to be.
    """
    left, right, frac = _knots(t, period, bins)
    overall = mean_abs[row]
    local = (1.0 - frac) * spread[row, left] + frac * spread[row, right]
    if not local > 0:
        local = overall
    floor = SCALE_FLOOR * max(1.0, abs(level[row]))
    return max(max(local, calm_fraction * overall) * MEAN_ABS_TO_SIGMA, floor)


@njit(cache=True)
def _assess_kernel(level, mean_abs, seen, last_t, profile, spread, weekday, ids, t, x, shape):  # type: ignore[no-untyped-def]
    period, bins, weekly, calm_fraction, warmup = shape
    n = len(ids)
    expected, scale, deviation = np.empty(n), np.empty(n), np.empty(n)
    warming = np.empty(n, dtype=np.bool_)
    for i in range(n):
        row = ids[i]
        expected[i] = level[row] + _shape(profile, weekday, row, t[i], period, bins, weekly)
        scale[i] = _scale(level, mean_abs, spread, row, t[i], period, bins, calm_fraction)
        deviation[i] = (x[i] - expected[i]) / scale[i] if seen[row] > 0 else 0.0
        warming[i] = seen[row] < warmup
    return expected, scale, deviation, warming


@njit(cache=True)
def _learn_kernel(level, mean_abs, seen, last_t, profile, spread, weekday, ids, t, x, weight, shape, rates):  # type: ignore[no-untyped-def]
    period, bins, weekly, calm_fraction, warmup = shape
    huber, level_rate, scale_rate, season_halflife = rates
    knot_span = period / bins
    for i in range(len(ids)):
        row, w = ids[i], weight[i]
        before = seen[row]
        start = x[i] if before == 0 else level[row]
        residual = x[i] - start - _shape(profile, weekday, row, t[i], period, bins, weekly)
        limit = (
            np.inf
            if before < warmup
            else huber * _scale(level, mean_abs, spread, row, t[i], period, bins, calm_fraction)
        )
        clipped = min(max(residual, -limit), limit)
        level[row] = start + max(level_rate, 1.0 / (before + 1.0)) * w * clipped
        # The profile learns at a rate set by the time a point covers, so a
        # 15-second series and a 5-minute one learn their daily shape equally
        # fast, in passes over each knot (``season_halflife``).
        gap = t[i] - last_t[row]
        covered = min(gap, knot_span) if np.isfinite(gap) and gap > 0 else 0.0
        if w > 0:
            last_t[row] = t[i]
        season_rate = (1.0 - 0.5 ** (covered / (season_halflife * knot_span))) * w
        step = np.float32(season_rate * clipped)
        left, right, frac = _knots(t[i], period, bins)
        left_step = np.float32(1.0 - frac) * step
        right_step = np.float32(frac) * step
        profile[row, left] += left_step
        profile[row, right] += right_step
        # Keep the profile centred, so the level is the period's mean.
        centring = (left_step + right_step) / np.float32(bins)
        for knot in range(bins):
            profile[row, knot] -= centring
        if weekly:
            week_step = step / np.float32(7.0)
            weekday[row, int(np.floor(t[i] / DAY)) % 7] += week_step
            for day in range(7):
                weekday[row, day] -= week_step / np.float32(7.0)
        size = np.float32(abs(clipped))
        for knot, share in ((left, 1.0 - frac), (right, frac)):
            old = spread[row, knot]
            rate = np.float32(season_rate * share)
            spread[row, knot] = old + rate * (size - old) if old > 0 else size
        mean_abs[row] += max(scale_rate, 1.0 / (before + 1.0)) * w * (abs(clipped) - mean_abs[row])
        if w > 0:
            seen[row] = before + 1.0


def detect_period(
    t: np.ndarray, x: np.ndarray, candidates: tuple[float, ...] = (3600.0, DAY, WEEK)
) -> float | None:
    """The candidate period with the strongest autocorrelation, or None.

    Resamples the history to a regular grid at its median interval and asks
    statsmodels' ACF at each candidate lag that fits twice in the history.  A
    real period shows as a peak: the autocorrelation at the period must exceed
    the one at half the period (a trough for a true cycle) by at least 0.3;
    plain smoothness, which makes short lags correlate, does not count.

    >>> import numpy as np
    >>> t = np.arange(0, 14 * DAY, 600.0)
    >>> x = np.sin(2 * np.pi * t / DAY) + np.random.default_rng(0).normal(0, 0.3, len(t))
    >>> detect_period(t, x) == DAY
    True
    """
    from statsmodels.tsa.stattools import acf

    keep = np.isfinite(t) & np.isfinite(x)
    t, x = t[keep], x[keep]
    if len(t) < 10:
        return None
    order = np.argsort(t)
    t, x = t[order], x[order]
    interval = float(np.median(np.diff(t)))
    if interval <= 0:
        return None
    grid = np.arange(t[0], t[-1], interval)
    regular = np.interp(grid, t, x)
    usable = [c for c in candidates if 2 * c / interval < len(regular)]
    if not usable:
        return None
    lags = [round(c / interval) for c in usable]
    correlation = acf(regular, nlags=max(lags), fft=True)
    strength = {c: correlation[lag] - correlation[lag // 2] for c, lag in zip(usable, lags, strict=True)}
    best = max(strength, key=lambda c: strength[c])
    return best if strength[best] >= 0.3 else None

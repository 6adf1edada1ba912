"""Daily and weekly shape, learned online (Holt-Winters style, additive, binned)."""

from __future__ import annotations

import numpy as np

from models.base import (
    MEAN_ABS_TO_SIGMA,
    SCALE_FLOOR,
    ArrayState,
    Assessment,
    FieldSpecs,
    learning_rate,
    scale_floor,
    warmup_rate,
)

DAY = 86_400.0
WEEK = 7 * DAY


class SeasonalProfile(ArrayState):
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
        if period <= 0 or bins < 2:
            raise ValueError(f"period must be positive and bins >= 2, got {period}, {bins}")
        self.period = period
        self.bins = bins
        self.weekly = weekly
        self.halflife = halflife
        self.season_halflife = season_halflife
        self.scale_halflife = scale_halflife
        self.huber = huber
        self.calm_fraction = calm_fraction
        self.warmup = warmup
        self._level_rate = learning_rate(halflife)
        self._scale_rate = learning_rate(scale_halflife)
        super().__init__()

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

    def _knots(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position = np.mod(t, self.period) / self.period * self.bins
        left = np.floor(position).astype(np.int64) % self.bins
        return left, (left + 1) % self.bins, position - np.floor(position)

    @staticmethod
    def _weekday(t: np.ndarray) -> np.ndarray:
        # The Unix epoch was a Thursday; any fixed labelling works.
        return (np.floor(t / DAY).astype(np.int64)) % 7

    def _seasonal(self, ids: np.ndarray, t: np.ndarray) -> np.ndarray:
        left, right, frac = self._knots(t)
        profile = self.arrays["profile"]
        shape = (1.0 - frac) * profile[ids, left] + frac * profile[ids, right]
        if self.weekly:
            shape = shape + self.arrays["weekday"][ids, self._weekday(t)]
        return shape.astype(np.float64)

    def _scale(self, ids: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Scale at time t: the knots' own spread where learned, else the overall one.

        Noise often follows the daily shape (busy hours are noisier), so each
        knot keeps its own mean absolute deviation; the overall one fills in
        for knots not yet visited and bounds how calm a knot may claim to be.
        """
        left, right, frac = self._knots(t)
        overall = self.arrays["mean_abs"][ids]
        spread = self.arrays["spread"]
        local = (1.0 - frac) * spread[ids, left] + frac * spread[ids, right]
        local = np.where(local > 0, local, overall)
        mean_abs = np.maximum(local, self.calm_fraction * overall)
        floor = scale_floor(self.arrays["level"][ids])
        return np.maximum(mean_abs * MEAN_ABS_TO_SIGMA, floor)

    def assess(self, ids: np.ndarray, t: np.ndarray, x: np.ndarray) -> Assessment:
        expected = self.arrays["level"][ids] + self._seasonal(ids, t)
        scale = self._scale(ids, t)
        seen = self.arrays["seen"][ids]
        deviation = np.where(seen > 0, (x - expected) / scale, 0.0)
        return Assessment(expected, scale, deviation, seen < self.warmup)

    def _time_rate(self, ids: np.ndarray, t: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """Profile learning rate for this point, from the time it covers.

        ``season_halflife`` counts passes over a knot, whatever the sampling
        interval: a 15-second series and a 5-minute one learn their daily shape
        equally fast, in days.
        """
        knot_span = self.period / self.bins
        gap = t - self.arrays["last_t"][ids]
        covered = np.where(np.isfinite(gap) & (gap > 0), np.minimum(gap, knot_span), 0.0)
        self.arrays["last_t"][ids] = np.where(weight > 0, t, self.arrays["last_t"][ids])
        return (1.0 - 0.5 ** (covered / (self.season_halflife * knot_span))) * weight

    def learn(self, ids: np.ndarray, t: np.ndarray, x: np.ndarray, weight: np.ndarray) -> None:
        seen = self.arrays["seen"][ids]
        level = np.where(seen == 0, x, self.arrays["level"][ids])
        residual = x - level - self._seasonal(ids, t)
        scale = self._scale(ids, t)
        limit = np.where(seen < self.warmup, np.inf, self.huber * scale)
        clipped = np.clip(residual, -limit, limit)
        level_rate = warmup_rate(self._level_rate, seen) * weight
        self.arrays["level"][ids] = level + level_rate * clipped
        left, right, frac = self._knots(t)
        season_rate = self._time_rate(ids, t, weight)
        step = (season_rate * clipped).astype(np.float32)
        profile = self.arrays["profile"]
        left_step = (1.0 - frac).astype(np.float32) * step
        right_step = frac.astype(np.float32) * step
        profile[ids, left] += left_step
        profile[ids, right] += right_step
        # Keep the profile centred, so the level is the period's mean.
        profile[ids] -= ((left_step + right_step) / self.bins)[:, None]
        if self.weekly:
            day = self._weekday(t)
            week_step = step / 7.0
            weekday = self.arrays["weekday"]
            weekday[ids, day] += week_step
            weekday[ids] -= (week_step / 7.0)[:, None]
        spread = self.arrays["spread"]
        size = np.abs(clipped).astype(np.float32)
        for knot, share in ((left, 1.0 - frac), (right, frac)):
            old = spread[ids, knot]
            rate = (season_rate * share).astype(np.float32)
            spread[ids, knot] = np.where(old > 0, old + rate * (size - old), size)
        mean_abs = self.arrays["mean_abs"][ids]
        scale_rate = warmup_rate(self._scale_rate, seen) * weight
        self.arrays["mean_abs"][ids] = mean_abs + scale_rate * (np.abs(clipped) - mean_abs)
        self.arrays["seen"][ids] = seen + (weight > 0)

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

"""Robust median and MAD, tracked online: for heavy-tailed and low-count series."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from models.base import (
    MEAN_ABS_TO_SIGMA,
    ArrayState,
    Assessment,
    FieldSpecs,
    Mask,
    learning_rate,
    scale_floor,
    warmup_rate,
)

#: 1.4826 * MAD is the standard deviation of Gaussian data.
MAD_TO_SIGMA = 1.482602218505602

#: A point within this many scales of the median counts as sitting on it.  The
#: online median of discrete data jitters by about one step (``rate * scale``,
#: a few hundredths of a scale) around the atom, so points on the atom must not
#: be counted as off it.
_ON_MEDIAN = 0.1

#: For Gaussian data the MAD is this times the mean absolute deviation (0.845).
_MEAN_TO_MAD = MEAN_ABS_TO_SIGMA / MAD_TO_SIGMA

#: While warming, distances beyond this many scales count as this many.
_WARM_CLIP = 3.0

#: Points that start the estimates together (see :func:`median_of_three`).
START = 3


class RobustQuantile(ArrayState):
    """Median and median absolute deviation by stochastic approximation.

    Each point moves the median one step of ``rate * scale`` towards itself
    (the sign of its residual, never its size: the Frugal / Robbins-Monro
    quantile update), and the MAD one step towards ``|x - median|`` the same
    way.  A point a thousand scales out moves them exactly as much as one just
    beside the median, so heavy tails and outliers barely move the estimates,
    and the step is proportional to the scale so the update has the units of
    the data and the jitter of the estimates is a fixed fraction of the scale.

    The scale is ``1.4826 * MAD``, except where the MAD collapses.  On count
    data with few events (errors per minute with mean 0.3: three points in
    four are 0) more than half the points sit exactly on the median, so the
    MAD is 0 and any event would be infinitely surprising.  The model therefore
    also tracks how often a point is off the median (``off``, a point within a
    tenth of a scale counts as on it) and the typical size of a deviation when
    there is one (``size``, the median of ``|x - median|`` over those points,
    tracked like the MAD), and reports

        scale = max(1.4826 * MAD, sqrt(off) * size)

    ``sqrt(off) * size`` is the root-mean-square deviation from the median if
    all off-median deviations had the same size.  On continuous data ``off``
    is near 1 and ``size`` is about the MAD, so the first term (1.48 times
    larger) rules, with all its robustness, for Gaussian, Student-t or
    log-normal data alike.  When more than half the points sit on the median
    the MAD is 0 and the second term takes over: for rare counts ``off`` is
    about the event rate and ``size`` about 1, giving the Poisson standard
    deviation ``sqrt(rate)`` -- without having to detect that the data are
    counts, in the data's own units whatever they are, and without collapsing
    itself, since ``size`` only looks at points that differ from the median.
    (An exponentially weighted mean absolute deviation would also stay
    positive, but clipping it against outliers makes 0 a stable fixed point
    when fewer than about a quarter of the points differ from the median.)

    Parameters
    ----------
    halflife
        Sets the median's step, ``learning_rate(halflife) * scale``: its jitter
        on stationary data is about that of an EWMA with this halflife.  Also
        the relative step of ``size``, which only learns from off-median points.
    scale_halflife
        The same for the MAD's step and the memory of ``off``.
    warmup
        Points a series needs before its forecast is trusted (at least 3).

    Notes
    -----
    Start-up is robust too.  The first three points start the median and MAD
    together (their median and MAD), so one wild first value is not taken as
    the level.  While warming the steps are a running average's ``1/n``, and
    the MAD is the running mean of clipped distances times 0.845 (its Gaussian
    equivalent) rather than sign steps, which from a three-point start would
    need hundreds of points to find the scale; after warm-up sign steps take
    over from where the mean left off.

    Examples
    --------
    >>> import numpy as np
    >>> model = RobustQuantile(warmup=20)
    >>> model.resize(2)
    >>> ids, rng = np.array([0, 1]), np.random.default_rng(0)
    >>> for step in range(500):
    ...     x = np.array([100 + rng.standard_t(2), rng.poisson(0.3)])
    ...     model.learn(ids, np.full(2, 60.0 * step), x, np.ones(2))
    >>> out = model.assess(ids, np.full(2, 30000.0), np.array([150.0, 3.0]))
    >>> [round(float(e)) for e in out.expected], out.scale.round(1).tolist()
    ([100, 0], [1.2, 0.6])
    >>> bool(out.deviation[0] > 20), bool(out.deviation[1] > 3), bool(out.warming.any())
    (True, True, False)

    The Poisson series' MAD is 0; its scale of 0.6 is close to the Poisson
    standard deviation ``sqrt(0.3) = 0.55``.
    """

    fields: ClassVar[FieldSpecs] = {
        "median": (np.float64, (), 0.0),
        "mad": (np.float64, (), 0.0),
        "off": (np.float64, (), 0.0),
        "size": (np.float64, (), 0.0),
        "seen": (np.float64, (), 0.0),
    }

    def __init__(
        self,
        halflife: float = 12.0,
        scale_halflife: float = 144.0,
        warmup: int = 30,
    ) -> None:
        if warmup < START:
            raise ValueError(
                f"warmup must be at least {START} (the first {START} points start the median), got {warmup}"
            )
        super().__init__()
        self.halflife = halflife
        self.scale_halflife = scale_halflife
        self.warmup = warmup
        self._rate = learning_rate(halflife)
        self._scale_rate = learning_rate(scale_halflife)

    @staticmethod
    def _combine(median: np.ndarray, mad: np.ndarray, off: np.ndarray, size: np.ndarray) -> np.ndarray:
        floor = scale_floor(median)
        return np.maximum(np.maximum(MAD_TO_SIGMA * mad, np.sqrt(off) * size), floor)

    def _scale(self, ids: np.ndarray) -> np.ndarray:
        a = self.arrays
        return self._combine(a["median"][ids], a["mad"][ids], a["off"][ids], a["size"][ids])

    def assess(self, ids: np.ndarray, t: np.ndarray, x: np.ndarray) -> Assessment:
        median = self.arrays["median"][ids]
        scale = self._scale(ids)
        seen = self.arrays["seen"][ids]
        deviation = np.where(seen > 0, (x - median) / scale, 0.0)
        return Assessment(median, scale, deviation, seen < self.warmup)

    def adopt(self, ids: np.ndarray, shift: np.ndarray) -> None:
        self.arrays["median"][ids] += shift

    def learn(
        self, ids: np.ndarray, t: np.ndarray, x: np.ndarray, weight: np.ndarray, seen: Mask | None = None
    ) -> None:
        a = self.arrays
        seen = a["seen"][ids]
        median, mad, off, size = a["median"][ids], a["mad"][ids], a["off"][ids], a["size"][ids]
        scale = self._combine(median, mad, off, size)
        residual = x - median
        distance = np.abs(residual)
        rate = warmup_rate(self._rate, seen) * weight
        scale_rate = warmup_rate(self._scale_rate, seen) * weight

        is_off = distance > _ON_MEDIAN * scale
        off = off + scale_rate * (is_off - off)
        # ``size`` moves towards the median of the off-median distances in
        # relative steps at the faster rate: off-median points are rare
        # exactly where ``size`` matters.  The first such point starts it.
        step = rate * size * np.sign(distance - size)
        moved = np.where(size > 0, np.maximum(size + step, 0.0), distance * (weight > 0))
        size = np.where(is_off, moved, size)

        scale = self._combine(median, mad, off, size)
        # While warming a running mean settles far sooner than sign steps
        # would from a three-point start: average the MAD-equivalent of each
        # distance (clipped, so a heavy tail cannot inflate it), then switch.
        typical = _MEAN_TO_MAD * np.minimum(distance, _WARM_CLIP * scale)
        warm_mad = mad + scale_rate * (typical - mad)
        sign_mad = np.maximum(mad + scale_rate * scale * np.sign(distance - mad), 0.0)
        mad = np.where(seen < self.warmup, warm_mad, sign_mad)
        scale = self._combine(median, mad, off, size)
        median = median + rate * scale * np.sign(residual)

        learned = weight > 0
        starting = learned & (seen < START)
        if np.any(starting):
            rows = np.nonzero(starting)[0]
            start = self._start(seen[rows], x[rows], a["median"][ids[rows]], a["size"][ids[rows]])
            for values, started in zip((median, mad, off, size), start, strict=True):
                values[rows] = started
        keep = ~learned
        for name, values in (("median", median), ("mad", mad), ("off", off), ("size", size)):
            a[name][ids] = np.where(keep, a[name][ids], values)
        a["seen"][ids] = seen + learned

    @staticmethod
    def _start(
        seen: np.ndarray, x: np.ndarray, first: np.ndarray, second: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(median, mad, off, size) while the first three points arrive.

        The first two values wait in ``median`` and ``size`` (``off`` stays 0,
        so they do not count as a scale); the third point starts every
        estimate from the median and MAD of the three.  Starting from the first
        point alone would let one wild first value set a scale that takes
        thousands of points to forget.
        """
        zero = np.zeros_like(x)
        x0 = np.where(seen == 0, x, first)
        x1 = np.where(seen == 1, x, np.where(seen == 0, zero, second))
        median, near, far = median_of_three(x0, x1, x)
        done = seen == 2
        return (
            np.where(done, median, x0),
            np.where(done, near, zero),
            np.where(done, ((near > 0).astype(float) + (far > 0)) / 3.0, zero),
            np.where(done, np.where(near > 0, near, far), x1),
        )

    def __repr__(self) -> str:
        return (
            f"RobustQuantile(halflife={self.halflife}, scale_halflife={self.scale_halflife}, "
            f"warmup={self.warmup})"
        )


def median_of_three(
    x0: np.ndarray, x1: np.ndarray, x2: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Elementwise median of three values, and the two other distances to it.

    The middle distance is the MAD of the three; a robust start for a series
    whose first point may be wild.

    >>> import numpy as np
    >>> median, near, far = median_of_three(np.array([1e6]), np.array([100.0]), np.array([103.0]))
    >>> median.tolist(), near.tolist(), far.tolist()
    ([103.0], [3.0], [999897.0])
    """
    three = np.stack([x0, x1, x2], axis=-1)
    median = np.median(three, axis=-1)
    distances = np.sort(np.abs(three - median[..., None]), axis=-1)
    return median, distances[..., 1], distances[..., 2]

"""Robust level and scale: an EWMA whose updates the anomalies cannot drag."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numba import njit

from models.base import (
    MEAN_ABS_TO_SIGMA,
    SCALE_FLOOR,
    ArrayState,
    Assessment,
    FieldSpecs,
    Mask,
    learning_rate,
)


class RobustEWMA(ArrayState):
    """Exponentially weighted level and scale with Huber-clipped updates.

    The level follows the series with memory ``halflife`` (samples); the scale
    is the exponentially weighted mean absolute deviation, converted to a
    standard deviation.  Each update is clipped at ``huber`` scales, so one wild
    point moves the level by at most ``huber`` scales times the learning rate,
    and the caller's ``weight`` (near 0 for points judged anomalous) protects the
    baseline further.

    Parameters
    ----------
    halflife
        Samples after which an old point weighs half as much in the level.
    scale_halflife
        The same for the scale; longer, so a burst does not inflate it at once.
    huber
        Clip each residual at this many scales before learning from it.
    warmup
        Points a series needs before its forecast is trusted.

    Examples
    --------
    >>> import numpy as np
    >>> model = RobustEWMA(halflife=10, warmup=5)
    >>> model.resize(1)
    >>> ids, t = np.array([0]), np.array([0.0])
    >>> for value in [10.0, 11.0, 9.0, 10.0, 10.5, 9.5] * 5:
    ...     model.learn(ids, t, np.array([value]), np.ones(1))
    >>> spike = model.assess(ids, t, np.array([30.0]))
    >>> bool(spike.deviation[0] > 10), bool(spike.warming[0])
    (True, False)
    """

    fields: ClassVar[FieldSpecs] = {
        "level": (np.float64, (), 0.0),
        "mean_abs": (np.float64, (), 0.0),
        "seen": (np.float64, (), 0.0),
    }

    def __init__(
        self,
        halflife: float = 12.0,
        scale_halflife: float = 144.0,
        huber: float = 3.0,
        warmup: int = 30,
    ) -> None:
        super().__init__()
        self.halflife = halflife
        self.scale_halflife = scale_halflife
        self.huber = huber
        self.warmup = warmup
        self._level_rate = learning_rate(halflife)
        self._scale_rate = learning_rate(scale_halflife)

    def assess(self, ids: np.ndarray, t: np.ndarray, x: np.ndarray) -> Assessment:
        level, scale, deviation, warming = _assess_kernel(
            self.arrays["level"],
            self.arrays["mean_abs"],
            self.arrays["seen"],
            np.asarray(ids, dtype=np.int64),
            np.asarray(x, dtype=np.float64),
            float(self.warmup),
        )
        return Assessment(level, scale, deviation, warming)

    def adopt(self, ids: np.ndarray, shift: np.ndarray) -> None:
        self.arrays["level"][ids] += shift

    def learn(
        self, ids: np.ndarray, t: np.ndarray, x: np.ndarray, weight: np.ndarray, seen: Mask | None = None
    ) -> None:
        _learn_kernel(
            self.arrays["level"],
            self.arrays["mean_abs"],
            self.arrays["seen"],
            np.asarray(ids, dtype=np.int64),
            np.asarray(x, dtype=np.float64),
            np.asarray(weight, dtype=np.float64),
            (float(self.warmup), self.huber, self._level_rate, self._scale_rate),
        )

    def __repr__(self) -> str:
        return (
            f"RobustEWMA(halflife={self.halflife}, scale_halflife={self.scale_halflife}, "
            f"huber={self.huber}, warmup={self.warmup})"
        )


@njit(cache=True)
def _scale(level: float, mean_abs: float) -> float:
    return max(mean_abs * MEAN_ABS_TO_SIGMA, SCALE_FLOOR * max(1.0, abs(level)))


@njit(cache=True)
def _assess_kernel(level, mean_abs, seen, ids, x, warmup):  # type: ignore[no-untyped-def]
    n = len(ids)
    expected, scale, deviation = np.empty(n), np.empty(n), np.empty(n)
    warming = np.empty(n, dtype=np.bool_)
    for i in range(n):
        row = ids[i]
        expected[i] = level[row]
        scale[i] = _scale(level[row], mean_abs[row])
        deviation[i] = (x[i] - expected[i]) / scale[i] if seen[row] > 0 else 0.0
        warming[i] = seen[row] < warmup
    return expected, scale, deviation, warming


@njit(cache=True)
def _learn_kernel(level, mean_abs, seen, ids, x, weight, settings):  # type: ignore[no-untyped-def]
    warmup, huber, level_rate, scale_rate = settings
    for i in range(len(ids)):
        row, w = ids[i], weight[i]
        before = seen[row]
        start = x[i] if before == 0 else level[row]
        # While warming nothing has been judged yet, so nothing is clipped.
        limit = np.inf if before < warmup else huber * _scale(level[row], mean_abs[row])
        clipped = min(max(x[i] - start, -limit), limit)
        # A running mean until 1/rate points are seen, the EWMA rate afterwards.
        level[row] = start + max(level_rate, 1.0 / (before + 1.0)) * w * clipped
        mean_abs[row] += max(scale_rate, 1.0 / (before + 1.0)) * w * (abs(clipped) - mean_abs[row])
        if w > 0:
            seen[row] = before + 1.0

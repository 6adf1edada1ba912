"""Robust level and scale: an EWMA whose updates the anomalies cannot drag."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from models.base import (
    MEAN_ABS_TO_SIGMA,
    ArrayState,
    Assessment,
    FieldSpecs,
    learning_rate,
    scale_floor,
    warmup_rate,
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

    def _scale(self, ids: np.ndarray) -> np.ndarray:
        level = self.arrays["level"][ids]
        floor = scale_floor(level)
        return np.maximum(self.arrays["mean_abs"][ids] * MEAN_ABS_TO_SIGMA, floor)

    def assess(self, ids: np.ndarray, t: np.ndarray, x: np.ndarray) -> Assessment:
        level = self.arrays["level"][ids]
        scale = self._scale(ids)
        seen = self.arrays["seen"][ids]
        deviation = np.where(seen > 0, (x - level) / scale, 0.0)
        return Assessment(level, scale, deviation, seen < self.warmup)

    def learn(self, ids: np.ndarray, t: np.ndarray, x: np.ndarray, weight: np.ndarray) -> None:
        seen = self.arrays["seen"][ids]
        level = self.arrays["level"][ids]
        first = seen == 0
        level = np.where(first, x, level)
        scale = self._scale(ids)
        residual = x - level
        warming = seen < self.warmup
        # While warming nothing has been judged yet, so nothing is clipped.
        limit = np.where(warming, np.inf, self.huber * scale)
        clipped = np.clip(residual, -limit, limit)
        level_rate = warmup_rate(self._level_rate, seen) * weight
        scale_rate = warmup_rate(self._scale_rate, seen) * weight
        self.arrays["level"][ids] = level + level_rate * clipped
        mean_abs = self.arrays["mean_abs"][ids]
        self.arrays["mean_abs"][ids] = mean_abs + scale_rate * (np.abs(clipped) - mean_abs)
        self.arrays["seen"][ids] = seen + (weight > 0)

    def __repr__(self) -> str:
        return (
            f"RobustEWMA(halflife={self.halflife}, scale_halflife={self.scale_halflife}, "
            f"huber={self.huber}, warmup={self.warmup})"
        )

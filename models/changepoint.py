"""Level shifts: a two-sided CUSUM that flags a new level once, then adopts it."""

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
from models.quantile import MAD_TO_SIGMA, START, median_of_three


class LevelShift(ArrayState):
    """A protected robust level, a two-sided CUSUM on its residuals, and adoption.

    The level and scale are a Huber-clipped, weighted EWMA (as in
    :class:`models.RobustEWMA`), so points the caller judges anomalous barely
    move them.  Each residual is standardised, ``z = (x - level) / scale``,
    clipped at ``huber`` (one wild point is a spike, not a shift) and fed to
    two CUSUMs, ``up = max(0, up + z - drift)`` and
    ``down = max(0, down - z - drift)``.  A run starts when a CUSUM leaves 0;
    the model keeps each run's length and the sum of its values.

    The deviation is the larger, in magnitude, of the point's own ``z`` and the
    run's evidence ``sum(z) / sqrt(n)`` (the run's mean residual in standard
    errors, signed; it is ``z`` itself for a one-point run).  So a shift too
    small to show in any single point still scores high within a few points.

    When a CUSUM exceeds ``threshold`` the run is taken to be a new level: the
    level jumps to the mean of the run's values and both CUSUMs restart.  A
    deploy that moves latency up 30% is flagged on its first points, then is
    the new normal; a single spike never exceeds ``threshold`` on its own
    (each point adds at most ``huber - drift``) and does not move the level.

    CUSUM and run statistics learn from every point with a positive weight,
    however small: weight protects the *level* from what was flagged, but the
    flagged points are the evidence for a shift.  Weight 0 (a gap, a silence)
    teaches nothing.

    Parameters
    ----------
    drift
        CUSUM allowance ``k`` in scales: shifts smaller than about twice this
        are not adopted.
    threshold
        CUSUM decision level ``h`` in scales; higher adopts later and less often.
        With the defaults, on Gaussian noise (measured): a spurious level, a
        run of noise, is adopted about once in 15 000 points; a 2-scale shift
        after about 6 points, one beyond ``huber`` scales after 4; a 1-scale
        shift after about 16, unless the level has drifted there by itself.
    halflife
        Samples after which an old point weighs half as much in the level.
    scale_halflife
        The same for the scale.
    huber
        Clip standardised residuals at this many scales, for both the level
        update and the CUSUMs.
    warmup
        Points a series needs before its forecast is trusted; the CUSUMs run
        only after it.  At least 3: the first three points start the level
        and scale from their median and MAD (:func:`models.quantile.median_of_three`),
        so a wild first value is not taken as the level.

    Examples
    --------
    >>> import numpy as np
    >>> model = LevelShift()
    >>> model.resize(1)
    >>> ids, rng = np.array([0]), np.random.default_rng(0)
    >>> scores = []
    >>> for step in range(400):
    ...     x = np.array([rng.normal(100, 5) * (1.3 if step >= 300 else 1.0)])
    ...     out = model.assess(ids, np.array([60.0 * step]), x)
    ...     scores.append(float(out.deviation[0]))
    ...     # As the engine does: learn fully while warming, little from what is flagged.
    ...     weight = 1.0 if out.warming[0] or abs(scores[-1]) < 4 else 0.01
    ...     model.learn(ids, np.array([60.0 * step]), x, np.full(1, weight))
    >>> max(scores[300:303]) > 4, round(float(out.expected[0]) / 10) * 10
    (True, 130)
    >>> max(abs(s) for s in scores[350:]) < 4
    True
    """

    fields: ClassVar[FieldSpecs] = {
        "level": (np.float64, (), 0.0),
        "mean_abs": (np.float64, (), 0.0),
        "seen": (np.float64, (), 0.0),
        "up": (np.float64, (), 0.0),
        "up_n": (np.float64, (), 0.0),
        "up_sum": (np.float64, (), 0.0),
        "down": (np.float64, (), 0.0),
        "down_n": (np.float64, (), 0.0),
        "down_sum": (np.float64, (), 0.0),
    }

    def __init__(
        self,
        drift: float = 0.5,
        threshold: float = 8.0,
        halflife: float = 24.0,
        scale_halflife: float = 144.0,
        huber: float = 3.0,
        warmup: int = 30,
    ) -> None:
        if drift < 0 or threshold <= 0:
            raise ValueError(
                f"drift must be >= 0 and threshold > 0 (in scales), got drift={drift}, threshold={threshold}"
            )
        if warmup < START:
            raise ValueError(
                f"warmup must be at least {START} (the first {START} points start the level), got {warmup}"
            )
        super().__init__()
        self.drift = drift
        self.threshold = threshold
        self.halflife = halflife
        self.scale_halflife = scale_halflife
        self.huber = huber
        self.warmup = warmup
        self._level_rate = learning_rate(halflife)
        self._scale_rate = learning_rate(scale_halflife)

    def _scale(self, ids: np.ndarray) -> np.ndarray:
        floor = scale_floor(self.arrays["level"][ids])
        return np.maximum(self.arrays["mean_abs"][ids] * MEAN_ABS_TO_SIGMA, floor)

    def _runs(
        self, ids: np.ndarray, x: np.ndarray, z: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Both CUSUMs and their runs after this point: (cusum, n, sum) up, then down."""
        clipped = np.clip(z, -self.huber, self.huber)
        out = []
        for side, sign in (("up", 1.0), ("down", -1.0)):
            before = self.arrays[side][ids]
            after = np.maximum(0.0, before + sign * clipped - self.drift)
            running = after > 0
            fresh = before == 0
            n_before = np.where(fresh, 0.0, self.arrays[f"{side}_n"][ids])
            sum_before = np.where(fresh, 0.0, self.arrays[f"{side}_sum"][ids])
            n = np.where(running, n_before + 1.0, 0.0)
            total = np.where(running, sum_before + x, 0.0)
            out += [after, n, total]
        return out[0], out[1], out[2], out[3], out[4], out[5]

    def _evidence(self, cusum: np.ndarray, n: np.ndarray) -> np.ndarray:
        # Inside a run the CUSUM is sum(z - drift), so sum(z) = cusum + drift * n.
        return np.where(n > 0, (cusum + self.drift * n) / np.sqrt(np.maximum(n, 1.0)), 0.0)

    def assess(self, ids: np.ndarray, t: np.ndarray, x: np.ndarray) -> Assessment:
        level = self.arrays["level"][ids]
        scale = self._scale(ids)
        seen = self.arrays["seen"][ids]
        warming = seen < self.warmup
        point = np.where(seen > 0, (x - level) / scale, 0.0)
        up, up_n, _, down, down_n, _ = self._runs(ids, x, point)
        run = self._evidence(up, up_n) - self._evidence(down, down_n)
        stronger = ~warming & (np.abs(run) > np.abs(point))
        return Assessment(level, scale, np.where(stronger, run, point), warming)

    def adopt(self, ids: np.ndarray, shift: np.ndarray) -> None:
        """The new level, as if a run had been adopted: both CUSUMs restart."""
        self.arrays["level"][ids] += shift
        for name in ("up", "up_n", "up_sum", "down", "down_n", "down_sum"):
            self.arrays[name][ids] = 0.0

    def learn(
        self, ids: np.ndarray, t: np.ndarray, x: np.ndarray, weight: np.ndarray, seen: Mask | None = None
    ) -> None:
        a = self.arrays
        seen = a["seen"][ids]
        old_level, mean_abs = a["level"][ids], a["mean_abs"][ids]
        scale = self._scale(ids)
        residual = x - old_level
        warming = seen < self.warmup
        learned = weight > 0

        # While warming nothing has been judged yet, so nothing is clipped.
        limit = np.where(warming, np.inf, self.huber * scale)
        clipped = np.clip(residual, -limit, limit)
        level_rate = warmup_rate(self._level_rate, seen) * weight
        scale_rate = warmup_rate(self._scale_rate, seen) * weight
        mean_abs = mean_abs + scale_rate * (np.abs(clipped) - mean_abs)
        level = old_level + level_rate * clipped

        runs = self._runs(ids, x, residual / scale)
        counting = learned & ~warming
        names = ("up", "up_n", "up_sum", "down", "down_n", "down_sum")
        state = {
            name: np.where(counting, value, np.where(learned & warming, 0.0, a[name][ids]))
            for name, value in zip(names, runs, strict=True)
        }
        up_wins = state["up"] >= state["down"]
        adopt = np.maximum(state["up"], state["down"]) > self.threshold
        run_mean = np.where(
            up_wins,
            state["up_sum"] / np.maximum(state["up_n"], 1.0),
            state["down_sum"] / np.maximum(state["down_n"], 1.0),
        )
        level = np.where(adopt, run_mean, level)
        for name in names:
            state[name] = np.where(adopt, 0.0, state[name])

        starting = learned & (seen < START)
        if np.any(starting):
            # The first point waits in ``level``, the second in ``up_sum``
            # (unused while warming); the third starts level and scale from
            # the median and MAD of the three, so a wild first value is not
            # taken as the level.
            x0 = np.where(seen == 0, x, old_level)
            x1 = np.where(seen == 1, x, a["up_sum"][ids])
            median, near, _ = median_of_three(x0, x1, x)
            done = seen == 2
            level = np.where(starting, np.where(done, median, x0), level)
            mad_as_mean_abs = near * MAD_TO_SIGMA / MEAN_ABS_TO_SIGMA
            mean_abs = np.where(starting, np.where(done, mad_as_mean_abs, 0.0), mean_abs)
            state["up_sum"] = np.where(starting & (seen == 1), x, state["up_sum"])

        a["level"][ids] = np.where(learned, level, old_level)
        a["mean_abs"][ids] = np.where(learned, mean_abs, a["mean_abs"][ids])
        for name in names:
            a[name][ids] = state[name]
        a["seen"][ids] = seen + learned

    def __repr__(self) -> str:
        return (
            f"LevelShift(drift={self.drift}, threshold={self.threshold}, halflife={self.halflife}, "
            f"scale_halflife={self.scale_halflife}, huber={self.huber}, warmup={self.warmup})"
        )

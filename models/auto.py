"""The default model: picks seasonal or flat per series, catches shifts, adopts new levels."""

from __future__ import annotations

import numpy as np

from models.base import Assessment, learning_rate
from models.ewma import RobustEWMA
from models.seasonal import SeasonalProfile


class AutoModel:
    """Runs a flat and a seasonal forecaster and uses whichever fits the series.

    Per series it keeps the recent mean absolute deviation of both forecasters
    and reports the one that has been more accurate (the seasonal one must win
    by ``seasonal_margin`` to be chosen, so noise does not make it flap).

    Its deviation also sees slow trouble a single point does not show: an
    exponentially weighted mean of recent deviations, rescaled to unit variance
    on normal data, and the larger of the two is reported.  A sustained shift
    thus scores high within a few points even when no single point is extreme.

    A level shift (``adopt_after`` points in a row beyond ``adopt_z`` on the same
    side) is taken as the new normal: both forecasters move their level to
    where the series now is.  A deploy that moves latency up 30% is flagged
    once, then stops alerting.

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
        shift_halflife: float = 12.0,
        seasonal_margin: float = 0.9,
        adopt_after: int = 12,
        adopt_z: float = 3.0,
    ) -> None:
        self.flat = flat or RobustEWMA()
        self.seasonal = seasonal or SeasonalProfile()
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
        self.own: dict[str, np.ndarray] = {
            name: np.zeros(0, dtype=dtype) for name, (dtype, _) in self._own_specs.items()
        }
        self._last_assessed: tuple[np.ndarray, np.ndarray, np.ndarray, Assessment, Assessment] | None = None

    @property
    def warmup(self) -> int:
        return self.flat.warmup

    def resize(self, n_series: int) -> None:
        self.flat.resize(n_series)
        self.seasonal.resize(n_series)
        old = len(self.own["run"])
        if n_series > old:
            capacity = self.flat.n_series
            for name, (dtype, initial) in self._own_specs.items():
                grown = np.full(capacity, initial, dtype=dtype)
                grown[:old] = self.own[name][:old]
                self.own[name] = grown

    def reset(self, ids: np.ndarray) -> None:
        self._last_assessed = None
        self.flat.reset(ids)
        self.seasonal.reset(ids)
        for name, (_, initial) in self._own_specs.items():
            self.own[name][ids] = initial

    def _uses_seasonal(self, ids: np.ndarray) -> np.ndarray:
        return self.own["error_seasonal"][ids] < self.seasonal_margin * self.own["error_flat"][ids]

    def assess(self, ids: np.ndarray, t: np.ndarray, x: np.ndarray) -> Assessment:
        flat = self.flat.assess(ids, t, x)
        seasonal = self.seasonal.assess(ids, t, x)
        self._last_assessed = (ids, t, x, flat, seasonal)
        pick = self._uses_seasonal(ids)
        expected = np.where(pick, seasonal.expected, flat.expected)
        scale = np.where(pick, seasonal.scale, flat.scale)
        point = np.where(pick, seasonal.deviation, flat.deviation)
        shift = self._next_mean_deviation(ids, point) / self._shift_norm
        deviation = np.where(np.abs(shift) > np.abs(point), shift, point)
        return Assessment(expected, scale, deviation, flat.warming)

    def _next_mean_deviation(self, ids: np.ndarray, point: np.ndarray) -> np.ndarray:
        mean = self.own["mean_deviation"][ids]
        return mean + self._shift_rate * (np.clip(point, -3.0, 3.0) - mean)

    def _forecasts(self, ids: np.ndarray, t: np.ndarray, x: np.ndarray) -> tuple[Assessment, Assessment]:
        """Both forecasters' view of a batch about to be learned.

        The engine learns each batch right after assessing it, with the same
        arrays and no learning in between, so :meth:`assess`'s forecasts are
        reused rather than computed twice.
        """
        last, self._last_assessed = self._last_assessed, None
        if last is not None and last[0] is ids and last[1] is t and last[2] is x:
            return last[3], last[4]
        return self.flat.assess(ids, t, x), self.seasonal.assess(ids, t, x)

    def learn(self, ids: np.ndarray, t: np.ndarray, x: np.ndarray, weight: np.ndarray) -> None:
        flat, seasonal = self._forecasts(ids, t, x)
        pick = self._uses_seasonal(ids)
        point = np.where(pick, seasonal.deviation, flat.deviation)
        # A point with no weight (a gap, a silenced point) teaches nothing, not even errors.
        warm = ~flat.warming & (weight > 0)
        mean_deviation = self.own["mean_deviation"][ids]
        self.own["mean_deviation"][ids] = np.where(
            warm, self._next_mean_deviation(ids, point), np.where(weight > 0, 0.0, mean_deviation)
        )
        for name, assessment in (("error_flat", flat), ("error_seasonal", seasonal)):
            error = np.abs(x - assessment.expected)
            old = self.own[name][ids]
            learned = np.where(flat.warming, error, old + self._error_rate * (error - old))
            self.own[name][ids] = np.where(weight > 0, learned, old)
        residual = x - np.where(pick, seasonal.expected, flat.expected)
        self._adopt_shifts(ids, residual, point, warm)
        self.flat.learn(ids, t, x, weight)
        self.seasonal.learn(ids, t, x, weight)

    def _adopt_shifts(
        self, ids: np.ndarray, residual: np.ndarray, point: np.ndarray, warm: np.ndarray
    ) -> None:
        run = self.own["run"][ids]
        beyond = warm & (np.abs(point) > self.adopt_z)
        direction = np.sign(point)
        same_side = np.sign(run) == direction
        run = np.where(beyond, np.where(same_side, run + direction, direction), 0).astype(np.int32)
        idle = ~warm
        run = np.where(idle, self.own["run"][ids], run)
        run_sum = np.where(beyond & same_side, self.own["run_sum"][ids] + residual, residual)
        run_sum = np.where(beyond, run_sum, np.where(idle, self.own["run_sum"][ids], 0.0))
        adopt = np.abs(run) >= self.adopt_after
        if np.any(adopt):
            chosen = ids[adopt]
            offset = run_sum[adopt] / np.abs(run[adopt])
            self.flat.arrays["level"][chosen] += offset
            self.seasonal.arrays["level"][chosen] += offset
            run[adopt] = 0
            run_sum[adopt] = 0.0
            self.own["mean_deviation"][chosen] = 0.0
        self.own["run"][ids] = run
        self.own["run_sum"][ids] = run_sum

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {f"flat.{k}": v for k, v in self.flat.state_dict().items()}
        state.update({f"seasonal.{k}": v for k, v in self.seasonal.state_dict().items()})
        state.update({k: v.copy() for k, v in self.own.items()})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self._last_assessed = None
        self.flat.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("flat.")})
        self.seasonal.load_state_dict({k[9:]: v for k, v in state.items() if k.startswith("seasonal.")})
        for name, (dtype, _) in self._own_specs.items():
            self.own[name] = np.asarray(state[name], dtype=dtype).copy()

    def nbytes_per_series(self) -> int:
        own = sum(np.dtype(dtype).itemsize for dtype, _ in self._own_specs.values())
        return self.flat.nbytes_per_series() + self.seasonal.nbytes_per_series() + own

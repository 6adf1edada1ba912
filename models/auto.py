"""The default model: picks seasonal or flat per series, catches shifts, adopts new levels."""

from __future__ import annotations

import numpy as np
from numba import njit

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
    with a positive learning weight) is taken as the new normal: both
    forecasters move their level to where the series now is.  This is the
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

    def assess(self, ids: np.ndarray, t: np.ndarray, x: np.ndarray) -> Assessment:
        flat = self.flat.assess(ids, t, x)
        seasonal = self.seasonal.assess(ids, t, x)
        self._last_assessed = (ids, t, x, flat, seasonal)
        expected, scale, deviation = _combine_kernel(
            self.own["error_flat"],
            self.own["error_seasonal"],
            self.own["mean_deviation"],
            np.asarray(ids, dtype=np.int64),
            flat.expected,
            flat.scale,
            flat.deviation,
            seasonal.expected,
            seasonal.scale,
            seasonal.deviation,
            self._settings(),
        )
        return Assessment(expected, scale, deviation, flat.warming)

    def _settings(self) -> tuple[float, float, float, float, float, float]:
        return (
            self.seasonal_margin,
            self._shift_rate,
            self.shift_weight / self._shift_norm,
            self._error_rate,
            self.adopt_z,
            float(self.adopt_after),
        )

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

    def adopt(self, ids: np.ndarray, shift: np.ndarray) -> None:
        self._last_assessed = None
        self.flat.adopt(ids, shift)
        self.seasonal.adopt(ids, shift)
        for name in ("mean_deviation", "run", "run_sum"):
            self.own[name][ids] = 0

    def learn(self, ids: np.ndarray, t: np.ndarray, x: np.ndarray, weight: np.ndarray) -> None:
        flat, seasonal = self._forecasts(ids, t, x)
        _learn_kernel(
            *(
                self.own[name]
                for name in ("error_flat", "error_seasonal", "mean_deviation", "run", "run_sum")
            ),
            self.flat.arrays["level"],
            self.seasonal.arrays["level"],
            np.asarray(ids, dtype=np.int64),
            np.asarray(x, dtype=np.float64),
            np.asarray(weight, dtype=np.float64),
            flat.expected,
            flat.deviation,
            flat.warming,
            seasonal.expected,
            seasonal.deviation,
            self._settings(),
        )
        self.flat.learn(ids, t, x, weight)
        self.seasonal.learn(ids, t, x, weight)

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


@njit(cache=True)
def _next_mean_deviation(mean: float, point: float, rate: float) -> float:
    return mean + rate * (min(max(point, -3.0), 3.0) - mean)


@njit(cache=True)
def _combine_kernel(  # type: ignore[no-untyped-def]
    error_flat,
    error_seasonal,
    mean_deviation,
    ids,
    flat_expected,
    flat_scale,
    flat_deviation,
    seasonal_expected,
    seasonal_scale,
    seasonal_deviation,
    settings,
):
    """The chosen forecaster's view of each point, and the larger of its point and shift deviations."""
    margin, shift_rate, shift_factor = settings[0], settings[1], settings[2]
    n = len(ids)
    expected, scale, deviation = np.empty(n), np.empty(n), np.empty(n)
    for i in range(n):
        row = ids[i]
        seasonal = error_seasonal[row] < margin * error_flat[row]
        expected[i] = seasonal_expected[i] if seasonal else flat_expected[i]
        scale[i] = seasonal_scale[i] if seasonal else flat_scale[i]
        point = seasonal_deviation[i] if seasonal else flat_deviation[i]
        shift = shift_factor * _next_mean_deviation(mean_deviation[row], point, shift_rate)
        deviation[i] = shift if abs(shift) > abs(point) else point
    return expected, scale, deviation


@njit(cache=True)
def _learn_kernel(  # type: ignore[no-untyped-def]
    error_flat,
    error_seasonal,
    mean_deviation,
    run,
    run_sum,
    flat_level,
    seasonal_level,
    ids,
    x,
    weight,
    flat_expected,
    flat_deviation,
    flat_warming,
    seasonal_expected,
    seasonal_deviation,
    settings,
):
    """Forecaster errors, the shift statistic, and level adoption after a sustained shift."""
    margin, shift_rate, _, error_rate, adopt_z, adopt_after = settings
    for i in range(len(ids)):
        row, w = ids[i], weight[i]
        seasonal = error_seasonal[row] < margin * error_flat[row]
        point = seasonal_deviation[i] if seasonal else flat_deviation[i]
        # A point with no weight (a gap, a silenced point) teaches nothing, not even errors.
        warm = not flat_warming[i] and w > 0
        if warm:
            mean_deviation[row] = _next_mean_deviation(mean_deviation[row], point, shift_rate)
        elif w > 0:
            mean_deviation[row] = 0.0
        if w > 0:
            for errors, forecast in ((error_flat, flat_expected[i]), (error_seasonal, seasonal_expected[i])):
                error = abs(x[i] - forecast)
                errors[row] = error if flat_warming[i] else errors[row] + error_rate * (error - errors[row])
        if not warm:
            continue
        residual = x[i] - (seasonal_expected[i] if seasonal else flat_expected[i])
        side = np.sign(point)
        if abs(point) > adopt_z:
            if np.sign(run[row]) == side:
                run[row] += np.int32(side)
                run_sum[row] += residual
            else:
                run[row], run_sum[row] = np.int32(side), residual
        else:
            run[row], run_sum[row] = 0, 0.0
        if abs(run[row]) >= adopt_after:
            offset = run_sum[row] / abs(run[row])
            flat_level[row] += offset
            seasonal_level[row] += offset
            run[row], run_sum[row], mean_deviation[row] = 0, 0.0, 0.0

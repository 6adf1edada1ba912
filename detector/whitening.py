"""Take the autocorrelation out of a model's deviations before they are calibrated.

Production metrics wander: p99 latency, CPU and memory stay above their
expected value for minutes, then below.  A model that forecasts the level but
not the wander leaves deviations that are correlated from one sample to the
next, and correlated deviations make poor evidence: one slow excursion looks
like several unusual points in a row, and the alert policy has to learn to
discount it from the few excursions a series shows in a week.

So the engine forecasts the deviation itself with a robust AR(1) filter (in
the spirit of Martin and Thomson's robust filters): the next deviation is
expected to be ``rho`` times the filter's *cleaned* last deviation, and what
is calibrated and judged is the innovation, ``z - rho * cleaned``.  The
cleaned deviation follows the data but each step is clipped to
:data:`CLIP` innovation scales, so one spike moves it a little and a sustained
shift only gradually: after a spike the next ordinary point is not a false
"drop", and a shift that persists keeps being unusual.  ``rho`` is the
decayed lag-1 correlation of the cleaned deviations (clipped to ``[0,
MAX_RHO]``, so independent data keeps ``rho`` near 0 and is left alone), and
is learned only from points the engine learns from.

The expected value shown with the band moves with the forecast: it is the
model's expected value plus ``rho * cleaned`` deviations.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numba import njit

from models.base import ArrayState, FieldSpecs

#: Innovation scales at which one step of the cleaned deviation is clipped.
CLIP = 3.0
#: The largest autocorrelation the filter uses.
MAX_RHO = 0.95
#: Points over which rho and the innovation scale are averaged (decayed).
MEMORY = 2000.0
#: Points a series needs before rho is used.
WARMUP = 50


class ResidualWhitener(ArrayState):
    """Per-series robust AR(1) filter on model deviations.

    Examples
    --------
    Deviations that wander (AR(1), phi = 0.9) come out close to independent:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> whitener = ResidualWhitener()
    >>> whitener.resize(1)
    >>> ids, z, out = np.array([0]), 0.0, []
    >>> for _ in range(5000):
    ...     z = 0.9 * z + rng.normal()
    ...     innovation, _ = whitener.whiten(ids, np.array([z]))
    ...     whitener.learn(ids, np.array([z]), np.ones(1))
    ...     out.append(innovation[0])
    >>> round(float(whitener.rho(ids)[0]), 1)
    0.9
    >>> bool(abs(np.corrcoef(out[1000:-1], out[1001:])[0, 1]) < 0.05)
    True
    """

    fields: ClassVar[FieldSpecs] = {
        "cleaned": (np.float64, (), 0.0),
        "lag_product": (np.float64, (), 0.0),
        "lag_square": (np.float64, (), 0.0),
        "innovation_scale": (np.float64, (), 0.0),
        "seen": (np.float64, (), 0.0),
    }

    def rho(self, ids: np.ndarray) -> np.ndarray:
        """Each series' lag-1 autocorrelation as the filter uses it (0 while warming up)."""
        return _rho(self.arrays["lag_product"][ids], self.arrays["lag_square"][ids], self.arrays["seen"][ids])

    def whiten(self, ids: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The innovation of each deviation, and the forecast deviation it was measured from."""
        forecast = self.rho(ids) * self.arrays["cleaned"][ids]
        return z - forecast, forecast

    def learn(self, ids: np.ndarray, z: np.ndarray, weight: np.ndarray) -> None:
        """Move each series' filter on by its deviation; ``weight`` (0..1) scales what rho learns.

        Every finite deviation moves the cleaned state (it is the filter, not
        a belief about normal behaviour); NaN deviations leave it alone.
        """
        _learn_kernel(
            *(self.arrays[name] for name in self.fields),
            np.asarray(ids, dtype=np.int64),
            np.asarray(z, dtype=np.float64),
            np.asarray(weight, dtype=np.float64),
        )


@njit(cache=True)
def _rho(lag_product, lag_square, seen):  # type: ignore[no-untyped-def]
    out = np.zeros(len(seen))
    for i in range(len(seen)):
        if seen[i] >= WARMUP and lag_square[i] > 0:
            out[i] = min(max(lag_product[i] / lag_square[i], 0.0), MAX_RHO)
    return out


@njit(cache=True)
def _learn_kernel(cleaned, lag_product, lag_square, innovation_scale, seen, ids, z, weight):  # type: ignore[no-untyped-def]
    keep = 1.0 - 1.0 / MEMORY
    for i in range(len(ids)):
        row, deviation = ids[i], z[i]
        if not np.isfinite(deviation):
            continue
        rho = _rho(lag_product[row : row + 1], lag_square[row : row + 1], seen[row : row + 1])[0]
        forecast = rho * cleaned[row]
        innovation = deviation - forecast
        scale = innovation_scale[row]
        limit = CLIP * scale if scale > 0 else abs(innovation)
        step = min(max(innovation, -limit), limit)
        now_clean = forecast + step
        w = weight[i]
        if w > 0:
            rate = max(1.0 - keep, 1.0 / (seen[row] + 1.0)) * w
            lag_product[row] += rate * (cleaned[row] * now_clean - lag_product[row])
            lag_square[row] += rate * (cleaned[row] * cleaned[row] - lag_square[row])
            innovation_scale[row] += rate * (abs(innovation) - scale) if scale > 0 else abs(innovation)
            seen[row] += w
        cleaned[row] = now_clean

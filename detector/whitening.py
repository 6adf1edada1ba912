"""Take the autocorrelation out of a model's deviations before they are calibrated.

Production metrics wander: p99 latency, CPU and memory stay above their
expected value for minutes, then below.  A model that forecasts the level but
not the wander leaves deviations that are correlated from one sample to the
next, and correlated deviations make poor evidence: one slow excursion looks
like several unusual points in a row, and the alert policy has to learn to
discount it from the few excursions a series shows in a week.

So the engine forecasts the deviation itself with a robust AR(2) filter (in
the spirit of Martin and Thomson's robust filters): the next deviation is
expected to be a linear combination of the filter's *cleaned* last two
deviations, and what is calibrated and judged is the innovation, the
deviation minus that forecast.  The
cleaned deviation follows the data but each step is clipped to
:data:`CLIP` innovation scales, so one spike moves it a little and a sustained
shift only gradually: after a spike the next ordinary point is not a false
"drop", and a shift that persists keeps being unusual.  While an alert is
open the cleaned deviation does not follow the data at all (``follow`` 0):
it decays to 0 and the forecast with it, so an outage is judged against the
series' behaviour from before it, however long it lasts, and so is the first
normal point after it.  (Freezing it already while an alert builds up
was measured to raise false alerts on the fleet benchmark from 0.19 to 0.27
per series-day: ordinary wander then looks like a shift.)  The coefficients
regress each deviation on the cleaned ones before it (decayed moments, the
Yule-Walker equations), restricted to a stationary filter whose persistence
stays below :data:`MAX_RHO` (else lag 1 alone, else none): independent data
gets coefficients near 0 and is left alone.  They are learned only from
points the engine learns from.  (AR(2) rather than AR(1): a model that
follows the level leaves deviations that overshoot and come back, which one
lag cannot describe.)

The expected value shown with the band moves with the forecast: it is the
model's expected value plus the forecast deviation.
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
    """Per-series robust AR(2) filter on model deviations.

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
    >>> (whitener.coefficients(ids)[0].round(1) + 0.0).tolist()
    [0.9, 0.0]
    >>> bool(abs(np.corrcoef(out[1000:-1], out[1001:])[0, 1]) < 0.05)
    True
    """

    fields: ClassVar[FieldSpecs] = {
        # The cleaned deviations one and two points back.
        "cleaned": (np.float64, (2,), 0.0),
        # Decayed moments: E[c1 c1], E[c1 c2], E[c2 c2], E[z c1], E[z c2].
        "moments": (np.float64, (5,), 0.0),
        "innovation_scale": (np.float64, (), 0.0),
        "seen": (np.float64, (), 0.0),
    }

    def coefficients(self, ids: np.ndarray) -> np.ndarray:
        """Each series' AR coefficients (lag 1, lag 2) as the filter uses them (0 while warming up)."""
        ids = np.asarray(ids, dtype=np.int64)
        return _coefficients(self.arrays["moments"], self.arrays["seen"], ids)

    def whiten(self, ids: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The innovation of each deviation, and the forecast deviation it was measured from."""
        ids = np.asarray(ids, dtype=np.int64)
        forecast = np.sum(self.coefficients(ids) * self.arrays["cleaned"][ids], axis=1)
        return z - forecast, forecast

    def learn(
        self, ids: np.ndarray, z: np.ndarray, weight: np.ndarray, follow: np.ndarray | None = None
    ) -> None:
        """Move each series' filter on by its deviation; ``weight`` (0..1) scales what it learns.

        Every finite deviation moves the cleaned state (it is the filter, not
        a belief about normal behaviour) by at most ``follow`` (0..1, default
        1) times :data:`CLIP` innovation scales: 0 while an alert is open, so
        the forecast does not drift towards the anomaly.  NaN
        deviations leave it alone.
        """
        ids = np.asarray(ids, dtype=np.int64)
        _learn_kernel(
            *(self.arrays[name] for name in self.fields),
            ids,
            np.asarray(z, dtype=np.float64),
            np.asarray(weight, dtype=np.float64),
            np.ones(len(ids)) if follow is None else np.asarray(follow, dtype=np.float64),
        )

    def forget_deviations(self, ids: np.ndarray) -> None:
        """Clear the cleaned deviations of these series (their baseline moved: a new normal)."""
        self.arrays["cleaned"][np.asarray(ids, dtype=np.int64)] = 0.0


@njit(cache=True)
def _solve(moments: np.ndarray) -> tuple[float, float]:
    """AR(2) coefficients from the moments, falling back to AR(1), then to none, when unstable."""
    m11, m12, m22, g1, g2 = moments[0], moments[1], moments[2], moments[3], moments[4]
    if not m11 > 0:
        return 0.0, 0.0
    det = m11 * m22 - m12 * m12
    if det > 1e-6 * m11 * m22:
        a1 = (g1 * m22 - g2 * m12) / det
        a2 = (g2 * m11 - g1 * m12) / det
        # Stationary, and no more persistent than MAX_RHO allows.
        if abs(a2) < MAX_RHO and a1 + a2 < MAX_RHO and a2 - a1 < 1.0 and a1 + a2 > 0:
            return a1, a2
    return min(max(g1 / m11, 0.0), MAX_RHO), 0.0


@njit(cache=True)
def _coefficients(moments, seen, ids):  # type: ignore[no-untyped-def]
    out = np.zeros((len(ids), 2))
    for i in range(len(ids)):
        if seen[ids[i]] >= WARMUP:
            out[i, 0], out[i, 1] = _solve(moments[ids[i]])
    return out


@njit(cache=True)
def _learn_kernel(cleaned, moments, innovation_scale, seen, ids, z, weight, follow):  # type: ignore[no-untyped-def]
    keep = 1.0 - 1.0 / MEMORY
    for i in range(len(ids)):
        row, deviation = ids[i], z[i]
        if not np.isfinite(deviation):
            continue
        a1, a2 = _solve(moments[row]) if seen[row] >= WARMUP else (0.0, 0.0)
        c1, c2 = cleaned[row, 0], cleaned[row, 1]
        forecast = a1 * c1 + a2 * c2
        innovation = deviation - forecast
        scale = innovation_scale[row]
        limit = (CLIP * scale if scale > 0 else abs(innovation)) * follow[i]
        w = weight[i]
        if w > 0:
            rate = max(1.0 - keep, 1.0 / (seen[row] + 1.0)) * w
            for k, value in enumerate((c1 * c1, c1 * c2, c2 * c2, deviation * c1, deviation * c2)):
                moments[row, k] += rate * (value - moments[row, k])
            innovation_scale[row] += rate * (abs(innovation) - scale) if scale > 0 else abs(innovation)
            seen[row] += w
        cleaned[row, 1] = c1
        cleaned[row, 0] = forecast + min(max(innovation, -limit), limit)

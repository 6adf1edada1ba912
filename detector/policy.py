"""The default alert decision: a budget of false alerts, persistence, cool-down.

A calibrated score makes an alert budget mean something.  If an SRE accepts
about ``false_alerts_per_week`` false alerts per series, and an alert needs
``min_anomalous`` anomalous points among the last ``window``, then on normal
data (independent p-values) an alert opens at a given point with probability
about ``C(window, min_anomalous) * alpha ** min_anomalous``.  Setting that equal
to the budget per point (from the series' own sampling interval) gives the
per-point threshold ``alpha``.  Real residuals are a little autocorrelated, so
the budget is a target, not a guarantee; the backtest reports what it was.

An alert resolves after ``resolve_after`` consecutive points that are clearly
normal (p above ``10 * alpha``: hysteresis, so it does not flap), and a new one
cannot open for ``cooldown`` seconds after, so one incident is one alert.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import ClassVar

import numpy as np

from models.base import ArrayState, FieldSpecs

SECONDS_PER_WEEK = 7 * 24 * 3600.0
#: Before a series' sampling interval is known, assume Prometheus's default.
DEFAULT_INTERVAL = 60.0


@dataclass(frozen=True)
class AlertDecision:
    """The policy's verdict on a batch: firing now, and which points opened an alert."""

    firing: np.ndarray
    onset: np.ndarray
    alpha: np.ndarray


class AlertPolicy(ArrayState):
    """Per-series alert state, updated for a whole batch at once.

    Parameters
    ----------
    false_alerts_per_week
        The budget: about this many alerts per series per week on normal data.
    min_anomalous, window
        Persistence: an alert needs ``min_anomalous`` anomalous points among
        the last ``window`` (so a single noisy point never pages).
    resolve_after
        Consecutive clearly-normal points that resolve a firing alert.
    cooldown
        Seconds after a resolution during which no new alert opens.

    Examples
    --------
    >>> import numpy as np
    >>> policy = AlertPolicy(false_alerts_per_week=1, min_anomalous=2, window=3)
    >>> policy.resize(1)
    >>> ids = np.array([0])
    >>> fired = []
    >>> for step, p in enumerate([0.5, 1e-6, 0.5, 1e-6, 1e-6, 0.5, 0.5, 0.5, 0.5]):
    ...     decision = policy.decide(ids, np.array([60.0 * step]), np.array([p]))
    ...     fired.append(int(decision.firing[0]))
    >>> fired
    [0, 0, 0, 1, 1, 1, 1, 0, 0]
    """

    fields: ClassVar[FieldSpecs] = {
        "recent": (np.uint32, (), 0),
        "firing": (np.bool_, (), False),
        "quiet_run": (np.int32, (), 0),
        "cooldown_until": (np.float64, (), -np.inf),
        "interval": (np.float64, (), 0.0),
        "last_t": (np.float64, (), np.nan),
    }

    def __init__(
        self,
        false_alerts_per_week: float = 1.0,
        min_anomalous: int = 2,
        window: int = 3,
        resolve_after: int = 3,
        cooldown: float = 1800.0,
    ) -> None:
        if not 1 <= min_anomalous <= window <= 32:
            raise ValueError(
                f"persistence needs 1 <= min_anomalous <= window <= 32, got {min_anomalous} of {window}"
            )
        if false_alerts_per_week <= 0:
            raise ValueError(
                f"false_alerts_per_week must be positive, got {false_alerts_per_week}; "
                "to silence a series use a silence, not a zero budget"
            )
        super().__init__()
        self.false_alerts_per_week = false_alerts_per_week
        self.min_anomalous = min_anomalous
        self.window = window
        self.resolve_after = resolve_after
        self.cooldown = cooldown

    def alpha(self, ids: np.ndarray) -> np.ndarray:
        """Per-point p-value below which a point counts as anomalous."""
        interval = self.arrays["interval"][ids]
        interval = np.where(interval > 0, interval, DEFAULT_INTERVAL)
        per_point = self.false_alerts_per_week * interval / SECONDS_PER_WEEK
        ways = comb(self.window, self.min_anomalous)
        alpha = (per_point / ways) ** (1.0 / self.min_anomalous)
        return np.clip(alpha, 1e-7, 0.05)

    def quiet(self, ids: np.ndarray) -> None:
        """Clear alert state but keep what was learned (the sampling interval)."""
        for name in ("recent", "firing", "quiet_run", "cooldown_until"):
            self.arrays[name][ids] = self.fields[name][2]

    def _track_interval(self, ids: np.ndarray, t: np.ndarray) -> None:
        gap = t - self.arrays["last_t"][ids]
        interval = self.arrays["interval"][ids]
        usable = np.isfinite(gap) & (gap > 0)
        # A slow EWMA of positive gaps: robust to one missed scrape or a repeat.
        updated = np.where(interval > 0, 0.95 * interval + 0.05 * gap, gap)
        self.arrays["interval"][ids] = np.where(usable, updated, interval)
        self.arrays["last_t"][ids] = np.where(np.isfinite(t), t, self.arrays["last_t"][ids])

    def decide(self, ids: np.ndarray, t: np.ndarray, p: np.ndarray) -> AlertDecision:
        """Update alert state with each point's p-value (NaN: no data, no change)."""
        self._track_interval(ids, t)
        alpha = self.alpha(ids)
        known = np.isfinite(p)
        anomalous = known & (p <= alpha)
        mask = np.uint32((1 << self.window) - 1)
        recent = self.arrays["recent"][ids]
        recent = np.where(known, ((recent << np.uint32(1)) | anomalous.astype(np.uint32)) & mask, recent)
        count = np.bitwise_count(recent)
        firing = self.arrays["firing"][ids]
        calm = known & (p > np.minimum(10.0 * alpha, 0.5))
        quiet_run = np.where(
            calm, self.arrays["quiet_run"][ids] + 1, np.where(known, 0, self.arrays["quiet_run"][ids])
        )
        resolves = firing & (quiet_run >= self.resolve_after)
        cooldown_until = np.where(resolves, t + self.cooldown, self.arrays["cooldown_until"][ids])
        onset = ~firing & anomalous & (count >= self.min_anomalous) & (t >= cooldown_until)
        firing = (firing & ~resolves) | onset
        self.arrays["recent"][ids] = recent
        self.arrays["firing"][ids] = firing
        self.arrays["quiet_run"][ids] = np.where(onset, 0, quiet_run)
        self.arrays["cooldown_until"][ids] = cooldown_until
        return AlertDecision(firing=firing, onset=onset, alpha=alpha)

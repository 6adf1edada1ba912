"""The default alert decision: a budget of false alerts, persistence, cool-down.

A calibrated score makes an alert budget mean something.  If an SRE accepts
about ``false_alerts_per_week`` false alerts per series, and an alert needs
``min_anomalous`` (k) anomalous points among the last ``window`` (w), then on
normal data (independent p-values) an alert opens at a given point with
probability about ``C(w - 1, k - 1) * alpha ** k`` (the point itself and k - 1
of the w - 1 before it).  The threshold ``alpha`` is set from
``C(w, k) * alpha ** k`` = the budget per point (from the series' own sampling
interval): a little stricter, on purpose, because real residuals are
autocorrelated, so anomalous points come in pairs more often than independence
says.  The budget is a target, not a guarantee; the backtest reports what it
was (on ``replay_data/``, about twice the budget: clustering outweighs the
margin).

A point is anomalous only if its p-value is at most ``alpha`` *and* its
deviation goes the watched ``direction`` *and* it is large enough to matter
(``min_deviation`` in the series' units, ``min_relative_deviation`` as a
fraction of the expected value): on a flat series a wiggle of 0.1% can be very
improbable and still not worth a page.

Feedback makes the budget per series and per direction: each false positive
halves the series' budget in that direction (down to 1/64 of the configured
one), so that series needs a rarer deviation that way before it alerts again;
a confirmed incident doubles it back (up to the configured budget).  The
scales live in the policy's state arrays (``budget_scale``, columns high and
low), so they are checkpointed with the engine and can be shown by the API.

An alert resolves after ``resolve_after`` consecutive points that are clearly
normal (p above ``10 * alpha``, or a deviation that does not count: hysteresis,
so it does not flap), and a new one cannot open for ``cooldown`` seconds after,
so one incident is one alert.  While an alert fires the policy keeps when it
opened (``since``), its most extreme p-value (``lowest_p``) and that point's
side (``alert_sign``): what an explanation needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import ClassVar

import numpy as np
from numba import njit

from detector.calibration import Direction
from models.base import ArrayState, FieldSpecs

SECONDS_PER_WEEK = 7 * 24 * 3600.0
#: Before a series' sampling interval is known, assume Prometheus's default.
DEFAULT_INTERVAL = 60.0
#: Columns of ``budget_scale`` and of :attr:`AlertDecision.alpha`.
HIGH, LOW = 0, 1
#: The smallest share of the configured budget feedback can leave a series (six false positives).
MIN_BUDGET_SCALE = 1.0 / 64.0
_ALERT_STATE = ("recent", "firing", "quiet_run", "cooldown_until", "since", "lowest_p", "alert_sign")


@dataclass(frozen=True)
class AlertDecision:
    """The policy's verdict on a batch.

    ``firing`` and ``onset`` (the point that opened an alert) are per point;
    ``since``, ``lowest_p`` and ``alert_sign`` describe each firing series'
    alert (NaN, NaN, 0 when not firing); ``alpha`` holds each point's
    thresholds for high and low deviations (columns :data:`HIGH`, :data:`LOW`).
    """

    firing: np.ndarray
    onset: np.ndarray
    since: np.ndarray
    lowest_p: np.ndarray
    alert_sign: np.ndarray
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
    direction
        Which deviations may alert: ``"both"``, ``"high"`` (above the expected
        value) or ``"low"``.
    min_deviation
        Smallest ``|observed - expected|``, in the series' units, that may alert.
    min_relative_deviation
        Smallest ``|observed - expected| / |expected|`` that may alert.

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

    Only rising deviations of at least 5 units count for this one:

    >>> policy = AlertPolicy(min_anomalous=1, window=1, direction="high", min_deviation=5.0)
    >>> policy.resize(3)
    >>> decision = policy.decide(
    ...     np.arange(3), np.zeros(3), p=np.full(3, 1e-9), sign=np.array([1, -1, 1]),
    ...     observed=np.array([110.0, 90.0, 101.0]), expected=np.full(3, 100.0))
    >>> decision.firing.tolist(), decision.since.tolist()
    ([True, False, False], [0.0, nan, nan])

    Each false positive halves a series' budget in that direction:

    >>> policy.scale_budget(np.array([0]), "high", 0.5)
    >>> policy.arrays["budget_scale"][0].tolist()
    [0.5, 1.0]
    """

    fields: ClassVar[FieldSpecs] = {
        "recent": (np.uint32, (), 0),
        "firing": (np.bool_, (), False),
        "quiet_run": (np.int32, (), 0),
        "cooldown_until": (np.float64, (), -np.inf),
        "since": (np.float64, (), np.nan),
        "lowest_p": (np.float64, (), np.nan),
        "alert_sign": (np.int8, (), 0),
        "budget_scale": (np.float64, (2,), 1.0),
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
        direction: Direction = "both",
        min_deviation: float = 0.0,
        min_relative_deviation: float = 0.0,
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
        if direction not in ("both", "high", "low"):
            raise ValueError(f"direction must be 'both', 'high' or 'low', got {direction!r}")
        if min_deviation < 0 or min_relative_deviation < 0:
            raise ValueError(
                f"min_deviation and min_relative_deviation must not be negative, "
                f"got {min_deviation} and {min_relative_deviation}"
            )
        super().__init__()
        self.false_alerts_per_week = false_alerts_per_week
        self.min_anomalous = min_anomalous
        self.window = window
        self.resolve_after = resolve_after
        self.cooldown = cooldown
        self.direction: Direction = direction
        self.min_deviation = min_deviation
        self.min_relative_deviation = min_relative_deviation

    def alpha(self, ids: np.ndarray) -> np.ndarray:
        """Per-point p-value thresholds, shape ``(len(ids), 2)``: for high and for low deviations."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), 2))
        for side in (HIGH, LOW):
            out[:, side] = _thresholds(
                self.arrays["interval"], self.arrays["budget_scale"], ids, side, *self._budget_terms()
            )
        return out

    def _budget_terms(self) -> tuple[float, int]:
        """Budget per second shared over the C(w, k) ways k of w points line up (see the module), and k."""
        ways = comb(self.window, self.min_anomalous)
        return self.false_alerts_per_week / SECONDS_PER_WEEK / ways, self.min_anomalous

    def scale_budget(self, ids: np.ndarray, direction: Direction, factor: float) -> None:
        """Multiply these series' budget in ``direction`` by ``factor`` (kept in [1/64, 1]).

        Feedback: ``0.5`` after a false positive, ``2.0`` after a confirmed incident.
        """
        columns = {"both": slice(None), "high": slice(HIGH, HIGH + 1), "low": slice(LOW, LOW + 1)}[direction]
        rows = np.asarray(ids, dtype=np.int64)
        scale = self.arrays["budget_scale"]
        scale[rows, columns] = np.clip(scale[rows, columns] * factor, MIN_BUDGET_SCALE, 1.0)

    def quiet(self, ids: np.ndarray) -> None:
        """Clear alert state but keep what was learned (sampling interval, feedback)."""
        for name in _ALERT_STATE:
            self.arrays[name][ids] = self.fields[name][2]

    def decide(
        self,
        ids: np.ndarray,
        t: np.ndarray,
        p: np.ndarray,
        sign: np.ndarray | None = None,
        observed: np.ndarray | None = None,
        expected: np.ndarray | None = None,
    ) -> AlertDecision:
        """Update alert state with each point's p-value (NaN: no decision, no change).

        ``sign`` is the side of each deviation (positive: above the expected
        value; if omitted every point counts as high); ``observed`` and
        ``expected`` are needed only for the minimum deviation.
        """
        n = len(ids)
        sign = np.ones(n) if sign is None else np.nan_to_num(np.asarray(sign, dtype=np.float64))
        sized = observed is not None and expected is not None
        size_args = (observed, expected) if sized else (np.zeros(n), np.zeros(n))
        watched = {"both": 0, "high": 1, "low": -1}[self.direction]
        settings = (
            watched,
            self.min_deviation,
            self.min_relative_deviation,
            self.window,
            self.resolve_after,
            self.cooldown,
        )
        thresholds = np.empty((n, 2))
        firing, onset, since, lowest_p, alert_sign = _decide_kernel(
            *(self.arrays[name] for name in _KERNEL_STATE),
            np.asarray(ids, dtype=np.int64),
            *(np.asarray(a, dtype=np.float64) for a in (t, p, sign, *size_args)),
            sized,
            settings,
            self._budget_terms(),
            thresholds,
        )
        return AlertDecision(
            firing=firing,
            onset=onset,
            since=since,
            lowest_p=lowest_p,
            alert_sign=alert_sign,
            alpha=thresholds,
        )


_KERNEL_STATE = (*_ALERT_STATE, "budget_scale", "interval", "last_t")


@njit(cache=True)
def _threshold(interval: float, scale: float, budget_per_second: float, k: int) -> float:
    """The per-point p threshold that spends the budget over this series' sampling interval."""
    seconds = interval if interval > 0 else DEFAULT_INTERVAL
    return min(max((budget_per_second * seconds * scale) ** (1.0 / k), 1e-7), 0.05)


@njit(cache=True)
def _thresholds(interval, budget_scale, ids, side, budget_per_second, k):  # type: ignore[no-untyped-def]
    out = np.empty(len(ids))
    for i in range(len(ids)):
        out[i] = _threshold(interval[ids[i]], budget_scale[ids[i], side], budget_per_second, k)
    return out


@njit(cache=True)
def _popcount(bits: np.uint32) -> int:
    count = 0
    while bits:
        bits &= bits - np.uint32(1)
        count += 1
    return count


@njit(cache=True)
def _decide_kernel(  # type: ignore[no-untyped-def]
    recent,
    firing_state,
    quiet_run,
    cooldown_until,
    since_state,
    lowest_state,
    sign_state,
    budget_scale,
    interval,
    last_t,
    ids,
    t,
    p,
    sign,
    observed,
    expected,
    sized,
    settings,
    budget,
    thresholds,
):
    """One point per series: track its sampling interval, then update its alert state.

    Fills ``thresholds`` (high, low) and returns per point: firing, onset,
    since, lowest_p and alert_sign.
    """
    watched, min_deviation, min_relative, window, resolve_after, cooldown = settings
    budget_per_second, k = budget
    mask = np.uint32((1 << window) - 1)
    n = len(ids)
    firing_out, onset_out = np.zeros(n, dtype=np.bool_), np.zeros(n, dtype=np.bool_)
    since_out, lowest_out = np.full(n, np.nan), np.full(n, np.nan)
    sign_out = np.zeros(n, dtype=np.int8)
    for i in range(n):
        row, now, pv = ids[i], t[i], p[i]
        # A slow EWMA of positive gaps: robust to one missed scrape or a repeat.
        gap = now - last_t[row]
        if np.isfinite(gap) and gap > 0:
            interval[row] = 0.95 * interval[row] + 0.05 * gap if interval[row] > 0 else gap
        if np.isfinite(now):
            last_t[row] = now
        for side in range(2):
            thresholds[i, side] = _threshold(interval[row], budget_scale[row, side], budget_per_second, k)
        side_sign = np.int8(1 if sign[i] > 0 else (-1 if sign[i] < 0 else 0))
        alpha = thresholds[i, LOW] if side_sign < 0 else thresholds[i, HIGH]
        known = np.isfinite(pv)
        # Whether the deviation goes the watched way and is large enough to matter;
        # NaN (no expectation yet) fails the comparisons: nothing to alert on.
        counts = watched == 0 or (side_sign > 0 if watched > 0 else side_sign < 0)
        if sized:
            size = abs(observed[i] - expected[i])
            counts = counts and size >= min_deviation and size >= min_relative * abs(expected[i])
        anomalous = known and counts and pv <= alpha
        if known:
            recent[row] = ((recent[row] << np.uint32(1)) | np.uint32(1 if anomalous else 0)) & mask
        was_firing = firing_state[row]
        calm = known and (not counts or pv > min(10.0 * alpha, 0.5))
        run = quiet_run[row] + 1 if calm else (0 if known else quiet_run[row])
        resolves = was_firing and run >= resolve_after
        if resolves:
            cooldown_until[row] = now + cooldown
        onset = not was_firing and anomalous and _popcount(recent[row]) >= k and now >= cooldown_until[row]
        firing = (was_firing and not resolves) or onset
        since_state[row] = now if onset else (since_state[row] if firing else np.nan)
        worse = onset or (firing and anomalous and pv < lowest_state[row])
        lowest_state[row] = pv if worse else (lowest_state[row] if firing else np.nan)
        sign_state[row] = side_sign if worse else (sign_state[row] if firing else np.int8(0))
        firing_state[row] = firing
        quiet_run[row] = 0 if onset else run
        firing_out[i], onset_out[i] = firing, onset
        since_out[i], lowest_out[i], sign_out[i] = since_state[row], lowest_state[row], sign_state[row]
    return firing_out, onset_out, since_out, lowest_out, sign_out

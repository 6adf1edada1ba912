"""The default alert decision: evidence that accumulates, calibrated as episodes.

What the budget means
---------------------
``false_alerts_per_week`` (per series) or ``false_alerts_per_day`` (across
every series of the detector) is the number of alert *onsets* a team should
get from ordinary behaviour.  It holds, about, on any series whose recent past
is like its present: independent or autocorrelated noise, seasonal, drifting,
sawtooth-shaped, heavy-tailed or count-valued data, and samples repeated
because they were evaluated faster than scraped (the engine drops repeats
before they reach the policy).  It is spent over the series' own sampling
interval, so it means the same at 15 s and at 1 min.  A series still warming
up (its first few hundred points, see the prior below) alerts less than its
budget, not more.  The budget cannot hold for behaviour the series has never
shown (that is what an alert is for), nor for a pattern it has shown longer
ago than its calibration remembers (10,000 points by default, a week at one
sample a minute: the first weekends of a weekly pattern can page).  Measured:
``tests/detector/test_alert_rate_contract.py`` (realized rate per kind of
series) and ``benchmarks/fleet.py`` (a fleet of 120 series).

How
---
Each point's calibrated p-value is evidence ``e = -log p`` (about Exp(1) on
normal data, large when the point is unusual), counted up to
``-log`` :data:`STRONGEST_P` (a single point's p-value beyond what ten thousand
points of history can vouch for is extrapolated, and would otherwise outweigh
everything).  A CUSUM per side adds up the evidence beyond what normal data
gives, ``C = max(0, C + e - d)`` with ``d = -log 0.05``: one very unusual point
and several moderately unusual ones in a row both make C large, and an
ordinary point lets it drain.  An
*episode* is a run of points with C above zero (extended while an alert
fires); its *peak* is the largest C it reached.

Persistence rules that count anomalous points ("2 of 3") assume neighbouring
points are independent; real residuals are not, and a sample evaluated four
times would count four times.  So instead of deriving a threshold from an
independence assumption, the policy measures what it needs on each series
itself, the way peaks-over-threshold declustering does in extreme value
statistics: a decayed count of how often episodes start (``episodes`` per
``points``), and the distribution of episode peaks, kept in the same decayed
histogram with a generalised-Pareto tail that calibrates the per-point scores
(:class:`detector.calibration.TailCalibrator`, here over the last
:data:`EPISODE_MEMORY` episodes).  An alert opens when an episode's running
peak reaches the level ``h`` at which

    episode rate x P(peak >= h) = budget

so the rate of alert onsets is the budget whatever the autocorrelation: an
autocorrelated series has fewer, longer episodes with higher peaks, and its
``h`` rises to match.  An episode opens at most one alert.  Until a series has
seen enough episodes of its own, a prior stands in: one episode per 21 points
(as independent p-values give) with peaks of an exponential tail of scale
:data:`PRIOR_SCALE`, three times heavier than independent p-values give, so
that a new series errs towards silence; it weighs as :data:`PRIOR_EPISODES`
episodes and fades as real ones arrive (see :func:`_level_kernel`).

A model's *pattern* (:class:`models.base.Pattern`: a flat run, a missing
daily burst, spikes or a spread unusual for the series) comes with its own
tail probability ``q``, already calibrated on the series' history.  A pattern
is a statistic over a window, so its tail is not per-point evidence to add
up (an ordinary excursion of it lasts as long as its window, and would add
up to an alert): ``-log q - d`` is a *level* that the evidence on the
pattern's side rises to, by at most one strongest point's worth per point,
and an ordinary excursion is one episode of the same peak calibration.  The
minimum deviation does not apply to patterns (a flat series sits on its
forecast).

An episode that alerted is *censored*: all that is known of its peak is
that it reached ``h`` (from then on the alert holds the series to its
behaviour from before the onset, so what the evidence reaches later says
nothing about ordinary episodes).  It is learned the way censored
observations are in survival analysis: as peaks beyond ``h`` distributed like
the series' own tail there, four quarter-episodes at the quartile midpoints
of an exponential excess whose mean is the tail's mean excess over ``h``
(``excess``, measured when the level is solved).  Learning it at ``h`` itself
would claim that no episode ever goes beyond ``h``: where false alerts make up
a good share of the episodes near ``h`` (a strict budget, a short sampling
interval) the level then sinks, and the rate creeps over the budget (measured:
1.9 times a budget of one a week on p-values that come in runs, 1.4 times
since; 0.19 false alerts per series-day on the fleet benchmark at a budget of
0.14, 0.15 since).  Learning it at its real peak would let a 100-sigma outage
stretch the tail and make the next one harder to see.

A point counts as evidence only if its deviation goes the watched
``direction`` and is large enough to matter (``min_deviation`` in the
series' units, ``min_relative_deviation`` as a fraction of the expected
value): on a flat series a wiggle of 0.1% can be very improbable and still not
worth a page.

An alert lasts as long as the incident.  While it is open the engine freezes
what the series is judged against: the model, the whitening forecast and the
calibration learn nothing from the series, so an outage keeps looking like
one however long it lasts, and the series is back when its points are
ordinary again by the measure from before the onset.  The alert resolves once
its points have added no evidence (p above 0.05, or a deviation that does not
count) for ``resolve_after`` seconds, counted in the series' own samples, each
standing for one sampling interval (at least :data:`MIN_RESOLVE_POINTS`, so
that one lucky point cannot end an outage): hysteresis, so it does not flap.  A new alert
cannot open for ``cooldown`` seconds after, so one incident is one alert.

A shift that persists is accepted as the new normal after
``accept_shift_after`` seconds of alerting (default 2 hours), on a point that
still deviates by its own deviation: one that adds evidence, or one at least
halfway to the shift, on its side (a single calm point of a shift not much
larger than the noise is not a return; a series already coming back is not
accepted), and shows no pattern (a stuck series, a missing routine or a
noisier series is no new level: its alert lasts as long as the pattern): the policy
resolves the alert with that reason (:attr:`AlertDecision.accepted`) and
reports the shift's size (the recent mean of observed minus expected), which
the engine adopts as the model's new level.  Why 2 hours: an outage must not
be accepted within minutes, and most are over, or in someone's hands, within
an hour or two (the recorded incidents of ``replay_data/`` last 10 to 76
minutes); a deploy that moves latency up 30% for good should page once, not
all day, and 2 hours is well inside Alertmanager's default
``repeat_interval`` of 4 hours, so such a shift is one notification, resolved
with its reason before any repeat.  Confirmed incidents are never accepted
this way (:meth:`AlertPolicy.hold`); on-call can accept a shift at once
(:meth:`AlertPolicy.accept`).  ``accept_shift_after=0`` never accepts.

While an alert fires the policy keeps when it opened (``since``), the most
extreme p-value of its episode (``lowest_p``) and that point's side
(``alert_sign``): what an explanation needs.

Feedback makes the budget per series and per direction: each false positive
halves the series' budget in that direction (down to 1/64 of the configured
one), so that series needs a rarer episode that way before it alerts again; a
confirmed incident doubles it back (up to the configured budget).  The scales
live in the policy's state arrays (``budget_scale``, columns high and low), so
they are checkpointed with the engine and can be shown by the API.

The band drawn around the expected value is where a deviation held for
:data:`BAND_POINTS` samples in a row would open an alert.  Each decision also
reports how far each series' evidence has built towards its level
(``suspicion``): the engine lets the model learn less from points that are
building up to an alert, and the calibration nothing while one is open.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numba import njit

from detector.calibration import Direction, TailCalibrator, fit_tail, upper_survival_at
from models.base import ArrayState, FieldSpecs

SECONDS_PER_WEEK = 7 * 24 * 3600.0
SECONDS_PER_DAY = 24 * 3600.0
#: Before a series' sampling interval is known, assume Prometheus's default.
DEFAULT_INTERVAL = 60.0
#: Columns of ``budget_scale`` and of :attr:`AlertDecision.band_p`.
HIGH, LOW = 0, 1
#: The smallest share of the configured budget feedback can leave a series (six false positives).
MIN_BUDGET_SCALE = 1.0 / 64.0
#: A point whose p-value is above this adds no evidence: the CUSUM's drift is ``-log`` of it.
EVIDENCE_P = 0.05
_DRIFT = -float(np.log(EVIDENCE_P))
#: One point counts as no stronger evidence than this p-value: rarer than one in the ten thousand
#: points a calibration remembers, a p-value is extrapolated, and one point claimed that rare
#: would outweigh everything else (a sustained deviation still adds up to any level).
STRONGEST_P = 1e-4
#: The most one point can add to the evidence.
_STRONGEST_STEP = -float(np.log(STRONGEST_P)) - _DRIFT
#: Episodes whose peaks the policy remembers (decayed), per series.
EPISODE_MEMORY = 1000.0
#: Episodes beyond a level needed to trust their count there, and the share of them the tail is fitted to.
PEAK_TAIL_SUPPORT = 3.0
PEAK_TAIL_FIT = 0.1
#: Points over which the episode rate is measured (decayed), per series.
POINT_MEMORY = 10_000.0
#: How many episodes the prior weighs, the scale of its exponential tail of peaks, and its
#: episode rate per point (that of independent p-values).
PRIOR_EPISODES = 20
PRIOR_SCALE = 3.0
PRIOR_RATE = 1.0 / 21.0
#: Peaks are stored as ``sinh(PEAK_UNIT * peak + _PEAK_ORIGIN)``: the histogram's asinh axis,
#: -8 to 8, is then linear in the peak, from 0 to :data:`MAX_LEVEL`, the highest alert level a
#: series can need.
PEAK_UNIT = 0.25
_PEAK_ORIGIN = -8.0
MAX_LEVEL = -2.0 * _PEAK_ORIGIN / PEAK_UNIT
#: Halvings of 0 .. MAX_LEVEL that find an alert level (to 0.004).
_LEVEL_STEPS = 14
#: The fewest calm points that resolve an alert, whatever ``resolve_after`` and the interval.
MIN_RESOLVE_POINTS = 3
#: How fast the shift estimate (observed minus expected, while alerting) follows the data.
_SHIFT_RATE = 0.1


def _peak_axis(peak: np.ndarray) -> np.ndarray:
    """Episode peaks as the deviations the peak histogram stores."""
    return np.sinh(PEAK_UNIT * np.asarray(peak, dtype=np.float64) + _PEAK_ORIGIN)


#: Where an alerted (censored) episode's peak is learned, as multiples of the mean excess beyond the
#: level it crossed: the midpoints of the quartiles of an exponential excess, a quarter-episode each.
CENSORED_QUANTILES = -np.log(1.0 - (np.arange(4) + 0.5) / 4.0)

#: The band is where a deviation this many samples long would open an alert.
BAND_POINTS = 3
_ALERT_STATE = (
    "evidence",
    "in_episode",
    "peak",
    "onset_level",
    "firing",
    "quiet_run",
    "cooldown_until",
    "since",
    "lowest_p",
    "alert_sign",
    "shift",
    "hold",
)


@dataclass(frozen=True)
class AlertDecision:
    """The policy's verdict on a batch.

    ``firing`` and ``onset`` (the point that opened an alert) are per point;
    ``accepted`` marks the points whose alert resolved because its shift had
    persisted for ``accept_shift_after`` (a new normal), and ``shift`` holds
    the size of that shift in the series' units (NaN elsewhere): what the
    engine moves the model's level by;
    ``since``, ``lowest_p`` and ``alert_sign`` describe each firing series'
    alert (NaN, NaN, 0 when not firing); ``band_p`` holds, for each point, the
    two-sided p-value at which its band is drawn, for high and low deviations
    (columns :data:`HIGH`, :data:`LOW`).  ``suspicion`` is each series'
    accumulated evidence after the point as a share of its alert level (1 or
    more: alerting, or would be but for a cool-down): how far the engine
    should trust the point as normal behaviour to learn from.
    """

    firing: np.ndarray
    onset: np.ndarray
    accepted: np.ndarray
    shift: np.ndarray
    since: np.ndarray
    lowest_p: np.ndarray
    alert_sign: np.ndarray
    band_p: np.ndarray
    suspicion: np.ndarray


@njit(cache=True)
def _level_kernel(stored, unit, rows, targets, support, fit_fraction):  # type: ignore[no-untyped-def]
    """For each series (``rows``), the peak level whose survival is ``targets``, and the mean excess there.

    The level is found by halving 0 .. MAX_LEVEL.  The mean excess is that of
    an exponential tail through the survival at the level and
    :data:`PRIOR_SCALE` beyond it (0 where nothing lies beyond): where an
    alerted episode, known only to have reached the level, is learned.

    The survival is the series' own episodes and a prior that fades as they
    arrive: an exponential tail of scale :data:`PRIOR_SCALE`, heavier than
    independent p-values give (scale about 1), so that while a series has
    seen few episodes its alert level errs high.  The prior weighs
    ``W**2 / (W + n)`` episodes against the ``n`` the series has seen (``W`` =
    :data:`PRIOR_EPISODES`): all of the say at first, a few percent after a
    hundred episodes.  Peaks sit on the histogram's axis at
    ``PEAK_UNIT * peak + _PEAK_ORIGIN`` (see :func:`_peak_axis`).
    """
    out, excess = np.empty(len(rows)), np.empty(len(rows))
    for i in range(len(rows)):
        row = rows[i]
        seen = stored[row, 0] / unit[row]
        weight = PRIOR_EPISODES**2 / (PRIOR_EPISODES + seen)
        fit = fit_tail(stored, row, unit[row], True, fit_fraction) if seen > 0 else (0.0, 0.0, 0.0, 1.0)
        low, high = 0.0, MAX_LEVEL
        for _ in range(_LEVEL_STEPS):
            middle = 0.5 * (low + high)
            if _survival(stored, unit, row, middle, seen, weight, support, fit) <= targets[i]:
                high = middle
            else:
                low = middle
        out[i] = high
        at = _survival(stored, unit, row, high, seen, weight, support, fit)
        beyond = _survival(stored, unit, row, high + PRIOR_SCALE, seen, weight, support, fit)
        excess[i] = PRIOR_SCALE / np.log(at / beyond) if at > beyond > 0 else 0.0
    return out, excess


@njit(cache=True)
def _survival(stored, unit, row, peak, seen, weight, support, fit):  # type: ignore[no-untyped-def]
    """P(episode peak >= ``peak``) of one series: its own episodes and the prior, weighed."""
    own = (
        upper_survival_at(stored, unit, row, PEAK_UNIT * peak + _PEAK_ORIGIN, support, fit)
        if seen > 0
        else 0.0
    )
    return (weight * np.exp(-peak / PRIOR_SCALE) + seen * own) / (weight + seen)


class AlertPolicy(ArrayState):
    """Per-series alert state, updated for a whole batch at once.

    Parameters
    ----------
    false_alerts_per_week
        The budget per series: about this many alert onsets per series per
        week on ordinary data (see the module docstring for when it holds).
        Default 1 when neither budget is given.
    false_alerts_per_day
        The budget per detector instead: about this many alert onsets per day
        across all its series, shared equally among the series it watches
        (:meth:`set_series_count`).  Give one budget or the other.
    resolve_after
        Seconds of points adding no evidence that resolve a firing alert
        (counted in the series' samples, at least :data:`MIN_RESOLVE_POINTS`).
    cooldown
        Seconds after a resolution during which no new alert opens.
    accept_shift_after
        Seconds of alerting after which a shift is accepted as the new normal
        (0: never); see the module docstring for the default.
    direction
        Which deviations may alert: ``"both"``, ``"high"`` (above the expected
        value) or ``"low"``.
    min_deviation
        Smallest ``|observed - expected|``, in the series' units, that counts.
    min_relative_deviation
        Smallest ``|observed - expected| / |expected|`` that counts.

    Examples
    --------
    Unusual points in a row add up to an alert (on a new series, three at
    p = 1e-4: it has no episodes of its own yet and errs high); three minutes
    of ordinary points resolve it:

    >>> import numpy as np
    >>> policy = AlertPolicy(false_alerts_per_week=1, resolve_after=180)
    >>> policy.resize(1)
    >>> ids = np.array([0])
    >>> fired = []
    >>> for step, p in enumerate([0.5, 1e-4, 0.5, 1e-4, 1e-4, 1e-4, 1e-4, 0.5, 0.5, 0.5, 0.5]):
    ...     decision = policy.decide(ids, np.array([60.0 * step]), np.array([p]))
    ...     fired.append(int(decision.firing[0]))
    >>> fired
    [0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0]

    Only rising deviations of at least 5 units count for this one:

    >>> policy = AlertPolicy(direction="high", min_deviation=5.0)
    >>> policy.resize(3)
    >>> for t in (0.0, 60.0, 120.0, 180.0):
    ...     decision = policy.decide(
    ...         np.arange(3), np.full(3, t), p=np.full(3, 1e-9), sign=np.array([1, -1, 1]),
    ...         observed=np.array([110.0, 90.0, 101.0]), expected=np.full(3, 100.0))
    >>> decision.firing.tolist(), decision.since.tolist()
    ([True, False, False], [180.0, nan, nan])

    Each false positive halves a series' budget in that direction:

    >>> policy.scale_budget(np.array([0]), "high", 0.5)
    >>> policy.arrays["budget_scale"][0].tolist()
    [0.5, 1.0]
    """

    fields: ClassVar[FieldSpecs] = {
        "evidence": (np.float64, (2,), 0.0),
        "in_episode": (np.bool_, (), False),
        "peak": (np.float64, (), 0.0),
        "onset_level": (np.float64, (), np.nan),
        "firing": (np.bool_, (), False),
        "quiet_run": (np.int32, (), 0),
        "cooldown_until": (np.float64, (), -np.inf),
        "since": (np.float64, (), np.nan),
        "lowest_p": (np.float64, (), np.nan),
        "alert_sign": (np.int8, (), 0),
        "shift": (np.float64, (), np.nan),
        "hold": (np.bool_, (), False),
        "episodes": (np.float64, (), float(PRIOR_EPISODES)),
        "points": (np.float64, (), PRIOR_EPISODES / PRIOR_RATE),
        "level": (np.float64, (2,), np.nan),
        "excess": (np.float64, (), PRIOR_SCALE),
        "level_stale": (np.bool_, (), True),
        "budget_scale": (np.float64, (2,), 1.0),
        "interval": (np.float64, (), 0.0),
        "last_t": (np.float64, (), np.nan),
    }

    def __init__(
        self,
        false_alerts_per_week: float | None = None,
        false_alerts_per_day: float | None = None,
        resolve_after: float = 120.0,
        cooldown: float = 1800.0,
        accept_shift_after: float = 7200.0,
        direction: Direction = "both",
        min_deviation: float = 0.0,
        min_relative_deviation: float = 0.0,
    ) -> None:
        if false_alerts_per_week is not None and false_alerts_per_day is not None:
            raise ValueError(
                "give false_alerts_per_week (per series) or false_alerts_per_day (per detector), not both; "
                "keep false_alerts_per_day for a budget that does not grow with the number of series"
            )
        for name, budget in (
            ("false_alerts_per_week", false_alerts_per_week),
            ("false_alerts_per_day", false_alerts_per_day),
        ):
            if budget is not None and not budget > 0:
                raise ValueError(
                    f"{name} must be positive, got {budget}; "
                    "to silence a series use a silence, not a zero budget"
                )
        if not resolve_after >= 0 or not cooldown >= 0 or not accept_shift_after >= 0:
            raise ValueError(
                f"resolve_after, cooldown and accept_shift_after are durations in seconds and must not be "
                f"negative, got {resolve_after}, {cooldown} and {accept_shift_after}"
            )
        if direction not in ("both", "high", "low"):
            raise ValueError(f"direction must be 'both', 'high' or 'low', got {direction!r}")
        if min_deviation < 0 or min_relative_deviation < 0:
            raise ValueError(
                f"min_deviation and min_relative_deviation must not be negative, "
                f"got {min_deviation} and {min_relative_deviation}"
            )
        # Episode peaks: only their histogram is used (see _level_kernel), with their own tail settings.
        self.peaks = TailCalibrator(memory=EPISODE_MEMORY, warmup=0, direction="high")
        super().__init__()
        if false_alerts_per_week is None and false_alerts_per_day is None:
            false_alerts_per_week = 1.0
        self.false_alerts_per_week = false_alerts_per_week
        self.false_alerts_per_day = false_alerts_per_day
        self.resolve_after = resolve_after
        self.cooldown = cooldown
        self.accept_shift_after = accept_shift_after
        self.direction: Direction = direction
        self.min_deviation = min_deviation
        self.min_relative_deviation = min_relative_deviation
        self._series_count = 1
        self._budget_count = 1

    # -- budget ---------------------------------------------------------------

    def set_series_count(self, count: int) -> None:
        """How many series the detector watches: a per-detector budget is shared among them."""
        self._series_count = max(int(count), 1)
        if (
            self.false_alerts_per_day is not None
            and abs(self._series_count - self._budget_count) > 0.1 * self._budget_count
        ):
            self._budget_count = self._series_count
            self.arrays["level_stale"][:] = True

    @property
    def budget_per_second(self) -> float:
        """False alert onsets per series per second that the budget allows."""
        if self.false_alerts_per_day is not None:
            return self.false_alerts_per_day / SECONDS_PER_DAY / self._budget_count
        assert self.false_alerts_per_week is not None
        return self.false_alerts_per_week / SECONDS_PER_WEEK

    def scale_budget(self, ids: np.ndarray, direction: Direction, factor: float) -> None:
        """Multiply these series' budget in ``direction`` by ``factor`` (kept in [1/64, 1]).

        Feedback: ``0.5`` after a false positive, ``2.0`` after a confirmed incident.
        """
        columns = {"both": slice(None), "high": slice(HIGH, HIGH + 1), "low": slice(LOW, LOW + 1)}[direction]
        rows = np.asarray(ids, dtype=np.int64)
        scale = self.arrays["budget_scale"]
        scale[rows, columns] = np.clip(scale[rows, columns] * factor, MIN_BUDGET_SCALE, 1.0)
        self.arrays["level_stale"][rows] = True

    def alert_levels(self, ids: np.ndarray) -> np.ndarray:
        """The peak each series' episodes must reach to alert, shape ``(len(ids), 2)`` (high, low)."""
        ids = np.asarray(ids, dtype=np.int64)
        self._refresh_levels(ids)
        return self.arrays["level"][ids]

    def _refresh_levels(self, ids: np.ndarray) -> None:
        """Solve episode rate x P(peak >= level) = budget per point for series whose level is stale."""
        rows = np.unique(ids[self.arrays["level_stale"][ids]])
        if not len(rows):
            return
        interval = self.arrays["interval"][rows]
        seconds = np.where(interval > 0, interval, DEFAULT_INTERVAL)
        rate = self.arrays["episodes"][rows] / self.arrays["points"][rows]
        per_episode = self.budget_per_second * seconds / np.maximum(rate, 1e-12)
        scale = self.arrays["budget_scale"][rows]
        # The low side needs its own solution only where feedback made its budget differ.
        apart = scale[:, LOW] != scale[:, HIGH]
        solve = np.concatenate([rows, rows[apart]])
        target = np.concatenate([scale[:, HIGH], scale[apart, LOW]]) * np.concatenate(
            [per_episode, per_episode[apart]]
        )
        peaks = self.peaks.arrays
        high, excess = _level_kernel(
            peaks["mass_at_or_above"], peaks["unit"], solve, target, PEAK_TAIL_SUPPORT, PEAK_TAIL_FIT
        )
        levels = np.repeat(high[: len(rows), None], 2, axis=1)
        levels[apart, LOW] = high[len(rows) :]
        self.arrays["level"][rows] = levels
        self.arrays["excess"][rows] = excess[: len(rows)]
        self.arrays["level_stale"][rows] = False

    def _learn_peaks(self, rows: np.ndarray, peaks: np.ndarray, censored: np.ndarray) -> None:
        """Learn ended episodes' peaks; a censored one as quarter-episodes beyond the level it crossed."""
        quarters = len(CENSORED_QUANTILES)
        excess = self.arrays["excess"][rows[censored]]
        beyond = peaks[censored, None] + excess[:, None] * CENSORED_QUANTILES[None, :]
        self.peaks.learn(
            np.concatenate([rows[~censored], np.repeat(rows[censored], quarters)]),
            _peak_axis(np.concatenate([peaks[~censored], np.minimum(beyond, MAX_LEVEL).ravel()])),
            np.concatenate(
                [np.ones(int((~censored).sum())), np.full(quarters * int(censored.sum()), 1.0 / quarters)]
            ),
        )
        self.arrays["level_stale"][rows] = True

    # -- state ----------------------------------------------------------------

    def resize(self, n_series: int) -> None:
        super().resize(n_series)
        self.peaks.resize(n_series)

    def reset(self, ids: np.ndarray) -> None:
        super().reset(ids)
        self.peaks.reset(ids)

    def state_dict(self) -> dict[str, np.ndarray]:
        state = super().state_dict()
        state.update({f"peaks.{name}": value for name, value in self.peaks.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        own = {k: v for k, v in state.items() if not k.startswith("peaks.")}
        if "excess" not in own and "level" in own:
            # Saved before censored episodes were learned: solved again at the next decision.
            own["excess"] = np.full(len(own["level"]), PRIOR_SCALE)
            own["level_stale"] = np.ones(len(own["level"]), dtype=np.bool_)
        super().load_state_dict(own)
        self.peaks.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("peaks.")})

    def nbytes_per_series(self) -> int:
        return super().nbytes_per_series() + self.peaks.nbytes_per_series()

    def hold(self, ids: np.ndarray) -> None:
        """Feedback: these series' open alerts are confirmed incidents, never accepted as a new normal."""
        rows = np.asarray(ids, dtype=np.int64)
        self.arrays["hold"][rows] = self.arrays["firing"][rows]

    def accept(self, ids: np.ndarray, at: np.ndarray) -> np.ndarray:
        """Feedback: accept these series' open alerts as the new normal now (``at``: the data's time).

        Resolves them (with a cool-down, as any resolution) and returns each
        one's shift to adopt, in the series' units: NaN where the series was
        not alerting, 0 where its shift is not known.
        """
        rows = np.asarray(ids, dtype=np.int64)
        firing = self.arrays["firing"][rows].copy()
        shift = np.where(firing, np.nan_to_num(self.arrays["shift"][rows]), np.nan)
        self.quiet(rows[firing])
        self.arrays["cooldown_until"][rows[firing]] = np.asarray(at, dtype=np.float64)[firing] + self.cooldown
        return shift

    def quiet(self, ids: np.ndarray) -> None:
        """Clear alert state but keep what was learned (episodes, sampling interval, feedback)."""
        for name in _ALERT_STATE:
            self.arrays[name][ids] = self.fields[name][2]

    # -- deciding -------------------------------------------------------------

    def decide(
        self,
        ids: np.ndarray,
        t: np.ndarray,
        p: np.ndarray,
        sign: np.ndarray | None = None,
        observed: np.ndarray | None = None,
        expected: np.ndarray | None = None,
        pattern: np.ndarray | None = None,
    ) -> AlertDecision:
        """Update alert state with each point's p-value (NaN p or t: no decision, no change).

        Each series at most once per batch.  ``sign`` is the side of each
        deviation (positive: above the expected value; if omitted every point
        counts as high); ``observed`` and ``expected`` are needed only for the
        minimum deviation.  ``pattern`` is each point's pattern tail, signed by
        its side (see the module docstring; 0 or NaN: none); the minimum
        deviation does not apply to it.
        """
        ids = np.asarray(ids, dtype=np.int64)
        n = len(ids)
        sign = np.ones(n) if sign is None else np.nan_to_num(np.asarray(sign, dtype=np.float64))
        pattern = np.zeros(n) if pattern is None else np.nan_to_num(np.asarray(pattern, dtype=np.float64))
        sized = observed is not None and expected is not None
        size_args = (observed, expected) if sized else (np.zeros(n), np.zeros(n))
        watched = {"both": 0, "high": 1, "low": -1}[self.direction]
        settings = (
            watched,
            self.min_deviation,
            self.min_relative_deviation,
            self.resolve_after,
            self.cooldown,
            self.accept_shift_after,
            1.0 - 1.0 / POINT_MEMORY,
        )
        self._refresh_levels(ids)
        learned = np.full(n, np.nan)
        censored = np.zeros(n, dtype=np.bool_)
        firing, onset, accepted, shift, since, lowest_p, alert_sign, suspicion = _decide_kernel(
            *(self.arrays[name] for name in _KERNEL_STATE),
            ids,
            *(np.asarray(a, dtype=np.float64) for a in (t, p, sign, *size_args)),
            pattern,
            sized,
            settings,
            learned,
            censored,
        )
        ended = ~np.isnan(learned)
        if ended.any():
            self._learn_peaks(ids[ended], learned[ended], censored[ended])
        band_p = np.minimum(np.exp(-(_DRIFT + self.arrays["level"][ids] / BAND_POINTS)), 1.0)
        return AlertDecision(
            firing=firing,
            onset=onset,
            accepted=accepted,
            shift=shift,
            since=since,
            lowest_p=lowest_p,
            alert_sign=alert_sign,
            band_p=band_p,
            suspicion=suspicion,
        )


_KERNEL_STATE = (*_ALERT_STATE, "episodes", "points", "level", "level_stale", "interval", "last_t")


@njit(cache=True)
def _decide_kernel(  # type: ignore[no-untyped-def]
    evidence,
    in_episode,
    peak,
    onset_level,
    firing_state,
    quiet_run,
    cooldown_until,
    since_state,
    lowest_state,
    sign_state,
    shift_state,
    hold,
    episodes,
    points,
    level,
    level_stale,
    interval,
    last_t,
    ids,
    t,
    p,
    sign,
    observed,
    expected,
    pattern,
    sized,
    settings,
    learned,
    censored,
):
    """One point per series: track its sampling interval, its evidence and episode, then its alert.

    Fills ``learned`` (the peak to learn) for series whose episode ended;
    returns per point: firing, onset, accepted, shift, since, lowest_p,
    alert_sign and suspicion.  (One loop body, not a helper per point: a call passing
    thirty arrays costs more than the work.)
    """
    watched, min_deviation, min_relative, resolve_after, cooldown, accept_after, keep = settings
    n = len(ids)
    firing_out, onset_out = np.zeros(n, dtype=np.bool_), np.zeros(n, dtype=np.bool_)
    accepted_out, shift_out = np.zeros(n, dtype=np.bool_), np.full(n, np.nan)
    since_out, lowest_out = np.full(n, np.nan), np.full(n, np.nan)
    sign_out = np.zeros(n, dtype=np.int8)
    suspicion = np.zeros(n)
    for i in range(n):
        row, now, pv = ids[i], t[i], p[i]
        if np.isfinite(pv) and np.isfinite(now):
            # A slow EWMA of positive gaps, each capped at 4 intervals: robust to a gap or an outage.
            gap = now - last_t[row]
            if np.isfinite(gap) and gap > 0:
                if interval[row] > 0:
                    interval[row] = 0.95 * interval[row] + 0.05 * min(gap, 4.0 * interval[row])
                else:
                    interval[row] = gap
                    level_stale[row] = True
            last_t[row] = now
            side_sign = 1 if sign[i] > 0 else (-1 if sign[i] < 0 else 0)
            # Whether the deviation goes the watched way and is large enough to matter;
            # NaN (no expectation yet) fails the comparisons: no evidence.
            counts = watched == 0 or (side_sign > 0 if watched > 0 else side_sign < 0)
            if sized:
                size = abs(observed[i] - expected[i])
                counts = counts and size >= min_deviation and size >= min_relative * abs(expected[i])
            strength = -np.log(max(pv, STRONGEST_P)) if counts else 0.0
            # A pattern's tail is already evidence gathered over its window: a level, which the
            # evidence rises to (by at most one strongest point's worth per point), not an increment.
            pattern_sign = 1 if pattern[i] > 0 else (-1 if pattern[i] < 0 else 0)
            pattern_counts = pattern_sign != 0 and (watched == 0 or pattern_sign == watched)
            tail = abs(pattern[i]) if pattern_counts else 1.0
            pattern_level = -np.log(tail) - _DRIFT if tail < EVIDENCE_P else 0.0
            for side in range(2):
                towards = 1 if side == 0 else -1
                before = evidence[row, side]
                level_now = max(0.0, before + (strength if side_sign == towards else 0.0) - _DRIFT)
                if pattern_sign == towards and pattern_level > level_now:
                    level_now = min(pattern_level, before + _STRONGEST_STEP)
                evidence[row, side] = level_now
            now_level = max(evidence[row, 0], evidence[row, 1])
            # A shift is the point's own deviation persisting, not a pattern's.
            shifted = counts and pv <= EVIDENCE_P and not pattern_level > 0
            if pattern_level > 0 and tail < pv:
                pv, side_sign, counts = tail, pattern_sign, True
            points[row] = points[row] * keep + 1.0
            episodes[row] *= keep
            if now_level > 0 and not in_episode[row]:
                in_episode[row] = True
                episodes[row] += 1.0
                peak[row] = 0.0
                onset_level[row] = np.nan
                lowest_state[row] = np.inf
            if in_episode[row] and counts and pv < lowest_state[row]:
                lowest_state[row] = pv
                sign_state[row] = np.int8(side_sign)
            peak[row] = max(peak[row], now_level)
            was_firing = firing_state[row]
            if was_firing and sized:
                # The shift's size: a recent mean of observed minus expected while alerting.
                gap = observed[i] - expected[i]
                if np.isfinite(gap):
                    previous = shift_state[row]
                    shift_state[row] = (
                        gap if np.isnan(previous) else previous + _SHIFT_RATE * (gap - previous)
                    )
            calm = not counts or pv > EVIDENCE_P
            # A point at least halfway to the shift's size, on its side, has not come back (a
            # single calm point of a shift smaller than the noise has not either).
            still_shifted = (
                sized
                and np.isfinite(shift_state[row])
                and (observed[i] - expected[i]) * shift_state[row] >= 0.5 * shift_state[row] ** 2
            )
            run = quiet_run[row] + 1 if calm else 0
            spacing = interval[row] if interval[row] > 0 else DEFAULT_INTERVAL
            resolves = was_firing and run >= max(MIN_RESOLVE_POINTS, np.ceil(resolve_after / spacing - 1e-9))
            accepted = (
                was_firing
                and (shifted or (still_shifted and not pattern_level > 0))
                and accept_after > 0
                and now - since_state[row] >= accept_after
                and not hold[row]
            )
            if accepted:
                accepted_out[i] = True
                shift_out[i] = shift_state[row] if np.isfinite(shift_state[row]) else 0.0
                resolves = True
            if resolves:
                cooldown_until[row] = now + cooldown
                evidence[row, 0] = 0.0
                evidence[row, 1] = 0.0
                now_level = 0.0
            side = 0 if evidence[row, 0] >= evidence[row, 1] else 1
            onset = (
                not was_firing
                and now_level > 0
                and now_level >= level[row, side]
                and now >= cooldown_until[row]
            )
            if onset:
                onset_level[row] = now_level
                since_state[row] = now
                shift_state[row] = np.nan
            firing_state[row] = (was_firing and not resolves) or onset
            quiet_run[row] = 0 if onset else run
            onset_out[i] = onset
            if not firing_state[row]:
                since_state[row] = np.nan
                shift_state[row] = np.nan
                hold[row] = False
                if in_episode[row] and now_level == 0:
                    in_episode[row] = False
                    # Alerted: censored where it crossed the level (see the module docstring).
                    censored[i] = not np.isnan(onset_level[row])
                    learned[i] = onset_level[row] if censored[i] else peak[row]
        firing = firing_state[row]
        firing_out[i] = firing
        side = 0 if evidence[row, 0] >= evidence[row, 1] else 1
        suspicion[i] = 1.0 if firing else evidence[row, side] / max(level[row, side], 1e-9)
        if firing:
            since_out[i], lowest_out[i], sign_out[i] = since_state[row], lowest_state[row], sign_state[row]
    return firing_out, onset_out, accepted_out, shift_out, since_out, lowest_out, sign_out, suspicion

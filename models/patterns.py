"""Pattern statistics: what no single point reveals, each judged against the series' own past.

Four statistics are kept per series, beside the forecasters whose deviations
they read (see :class:`models.auto.AutoModel`):

* **flat**: how many samples in a row the series has stayed where the run
  began, within a hundredth of its usual change from one sample to the next
  (read from the samples as scraped, before the engine's dither of a count:
  see :class:`models.base.OnlineModel`): a stuck exporter, a
  pipeline that stopped, a busy series gone perfectly flat.  Only for a
  series that changes at all but :data:`FLAT_BUSY` of its samples: one that
  idles at zero most of the time has runs as long as its quiet spells, with
  no tail a week of history could vouch for;
* **routine**: how much, lately, of its daily routine the series has missed
  where the routine stands out from its level (an exponentially weighted
  mean of the share of the routine's departure from the level that did not
  happen: 1 for a burst that did not come at all): the nightly backup that
  did not run;
* **spikes**: how many spikes the recent window holds, a spike being a point
  further from its forecast than all but :data:`SPIKE_SHARE` of the series'
  points (a level tracked online, at least :data:`SPIKE_Z` scales) whose
  predecessor was not (so a burst is one): an error counter that spiked once
  a day now spikes every ten minutes, each spike no larger than usual;
* **spread**: the recent mean absolute deviation from the recent mean
  deviation, as a multiple of its long-run level (noisier: a service flapping
  around the same mean; a shift, which the point deviation already sees,
  moves the mean, not the spread around it).  Not the other way: calmer than
  usual is what many series are every night, and a series calm to the point
  of not changing is the flat statistic's business.

Each statistic is turned into a tail probability the same way, with no
assumption about its distribution: a decayed count, per series, of the past
points at which the statistic reached each of a dozen or so geometric
thresholds (an empirical survival function, like
:class:`detector.calibration.TailCalibrator` but with a few thresholds instead
of 80 bins, since only the upper tail matters), each share taken as an upper
bound given how few points it rests on, and extrapolated beyond the largest
value the series has shown as :func:`_survival` says.  The smallest of the
tails, times their number for having looked at that many, is reported as a
standard normal deviate (:class:`models.base.Pattern`).

A statistic over a window is autocorrelated: an ordinary excursion into its
tail lasts as long as the window.  So its tail is not per-point evidence to be
added up; the alert policy takes it as a level that its evidence rises to
(:mod:`detector.policy`), and an ordinary excursion is one episode.

What is learned (the counts, the long-run levels) learns only from points with
a positive weight, and each statistic learns less from a point its own tail
already flags, so an incident is not learned as normal; what tracks the
present (the current run, the recent windows) follows every *seen* point, so
an alert ends when the pattern does.  A series reports nothing until it has a
day of history: a pattern that recurs daily (a flat night) must have been seen
once before it can be ordinary.
"""

from __future__ import annotations

import math
from collections import namedtuple
from typing import ClassVar

import numpy as np
from numba import njit

from models.base import (
    FLAT,
    ROUTINE,
    SPIKES,
    SPREAD,
    ArrayState,
    FieldSpecs,
    Pattern,
    as_floats,
    learning_rate,
)

#: A spike is a point further from its forecast than all but this share of the series' points,
#: and at least SPIKE_Z scales from it; the level follows the share by SPIKE_STEP per exceedance.
SPIKE_SHARE = 1e-3
SPIKE_Z = 4.0
SPIKE_STEP = 0.2
#: Memory of the recent windows, in samples.
SPIKE_HALFLIFE = 60.0
SPREAD_HALFLIFE = 30.0
ROUTINE_HALFLIFE = 5.0
#: A value within this share of the series' usual change per sample of the run's first value
#: continues a flat run.
FLAT_TOLERANCE = 0.01
#: The flat statistic watches series whose samples are unchanged at most this often.
FLAT_BUSY = 0.2
#: Points over which the counts and long-run levels are averaged (decayed): a week at 1 min.
MEMORY = 10_000.0
#: History a series needs (seconds, and points) before its patterns are judged.
WARMUP_SECONDS = 86_400.0
WARMUP_POINTS = 100
#: A statistic whose tail (times the number of tails) is below this teaches proportionally less,
#: as the engine's ``protect_below`` does for point deviations.
PROTECT_BELOW = 1e-3
#: Deviations beyond this count as this much in the spread and the routine's shortfall.
CLIP = 6.0
#: The smallest tail reported (as the calibration's smallest p-value is bounded too).
TAIL_FLOOR = 1e-20
#: Looks at a threshold that make its share a measure of the tail's slope.
_SUPPORT = 10.0
_RESCALE_AT = 1e9

# Geometric thresholds of each statistic: (first, ratio, count, value at which the share is 1,
# whether its tail is measured on a log axis, points per independent look at it).
# Flat runs in samples: 2 .. ~1450 (a day at 1 min); every point begins a run of at least 1.  Runs
# have geometric tails: exponential in their length.
_FLAT = (2.0, np.sqrt(2.0), 20, 1.0, False, 1.0)
# The share of the routine missed, an exponentially weighted mean: 0.1 .. ~1.6 (a share, bounded).
_ROUTINE = (0.1, np.sqrt(np.sqrt(2.0)), 16, 0.0, False, 2.0 / learning_rate(ROUTINE_HALFLIFE))
# Spikes in the recent window (decayed count): 1 .. ~45; counts have tails no heavier than Poisson,
# and the count first reaches a threshold at a spike, each one a look.
_SPIKES = (1.0, np.sqrt(2.0), 12, 0.0, False, 1.0)
# Spread as a multiple of its long-run level: 1.1 .. ~17, a ratio: its tail on a log axis.  An
# exponentially weighted mean stays correlated over about 2 / rate points.
_SPREAD = (1.1, 1.2, 16, 1.0, True, 2.0 / learning_rate(SPREAD_HALFLIFE))
_OFFSETS = (0, _FLAT[2], _FLAT[2] + _ROUTINE[2], _FLAT[2] + _ROUTINE[2] + _SPIKES[2])
_THRESHOLDS = _OFFSETS[3] + _SPREAD[2]

#: Each series' state: the present (the run, the recent windows) and what is learned of the past.
_FIELDS: FieldSpecs = {
    "anchor": (np.float64, (), np.nan),
    "last_x": (np.float64, (), np.nan),
    "step": (np.float32, (), 0.0),
    "unchanged": (np.float32, (), 0.0),
    "run_start": (np.float64, (), np.nan),
    "run": (np.float32, (), 0.0),
    "run_span": (np.float32, (), 0.0),
    "longest": (np.float32, (), 0.0),
    "shortfall": (np.float32, (), 0.0),
    "routine_side": (np.int8, (), 1),
    "spike_count": (np.float32, (), 0.0),
    "spike_level": (np.float32, (), SPIKE_Z),
    "spiking": (np.bool_, (), False),
    "spike_rate": (np.float32, (), 0.0),
    "spread_mean": (np.float32, (), 0.0),
    "spread_short": (np.float32, (), np.nan),
    "spread_long": (np.float32, (), np.nan),
    "unit": (np.float64, (), 1.0),
    "total": (np.float64, (), 0.0),
    "first_t": (np.float64, (), np.nan),
    "counts": (np.float32, (_THRESHOLDS,), 0.0),
    "pending": (np.float32, (_THRESHOLDS,), 0.0),
    "peak": (np.float32, (3,), 1.0),
}
#: The state as the compiled kernels take it: one argument, each array by name.
_State = namedtuple("_State", list(_FIELDS))  # type: ignore[misc]


class PatternStatistics(ArrayState):
    """Flat runs, a daily routine's shortfall, spike rate and spread, each against the series' own past.

    Not a forecaster: it reads the point deviations of one (its caller's)
    and, for the routine, the shortfall from a
    :class:`models.routine.DailyRoutine`, and reports a
    :class:`models.base.Pattern`.  :class:`models.auto.AutoModel` runs one
    when opted in (``patterns=True``).

    Parameters
    ----------
    flat, routine, spikes, spread
        Which statistics to watch.

    Examples
    --------
    A series that changes at every sample, then sits at 512:

    >>> import numpy as np
    >>> from models.base import PATTERN_KINDS
    >>> stats = PatternStatistics()
    >>> stats.resize(1)
    >>> ids, rng = np.array([0]), np.random.default_rng(0)
    >>> for step in range(3000):
    ...     t, x = np.array([60.0 * step]), np.array([500 + rng.normal(0, 5) if step < 2950 else 512.0])
    ...     deviation = (x - 500) / 5
    ...     pattern = stats.assess(ids, t, x, deviation)
    ...     weight = np.ones(1) if step < 2950 else np.zeros(1)  # flagged: not learned, but seen
    ...     stats.learn(ids, t, x, deviation, weight, np.ones(1, bool))
    >>> PATTERN_KINDS[int(pattern.kind[0])], float(pattern.seen[0]) / 60, bool(pattern.deviation[0] < -5)
    ('flat', 49.0, True)
    """

    def __init__(
        self, flat: bool = True, routine: bool = True, spikes: bool = True, spread: bool = True
    ) -> None:
        self.flat = flat
        self.routine = routine
        self.spikes = spikes
        self.spread = spread
        super().__init__()
        self._last: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    fields: ClassVar[FieldSpecs] = _FIELDS

    def _settings(self) -> tuple[bool, bool, bool, bool, float]:
        watched = (self.flat, self.routine, self.spikes, self.spread)
        return (*watched, float(sum(watched)))

    def assess(
        self,
        ids: np.ndarray,
        t: np.ndarray,
        x: np.ndarray,
        deviation: np.ndarray,
        shortfall: np.ndarray | None = None,
        routine: np.ndarray | None = None,
    ) -> Pattern:
        """The most unusual pattern of each point's series, the point included, learning nothing.

        ``x`` are the samples as scraped (a dithered count is never flat),
        ``deviation`` the point deviations of the caller's forecaster;
        ``shortfall`` is how far each point falls short of its daily routine
        where that stands out (0 elsewhere), signed as the routine departs
        from the level there (negative for a dip, so that a dip that does not
        come is reported high), ``routine`` the routine's expected value (both
        NaN-free; None: no routine).
        """
        n = len(ids)
        shortfall = np.zeros(n) if shortfall is None else shortfall
        routine = np.full(n, np.nan) if routine is None else routine
        z, kind, seen, usual, found = _assess_kernel(
            self._state(),
            np.asarray(ids, dtype=np.int64),
            *as_floats(t, x, deviation, shortfall, routine),
            self._settings(),
        )
        # The engine learns a batch right after assessing it, with nothing learned in between:
        # the tails found here are the ones learning needs.
        self._last = (ids, t, x, found)
        return Pattern(z, kind, seen, usual)

    def learn(
        self,
        ids: np.ndarray,
        t: np.ndarray,
        x: np.ndarray,
        deviation: np.ndarray,
        weight: np.ndarray,
        seen: np.ndarray,
        shortfall: np.ndarray | None = None,
    ) -> None:
        """Follow every seen point; learn the counts and long-run levels from weighted ones."""
        shortfall = np.zeros(len(ids)) if shortfall is None else shortfall
        last, self._last = self._last, None
        same = last is not None and last[0] is ids and last[1] is t and last[2] is x
        _learn_kernel(
            self._state(),
            np.asarray(ids, dtype=np.int64),
            *as_floats(t, x, deviation, shortfall, weight),
            np.asarray(seen, dtype=np.bool_),
            last[3] if same and last is not None else np.zeros((0, 5)),
            self._settings(),
        )

    def reset(self, ids: np.ndarray) -> None:
        self._last = None
        super().reset(ids)

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self._last = None
        super().load_state_dict(state)

    def adopt(self, ids: np.ndarray) -> None:
        """Take these series' current patterns as normal: the present run and windows start afresh."""
        self._last = None
        self.arrays["run"][ids] = -np.inf
        self.arrays["shortfall"][ids] = 0.0
        self.arrays["spike_count"][ids] = 0.0
        self.arrays["spiking"][ids] = False
        self.arrays["spread_short"][ids] = self.arrays["spread_long"][ids]
        self.arrays["spread_mean"][ids] = 0.0
        self.arrays["pending"][ids] = 0.0
        self.arrays["peak"][ids] = 1.0

    def _state(self) -> _State:
        return _State(**self.arrays)

    def __repr__(self) -> str:
        return (
            f"PatternStatistics(flat={self.flat}, routine={self.routine}, spikes={self.spikes}, "
            f"spread={self.spread})"
        )


@njit(cache=True)
def normal_deviate(tail: float) -> float:
    """The standard normal deviate with upper tail ``tail`` (0 for tails of a half or more).

    Abramowitz and Stegun 26.2.23, absolute error below 5e-4.

    >>> round(normal_deviate(0.025), 2), round(normal_deviate(1e-9), 2), normal_deviate(0.7)
    (1.96, 6.0, 0.0)
    """
    if not tail < 0.5:
        return 0.0
    r = np.sqrt(-2.0 * np.log(max(tail, TAIL_FLOOR)))
    return r - (2.515517 + 0.802853 * r + 0.010328 * r * r) / (
        1.0 + 1.432788 * r + 0.189269 * r * r + 0.001308 * r * r * r
    )


@njit(cache=True)
def _axis(value: float, log_axis: bool) -> float:
    return np.log(value) if log_axis else value


@njit(cache=True)
def _share(count: float, total: float, look: float) -> float:
    """An upper bound (about 97.5%) of the share of past points at a threshold reached ``count`` times.

    Counts are in looks of ``look`` points: ``n`` looks give ``n + 2 sqrt(n + 1) + 1``, three
    where none reached it.  A tail estimated from a handful of looks is uncertain, and a
    p-value should err large.
    """
    looks = count / look
    return min((looks + 2.0 * np.sqrt(looks + 1.0) + 1.0) * look / total, 1.0)


@njit(cache=True)
def _survival(counts, row, offset, spec, s, total, unit, prior_slope):  # type: ignore[no-untyped-def]
    """Share of past points whose statistic reached ``s`` (1 below the first threshold), erring large.

    Each threshold's share is an upper bound given how many past points
    reached it (:func:`_share`), and between thresholds the share falls
    log-linearly along the statistic's axis (its value, or its logarithm for
    a ratio).  Beyond the first threshold no past point reached, the share
    keeps falling exponentially along the axis, no faster than the history
    measured between its two highest thresholds with :data:`_SUPPORT` looks
    each, and no faster than ``prior_slope`` per unit of the axis, or where
    that is NaN, than e-fold per length of the largest value seen (from the
    axis' origin): a series whose runs never exceeded 5 samples is not sure
    of much at 10, and one that has never repeated a value is sure of a great
    deal at 10.  An infinite ``prior_slope`` trusts the measured slope alone
    (for a bounded statistic, whose largest value says little about its
    tail), and falls back on the record's where there is none; a negative one
    is minus the mean of a Poisson count, whose tail the share follows unless
    the history measured a heavier one.

    Points are counted in *looks*: a statistic over a window stays near its
    value for about the window's length, so that many points make one
    observation of it, and the history holds fewer observations than points.
    """
    first, ratio, size, origin, log_axis, look = spec
    if not s >= first or not total > 0:
        return 1.0
    look = look * unit
    k = min(int(np.log(s / first) / np.log(ratio)), size - 1)
    v = _axis(s, log_axis)
    last, supported, below = -1, -1, -1
    for j in range(size):
        if counts[row, offset + j] < look:
            break
        last = j
        if counts[row, offset + j] >= _SUPPORT * look:
            below, supported = supported, j
    if k < last:
        low = _share(counts[row, offset + k], total, look)
        high = _share(counts[row, offset + k + 1], total, look)
        at, beyond = _axis(first * ratio**k, log_axis), _axis(first * ratio ** (k + 1), log_axis)
        return low * (high / low) ** ((v - at) / (beyond - at))
    v_origin = _axis(origin, log_axis)
    if last >= 0:
        v_last = _axis(first * ratio**last, log_axis)
        share_last = _share(counts[row, offset + last], total, look)
    else:
        v_last, share_last = v_origin, 1.0
    if last + 1 >= size:
        return share_last
    v_next = _axis(first * ratio ** (last + 1), log_axis)
    share_next = min(_share(counts[row, offset + last + 1], total, look), share_last)
    if v < v_next:
        return share_last * (share_next / share_last) ** ((v - v_last) / (v_next - v_last))
    if prior_slope < 0:
        # A Poisson count of mean -prior_slope: its own tail, not a constant slope.
        mean = -prior_slope
        poisson = share_next * np.exp(
            (v - v_next) * np.log(mean) - math.lgamma(v + 1.0) + math.lgamma(v_next + 1.0)
        )
        if supported < 0:
            return poisson
        slope = np.inf
    else:
        poisson = 0.0
        record = 1.0 / ((v_last if last >= 0 else v_next) - v_origin)
        slope = record if np.isnan(prior_slope) or (np.isinf(prior_slope) and supported < 0) else prior_slope
    if supported >= 0:
        v_high = _axis(first * ratio**supported, log_axis)
        share_high = _share(counts[row, offset + supported], total, look)
        if below >= 0:
            v_low = _axis(first * ratio**below, log_axis)
            share_low = _share(counts[row, offset + below], total, look)
        else:
            v_low, share_low = v_origin, 1.0
        slope = min(slope, np.log(share_low / share_high) / (v_high - v_low))
    return max(share_next * np.exp(-slope * (v - v_next)), poisson)


@njit(cache=True)
def _count_run(counts, row, length, amount):  # type: ignore[no-untyped-def]
    """Count a finished flat run of ``length`` samples: its points at each position a threshold reaches."""
    first, ratio, size, offset = _FLAT[0], _FLAT[1], _FLAT[2], _OFFSETS[0]
    for j in range(size):
        at = np.ceil(first * ratio**j - 1e-9)
        if length < at:
            break
        counts[row, offset + j] += amount * np.float32(length - at + 1.0)


@njit(cache=True)
def _excursion(counts, pending, peak, row, which, offset, spec, s, tail, amount, tails):  # type: ignore[no-untyped-def]
    """Hold a point of an excursion past the first threshold; count the held ones when it ends."""
    if s >= spec[0]:
        _count(pending, row, offset, spec, s, amount)
        peak[row, which] = min(peak[row, which], np.float32(tail))
        return
    if peak[row, which] < 1.0 or pending[row, offset] > 0:
        share = np.float32(min(tails * peak[row, which] / PROTECT_BELOW, 1.0))
        for j in range(spec[2]):
            counts[row, offset + j] += share * pending[row, offset + j]
            pending[row, offset + j] = 0.0
        peak[row, which] = 1.0


@njit(cache=True)
def _count(counts, row, offset, spec, s, amount):  # type: ignore[no-untyped-def]
    """Add ``amount`` to every threshold ``s`` reaches."""
    first, ratio, size = spec[0], spec[1], spec[2]
    if not s >= first:
        return
    k = min(int(np.log(s / first) / np.log(ratio)), size - 1)
    for j in range(k + 1):
        counts[row, offset + j] += amount


_SPIKE_KEEP = 1.0 - learning_rate(SPIKE_HALFLIFE)
_SPREAD_RATE = learning_rate(SPREAD_HALFLIFE)
_ROUTINE_RATE = learning_rate(ROUTINE_HALFLIFE)
_KEEP = 1.0 - 1.0 / MEMORY


@njit(cache=True)
def _present(s, row, x, deviation, short):  # type: ignore[no-untyped-def]
    """Run length, routine shortfall, spike count, recent mean deviation and spread, this point included."""
    tolerance = max(FLAT_TOLERANCE * s.step[row], 1e-9 * max(1.0, abs(x)))
    length = s.run[row] + 1.0 if abs(x - s.anchor[row]) <= tolerance else 1.0
    missing = s.shortfall[row] + _ROUTINE_RATE * (abs(short) - s.shortfall[row])
    spikes = s.spike_count[row] * _SPIKE_KEEP + (
        1.0 if abs(deviation) > s.spike_level[row] and not s.spiking[row] else 0.0
    )
    clipped = min(max(deviation, -CLIP), CLIP)
    size = abs(clipped - s.spread_mean[row])
    previous = s.spread_short[row]
    spread = size if np.isnan(previous) else previous + _SPREAD_RATE * (size - previous)
    mean = s.spread_mean[row] + _SPREAD_RATE * (clipped - s.spread_mean[row])
    return length, missing, spikes, mean, spread


@njit(cache=True)
def _tails(s, row, length, missing, spikes, spread, settings):  # type: ignore[no-untyped-def]
    """The flat, routine, spike and spread tails of a series now (1 if not watched), and the spread ratio."""
    watch_flat, watch_routine, watch_spikes, watch_spread = settings[0], settings[1], settings[2], settings[3]
    counts, n_row, u = s.counts, s.total[row], s.unit[row]
    busy = watch_flat and s.unchanged[row] <= FLAT_BUSY
    flat = _survival(counts, row, _OFFSETS[0], _FLAT, length, n_row, u, np.nan) if busy else 1.0
    routine = (
        _survival(counts, row, _OFFSETS[1], _ROUTINE, missing, n_row, u, np.inf) if watch_routine else 1.0
    )
    spike = 1.0
    if watch_spikes:
        # Beyond the history a spike count's tail is Poisson's around the window's usual count
        # (as if at least one spike in memory were usual), unless the history measured a heavier one.
        usual_count = max(s.spike_rate[row], 1.0 / MEMORY) / (1.0 - _SPIKE_KEEP)
        spike = _survival(counts, row, _OFFSETS[2], _SPIKES, spikes, n_row, u, -usual_count)
    ratio = spread / s.spread_long[row] if s.spread_long[row] > 0 else 1.0
    wide = _survival(counts, row, _OFFSETS[3], _SPREAD, ratio, n_row, u, np.nan) if watch_spread else 1.0
    return flat, routine, spike, wide, ratio


@njit(cache=True)
def _assess_kernel(s, ids, t, x, deviation, short, routine, settings):  # type: ignore[no-untyped-def]
    tails = settings[4]
    n = len(ids)
    z = np.zeros(n)
    kind = np.zeros(n, dtype=np.int8)
    seen, usual = np.full(n, np.nan), np.full(n, np.nan)
    found = np.empty((n, 5))
    for i in range(n):
        row = ids[i]
        length, missing, spikes, _, spread = _present(s, row, x[i], deviation[i], short[i])
        flat, routine_tail, spike, wide, ratio = _tails(s, row, length, missing, spikes, spread, settings)
        found[i, 0], found[i, 1], found[i, 2], found[i, 3], found[i, 4] = (
            flat,
            routine_tail,
            spike,
            wide,
            ratio,
        )
        if not (s.total[row] >= WARMUP_POINTS * s.unit[row] and t[i] - s.first_t[row] >= WARMUP_SECONDS):
            continue
        best = min(flat, routine_tail, spike, wide)
        if best >= 1.0:
            continue
        # A stuck series is also calm and off its routine: flat names it first.
        if flat == best:
            kind[i], z[i] = FLAT, -1.0
            seen[i] = t[i] - s.run_start[row] if length > 1 else 0.0
            usual[i] = s.longest[row]
        elif routine_tail == best:
            # A burst that did not come leaves the series low; a dip, high.
            side = s.routine_side[row] if short[i] == 0 else (1 if short[i] > 0 else -1)
            kind[i], z[i] = ROUTINE, -1.0 if side > 0 else 1.0
            seen[i] = missing
            usual[i] = routine[i]
        elif spike == best:
            kind[i], z[i] = SPIKES, 1.0
            seen[i] = spikes
            usual[i] = s.spike_rate[row] / (1.0 - _SPIKE_KEEP)
        else:
            kind[i], z[i] = SPREAD, 1.0
            seen[i] = ratio
            usual[i] = _ordinary(s.counts, row, _OFFSETS[3], s.total[row])
        z[i] *= normal_deviate(min(tails * best, 1.0))
        if z[i] == 0:
            kind[i] = 0
    return z, kind, seen, usual, found


@njit(cache=True)
def _ordinary(counts, row, offset, total):  # type: ignore[no-untyped-def]
    """The largest spread multiple that a thousandth of past points reached (1 if none)."""
    first, ratio, size = _SPREAD[0], _SPREAD[1], _SPREAD[2]
    reached = 1.0
    for j in range(size):
        if counts[row, offset + j] >= 1e-3 * total:
            reached = first * ratio**j
    return reached


@njit(cache=True)
def _learn_kernel(s, ids, t, x, deviation, short, weight, seen, found, settings):  # type: ignore[no-untyped-def]
    tails = settings[4]
    for i in range(len(ids)):
        row, w = ids[i], weight[i]
        if not (seen[i] or w > 0):
            continue
        length, missing, spikes, mean, spread = _present(s, row, x[i], deviation[i], short[i])
        beyond = abs(deviation[i]) > s.spike_level[row]
        finished = s.run[row] if length == 1.0 else 0.0
        finished_span = s.run_span[row]
        if length == 1.0:
            s.anchor[row], s.run_start[row] = x[i], t[i]
        if w > 0:
            if np.isnan(s.first_t[row]):
                s.first_t[row] = t[i]
            # Each statistic learns less from a point its own tail already flags, as the engine
            # does for point deviations: a stuck run must not teach that stuck runs are normal.
            if len(found):
                flat, routine_tail, spike, wide, ratio = (
                    found[i, 0],
                    found[i, 1],
                    found[i, 2],
                    found[i, 3],
                    found[i, 4],
                )
            else:
                flat, routine_tail, spike, wide, ratio = _tails(
                    s, row, length, missing, spikes, spread, settings
                )
            u = s.unit[row] / _KEEP
            if u > _RESCALE_AT:
                for j in range(_THRESHOLDS):
                    s.counts[row, j] /= np.float32(u)
                    s.pending[row, j] /= np.float32(u)
                s.total[row] /= u
                u = 1.0
            s.unit[row] = u
            s.total[row] += w * u
            rate = max(1.0 - _KEEP, 1.0 / (s.total[row] / u + 1.0)) * w
            flat_w = min(tails * flat / PROTECT_BELOW, 1.0)
            spike_w = min(tails * spike / PROTECT_BELOW, 1.0)
            wide_w = min(tails * wide / PROTECT_BELOW, 1.0)
            # A flat run is counted when it ends, so a run in progress never vouches for itself,
            # and one that ended while flagged is not counted at all; nor is it the longest run,
            # the explanation's "never flat for more than", which must not include the incident.
            s.longest[row] *= np.float32(_KEEP)
            if finished >= 2.0:
                ended = _survival(s.counts, row, _OFFSETS[0], _FLAT, finished, s.total[row], u, np.nan)
                ended_w = min(tails * ended / PROTECT_BELOW, 1.0)
                _count_run(s.counts, row, finished, np.float32(w * u * ended_w))
                if ended_w >= 1.0:
                    s.longest[row] = max(s.longest[row], finished_span)
            # An excursion of a windowed statistic into its tail is counted when it ends, weighed
            # by its most extreme tail: like a flat run, it must not vouch for itself while it lasts.
            amount = np.float32(w * u)
            _excursion(
                s.counts,
                s.pending,
                s.peak,
                row,
                0,
                _OFFSETS[1],
                _ROUTINE,
                missing,
                routine_tail,
                amount,
                tails,
            )
            _excursion(
                s.counts, s.pending, s.peak, row, 1, _OFFSETS[2], _SPIKES, spikes, spike, amount, tails
            )
            if s.spread_long[row] > 0:
                _excursion(
                    s.counts, s.pending, s.peak, row, 2, _OFFSETS[3], _SPREAD, ratio, wide, amount, tails
                )
            size = abs(min(max(deviation[i], -CLIP), CLIP) - s.spread_mean[row])
            long = s.spread_long[row]
            s.spread_long[row] = size if np.isnan(long) else long + rate * wide_w * (size - long)
            s.spike_rate[row] += (
                rate * spike_w * ((1.0 if beyond and not s.spiking[row] else 0.0) - s.spike_rate[row])
            )
            moved = s.spike_level[row] * np.exp(
                SPIKE_STEP * w * spike_w * ((1.0 if beyond else 0.0) - SPIKE_SHARE)
            )
            s.spike_level[row] = max(moved, SPIKE_Z)
            change = abs(x[i] - s.last_x[row])
            if np.isfinite(change):
                s.step[row] += rate * flat_w * (change - s.step[row])
                s.unchanged[row] += rate * flat_w * ((1.0 if length > 1.0 else 0.0) - s.unchanged[row])
        s.run[row] = length
        s.run_span[row] = t[i] - s.run_start[row]
        s.shortfall[row] = missing
        if short[i] != 0:
            s.routine_side[row] = 1 if short[i] > 0 else -1
        s.spike_count[row] = spikes
        s.spiking[row] = beyond
        s.spread_mean[row] = mean
        s.spread_short[row] = spread
        s.last_x[row] = x[i]

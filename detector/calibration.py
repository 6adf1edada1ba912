"""Turn a model's deviation into a calibrated tail probability.

Method, and why
---------------
Each series keeps an exponentially decayed histogram of its own past
deviations, on the axis ``u = asinh(z)``: linear near zero, logarithmic in
the tails, so 80 bins cover |z| from 0 to ~1500 with the resolution where it
matters.  The p-value of a new deviation is the decayed fraction of past
deviations at least as extreme (the empirical, conformal-style p-value,
computed *before* the point is added, so it is honest under exchangeability),
interpolated geometrically inside a bin.  Where the past holds too few points
that extreme to say (beyond the last occupied bins), the tail is extrapolated
as in SPOT (Siffer et al., KDD 2017): peaks over a high threshold follow a
generalised Pareto law, fitted here in ``u`` space to the top of the
histogram, by the method of moments.

Why not the alternatives: a Gaussian tail on z is badly wrong for heavy-tailed
and count data; a full conformal p-value needs every past score (kilobytes per
series); DSPOT keeps a list of peaks per series, which grows.  The histogram is
fixed-size (640 bytes), vectorises over many series, adapts to the series'
recent normal behaviour through its decay, and is exact in the body of the
distribution where the alert thresholds (p around 1e-2..1e-4) usually sit.

Ties (count data, flat series) would make a plain empirical p-value lumpy, so
the position inside a bin is randomised for tied values, and the engine
dithers integer-valued series by a uniform half-unit before modelling them:
the randomised probability integral transform for discrete data (Brockwell
2007; Czado, Gneiting and Held 2009).  The randomness comes from a counter-based
hash (:meth:`TailCalibrator.noise`), so results are reproducible and do not
depend on batching.

The score leaving the engine is ``anomaly_score = 1 - p``.

The per-point arithmetic runs in loops compiled by numba (cached on disk after
the first run): one pass over each series' histogram reads both tails, and one
more learns the point and finds the band edges, where numpy would build dozens
of temporaries per batch.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numba import njit

from models.base import ArrayState, FieldSpecs

Direction = Literal["both", "high", "low"]

_BINS = 80
_U_MAX = 8.0
_EDGES = np.linspace(-_U_MAX, _U_MAX, _BINS + 1)
_WIDTH = float(_EDGES[1] - _EDGES[0])
_CENTERS = 0.5 * (_EDGES[:-1] + _EDGES[1:])
#: Deviations at the edges: where a band ends.
_EDGE_Z = np.sinh(_EDGES)
#: Past points needed beyond a deviation for the empirical tail to be trusted.
_TAIL_SUPPORT = 1.0
#: Mass (as a fraction, or at least this many points) used to fit the tail.
_TAIL_FIT_FRACTION = 0.02
_TAIL_FIT_POINTS = 10.0
_RESCALE_AT = 1e12
#: Decades below the fitting threshold that a light-tailed GPD fit is trusted.
_TRUSTED_DECADES = 2.0


#: Halvings that narrow 0 .. _BINS down to one edge.
_SEARCH_STEPS = int(np.ceil(np.log2(_BINS + 1)))


@njit(cache=True)
def _splitmix(seed: np.uint64, counter: np.uint64) -> float:
    """SplitMix64 of (seed, counter) as a float in (0, 1)."""
    z = seed + counter * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (np.float64(z >> np.uint64(11)) + 0.5) / 9007199254740992.0


@njit(cache=True)
def _noise_kernel(seeds: np.ndarray, seen: np.ndarray, ids: np.ndarray, stream: int) -> np.ndarray:
    out = np.empty(len(ids))
    for i in range(len(ids)):
        row = ids[i]
        out[i] = _splitmix(seeds[row], np.uint64(seen[row] * 4.0 + stream))
    return out


@njit(cache=True)
def _bin_of(z: float) -> tuple[float, int]:
    """Position on the asinh axis and the histogram bin of a deviation."""
    return _bin_at(np.arcsinh(z))


@njit(cache=True)
def _bin_at(u: float) -> tuple[float, int]:
    """A position on the asinh axis, kept inside it, and its histogram bin."""
    position = min(max(u, -_U_MAX), _U_MAX - 1e-9)
    return position, min(int((position + _U_MAX) / _WIDTH), _BINS - 1)


@njit(cache=True)
def _floor(seen: float, warmup: float) -> float:
    """No p-value below 1/(seen+1) while warming up: five points cannot be sure."""
    return 1.0 / (seen + 1.0) if seen < warmup else 1e-12


# The kernels work in phases (positions, then memory reads, then arithmetic)
# rather than one point at a time: with 100k series the histograms do not fit
# in cache, and a loop with nothing but independent reads lets the CPU fetch
# many rows at once.


@njit(cache=True)
def _survival_kernel(
    stored: np.ndarray,
    unit: np.ndarray,
    seen: np.ndarray,
    seeds: np.ndarray,
    ids: np.ndarray,
    z: np.ndarray,
    warmup: float,
) -> tuple[np.ndarray, np.ndarray]:
    """P(Z >= z) and P(Z <= z) of each deviation under its series' histogram.

    Empirical where the histogram holds enough mass that far out, else the
    extrapolated tail; never below the warm-up floor.
    """
    n = len(ids)
    position, index = np.empty(n), np.empty(n, dtype=np.int64)
    for i in range(n):
        position[i], index[i] = _bin_of(z[i])
    cells = np.empty((n, 5))
    for i in range(n):
        row, k = ids[i], index[i]
        cells[i, 0] = stored[row, 0]
        cells[i, 1] = stored[row, k]
        cells[i, 2] = stored[row, k + 1]
        cells[i, 3] = unit[row]
        cells[i, 4] = seen[row]
    high, low = np.empty(n), np.empty(n)
    for i in range(n):
        total, count = cells[i, 0], cells[i, 0] / cells[i, 3]
        floor = _floor(cells[i, 4], warmup)
        row = ids[i]
        inside = min(max((position[i] - _EDGES[index[i]]) / _WIDTH, 0.0), 1.0)
        for upper in (True, False):
            if upper:
                at_mass, beyond_mass, depth = cells[i, 1], cells[i, 2], inside
            else:
                # P(Z <= z) is P(-Z >= -z): the same bin read mirrored, from its other end.
                at_mass, beyond_mass, depth = total - cells[i, 2], total - cells[i, 1], 1.0 - inside
            # Tied values (counts, flat series) all land on one spot in a bin
            # holding most of the series' mass: randomising their position
            # makes the p-value uniform anyway.
            if (at_mass - beyond_mass) > 0.5 * total:
                depth = _splitmix(seeds[row], np.uint64(cells[i, 4] * 4.0 + (1 if upper else 0)))
            value, thin = _bin_survival(at_mass, beyond_mass, total, count, depth, _TAIL_SUPPORT)
            if thin:
                far = position[i] if upper else -position[i]
                fit = fit_tail(stored, row, cells[i, 3], upper, _TAIL_FIT_FRACTION)
                value = _fitted_survival(fit, far)
            value = min(max(value, floor), 1.0)
            if upper:
                high[i] = value
            else:
                low[i] = value
    return high, low


@njit(cache=True)
def _bin_survival(
    at_mass: float, beyond_mass: float, total: float, count: float, depth: float, support: float
):  # type: ignore[no-untyped-def]
    """Survival at ``depth`` (0..1) into a bin, interpolated geometrically, and whether it is thin."""
    if not count > 0:
        return 1.0, False
    at_bin, beyond_bin = at_mass / total, beyond_mass / total
    value = at_bin * (beyond_bin / at_bin) ** depth if beyond_bin > 0 else at_bin * (1.0 - depth)
    return value, value * count < support


@njit(cache=True)
def _update_kernel(
    stored: np.ndarray,
    unit: np.ndarray,
    seen: np.ndarray,
    ids: np.ndarray,
    z: np.ndarray,
    weight: np.ndarray,
    growth: float,
    p_high: np.ndarray,
    p_low: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Learn each point (weight 0: don't), then find each series' band edges.

    A band edge is the first histogram edge at which the one-sided survival is
    at or below the given p (NaN p: no band that side), found by binary search
    while the row just updated is still in cache.
    """
    n = len(ids)
    index = np.empty(n, dtype=np.int64)
    for i in range(n):
        index[i] = _bin_of(z[i])[1]
    upper_z, lower_z = np.full(n, np.nan), np.full(n, np.nan)
    for i in range(n):
        row = ids[i]
        if weight[i] > 0:
            grown = unit[row] * growth
            add = weight[i] * grown
            for k in range(index[i] + 1):
                stored[row, k] += add
            unit[row] = grown
            seen[row] += 1.0
            # The unit grows instead of every bin decaying; rescale before it overflows.
            if grown > _RESCALE_AT:
                stored[row, :] /= grown
                unit[row] = 1.0
        if not np.isnan(p_high[i]):
            upper_z[i] = _EDGE_Z[_first_edge_below(stored, row, 0.0, 1.0, p_high[i] * _mass(stored, row))]
        if not np.isnan(p_low[i]):
            total = stored[row, 0]
            lower_z[i] = -_EDGE_Z[_first_edge_below(stored, row, total, -1.0, p_low[i] * _mass(stored, row))]
    return upper_z, lower_z


@njit(cache=True)
def _mass(stored: np.ndarray, row: int) -> float:
    """A series' histogram mass, 1 for an empty one (every tail is then 0 of 1)."""
    return stored[row, 0] if stored[row, 0] > 0 else 1.0


@njit(cache=True)
def _first_edge_below(stored: np.ndarray, row: int, offset: float, sign: float, mass_limit: float) -> int:
    """Binary search for the first edge whose tail mass is at or below the limit (NaN: the last edge).

    The tail mass at an edge is ``stored[edge]`` on the high side (``offset``
    0, ``sign`` 1) and ``total - stored[BINS - edge]`` on the low side, the
    histogram read mirrored.  Branch-free steps: the outcome of each
    comparison is random, so branches would mostly be mispredicted.
    """
    low, high = 0, _BINS
    for _ in range(_SEARCH_STEPS):
        middle = (low + high) >> 1
        cell = middle if sign > 0 else _BINS - middle
        below = offset + sign * stored[row, cell] <= mass_limit
        high = middle if below else high
        low = low if below else middle + 1
    return high


@njit(cache=True)
def _pareto_survival(y: float, shape: float, scale: float) -> float:
    """GPD survival, continued exponentially where a light-tailed fit would end.

    A negative shape gives a tail with an end point, beyond which everything is
    "impossible" — too strong a claim from a few dozen points.  Past the point
    where the fit has fallen by ``_TRUSTED_DECADES``, the tail continues with
    the hazard rate the fit has there, so far-out points stay ordered by how
    far out they are.
    """
    light = shape < -1e-6
    safe_shape = 1e-6 if abs(shape) < 1e-6 else shape
    drop = 10.0**-_TRUSTED_DECADES
    join = scale * (drop**-safe_shape - 1.0) / safe_shape if light else np.inf
    if y > join:
        hazard = 1.0 / (scale + safe_shape * join)
        return drop * np.exp(-(y - join) * hazard)
    return max(1.0 + safe_shape * y / scale, 1e-300) ** (-1.0 / safe_shape)


@njit(cache=True)
def _tail_mass(stored: np.ndarray, row: int, k: int, upper: bool) -> float:
    """Mass at or beyond edge k on one side (the low side reads the histogram mirrored)."""
    return stored[row, k] if upper else stored[row, 0] - stored[row, _BINS - k]


@njit(cache=True)
def fit_tail(stored: np.ndarray, row: int, unit: float, upper: bool, fit_fraction: float):  # type: ignore[no-untyped-def]
    """Generalised Pareto tail in u fitted to the top of one side of the histogram (SPOT).

    Returns the threshold (on the u axis), the mass beyond it (a share), and
    the shape and scale of the excesses.

    The shape and scale come from the method of moments on the excesses over
    the threshold; a negative shape (a light tail, as for Gaussian data)
    bounds the tail, a positive one (heavy tail) stretches it.
    """
    total = stored[row, 0]
    count = total / unit
    need = min(max(fit_fraction * total, _TAIL_FIT_POINTS * total / count), total)
    # Threshold: the highest edge with at least `need` mass at or beyond it.
    threshold_bin = 0
    for k in range(_BINS - 1, -1, -1):
        if _tail_mass(stored, row, k, upper) >= need:
            threshold_bin = k
            break
    threshold_u = _EDGES[threshold_bin]
    tail_mass, first_moment = 0.0, 0.0
    for k in range(threshold_bin, _BINS):
        in_bin = _tail_mass(stored, row, k, upper) - _tail_mass(stored, row, k + 1, upper)
        tail_mass += in_bin
        first_moment += in_bin * (_CENTERS[k] - threshold_u)
    tail_mass = max(tail_mass, 1e-300)
    mean = max(first_moment / tail_mass, 0.5 * _WIDTH)
    second_moment = 0.0
    for k in range(threshold_bin, _BINS):
        in_bin = _tail_mass(stored, row, k, upper) - _tail_mass(stored, row, k + 1, upper)
        second_moment += in_bin * (_CENTERS[k] - threshold_u - mean) ** 2
    # A bin's mass is spread over its width: add that spread's variance.
    variance = max(second_moment / tail_mass + _WIDTH**2 / 12.0, 1e-12)
    ratio = mean**2 / variance
    shape = min(max(0.5 * (1.0 - ratio), -0.5), 0.5)
    scale = 0.5 * mean * (1.0 + ratio)
    p_threshold = _tail_mass(stored, row, threshold_bin, upper) / total
    return threshold_u, p_threshold, shape, scale


@njit(cache=True)
def _fitted_survival(fit, u: float) -> float:  # type: ignore[no-untyped-def]
    """The tail fitted by :func:`fit_tail` at position ``u``."""
    threshold_u, p_threshold, shape, scale = fit
    return p_threshold * _pareto_survival(max(u - threshold_u, 0.0), shape, scale)


@njit(cache=True)
def upper_survival_at(  # type: ignore[no-untyped-def]
    stored: np.ndarray, unit: np.ndarray, row: int, u: float, support: float, fit
) -> float:
    """P(Z >= z) of one series at position ``u`` of the asinh axis, with its tail fit given.

    For callers that evaluate one series at many points (solving for a
    level): the fit (from :func:`fit_tail`) is done once.  No tie
    randomisation and no warm-up floor: the caller's values are continuous.
    """
    total = stored[row, 0]
    if not total > 0:
        return 1.0
    position, k = _bin_at(u)
    depth = min(max((position - _EDGES[k]) / _WIDTH, 0.0), 1.0)
    value, thin = _bin_survival(stored[row, k], stored[row, k + 1], total, total / unit[row], depth, support)
    if thin:
        value = _fitted_survival(fit, position)
    return min(value, 1.0)


class TailCalibrator(ArrayState):
    """Per-series calibrated tail probabilities for signed deviations.

    Parameters
    ----------
    memory
        Effective number of recent points the histogram remembers (decay
        ``1 - 1/memory`` per point).
    warmup
        Points a series needs before its probabilities are reported as
        calibrated; before that :meth:`p_value` still answers, but never below
        ``1 / (seen + 1)`` and the caller is told the series is warming up.
    direction
        ``"both"`` (two-sided, ``p = 2 min(P(Z >= z), P(Z <= z))``), ``"high"``
        or ``"low"``.

    Examples
    --------
    >>> import numpy as np
    >>> cal = TailCalibrator(memory=5000, warmup=100)
    >>> cal.resize(1)
    >>> rng = np.random.default_rng(0)
    >>> ids = np.array([0])
    >>> for z in rng.standard_normal(3000):
    ...     cal.learn(ids, np.array([z]), np.ones(1))
    >>> p = cal.p_value(ids, np.array([3.0]))
    >>> bool(0.001 < p[0] < 0.01)  # two-sided Gaussian p at z=3 is 0.0027
    True
    """

    def __init__(self, memory: float = 10_000.0, warmup: int = 100, direction: Direction = "both"):
        if memory < 10:
            raise ValueError(f"calibration memory must be at least 10 points, got {memory}")
        if direction not in ("both", "high", "low"):
            raise ValueError(f"direction must be 'both', 'high' or 'low', got {direction!r}")
        self.memory = memory
        self.warmup = warmup
        self.direction: Direction = direction
        self._growth = 1.0 / (1.0 - 1.0 / memory)
        super().__init__()

    def field_specs(self) -> FieldSpecs:
        return {
            # mass_at_or_above[k]: decayed weight of past deviations in bins >= k
            "mass_at_or_above": (np.float64, (_BINS + 1,), 0.0),
            "unit": (np.float64, (), 1.0),
            "seen": (np.float64, (), 0.0),
            "seed": (np.uint64, (), 0),
        }

    def set_seeds(self, ids: np.ndarray, seeds: np.ndarray) -> None:
        """Give series stable seeds (e.g. a hash of their labels) for tie-breaking."""
        self.arrays["seed"][ids] = seeds

    def noise(self, ids: np.ndarray, stream: int) -> np.ndarray:
        """Reproducible uniform (0, 1) numbers for each series' next point.

        Drawn from (series seed, points seen, stream), so the same series at the
        same point always gets the same number, however it was batched.
        """
        return _noise_kernel(self.arrays["seed"], self.arrays["seen"], _as_ids(ids), stream)

    def effective_count(self, ids: np.ndarray) -> np.ndarray:
        """How many recent points the histogram holds, after decay."""
        return self.arrays["mass_at_or_above"][ids, 0] / self.arrays["unit"][ids]

    def warming(self, ids: np.ndarray) -> np.ndarray:
        return self.arrays["seen"][ids] < self.warmup

    def _survival(self, ids: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """P(Z >= z) and P(Z <= z) from the decayed histogram."""
        return _survival_kernel(
            self.arrays["mass_at_or_above"],
            self.arrays["unit"],
            self.arrays["seen"],
            self.arrays["seed"],
            _as_ids(ids),
            np.asarray(z, dtype=np.float64),
            float(self.warmup),
        )

    def p_value(self, ids: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Tail probability of each deviation under its series' past deviations."""
        high, low = self._survival(ids, z)
        if self.direction == "high":
            return high
        if self.direction == "low":
            return low
        return np.minimum(1.0, 2.0 * np.minimum(high, low))

    def quantile(self, ids: np.ndarray, p: np.ndarray, upper: bool) -> np.ndarray:
        """The signed deviation beyond which a one-sided p-value drops to ``p``.

        Used to draw the expected band: ``expected + quantile * scale`` is how
        far a point may go on that side without being judged that unusual.
        """
        ids = _as_ids(ids)
        p = np.broadcast_to(np.asarray(p, dtype=np.float64), ids.shape)
        none = np.full(len(ids), np.nan)
        high, low = (p, none) if upper else (none, p)
        upper_z, lower_z = self.learn_and_band(ids, none, np.zeros(len(ids)), high, low)
        return upper_z if upper else lower_z

    def learn(self, ids: np.ndarray, z: np.ndarray, weight: np.ndarray) -> None:
        """Add each deviation to its series' histogram with the given weight."""
        none = np.full(len(ids), np.nan)
        self.learn_and_band(ids, z, weight, none, none)

    def learn_and_band(
        self, ids: np.ndarray, z: np.ndarray, weight: np.ndarray, p_high: np.ndarray, p_low: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`learn`, then the band edges (as :meth:`quantile`) at one-sided ``p_high``, ``p_low``.

        One pass over each series' histogram instead of three; weight 0 learns
        nothing, a NaN p gives a NaN edge.  Returns (upper, lower) deviations.
        """
        return _update_kernel(
            self.arrays["mass_at_or_above"],
            self.arrays["unit"],
            self.arrays["seen"],
            _as_ids(ids),
            *(np.ascontiguousarray(a, dtype=np.float64) for a in (z, weight)),
            self._growth,
            *(np.ascontiguousarray(a, dtype=np.float64) for a in (p_high, p_low)),
        )


def _as_ids(ids: np.ndarray) -> np.ndarray:
    """Row ids as the int64 array the compiled kernels are typed for."""
    return np.asarray(ids, dtype=np.int64)

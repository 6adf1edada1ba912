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
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from models.base import ArrayState, FieldSpecs

Direction = Literal["both", "high", "low"]

_BINS = 80
_U_MAX = 8.0
_EDGES = np.linspace(-_U_MAX, _U_MAX, _BINS + 1)
_WIDTH = float(_EDGES[1] - _EDGES[0])
_CENTERS = 0.5 * (_EDGES[:-1] + _EDGES[1:])
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


def _uniform_hash(seed: np.ndarray, counter: np.ndarray) -> np.ndarray:
    """SplitMix64 of (seed, counter) as floats in (0, 1): reproducible noise."""
    z = seed.astype(np.uint64) + counter.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def _pareto_survival(y: np.ndarray, shape: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """GPD survival, continued exponentially where a light-tailed fit would end.

    A negative shape gives a tail with an end point, beyond which everything is
    "impossible" — too strong a claim from a few dozen points.  Past the point
    where the fit has fallen by ``_TRUSTED_DECADES``, the tail continues with
    the hazard rate the fit has there, so far-out points stay ordered by how
    far out they are.
    """
    light = shape < -1e-6
    safe_shape = np.where(np.abs(shape) < 1e-6, 1e-6, shape)
    drop = 10.0**-_TRUSTED_DECADES
    join = np.where(light, scale * (drop**-safe_shape - 1.0) / safe_shape, np.inf)
    within = np.minimum(y, join)
    survival = np.power(np.maximum(1.0 + safe_shape * within / scale, 1e-300), -1.0 / safe_shape)
    hazard = 1.0 / (scale + safe_shape * np.where(light, join, 0.0))
    beyond = np.maximum(y - join, 0.0)
    return np.where(y > join, drop * np.exp(-beyond * hazard), survival)


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
        counter = self.arrays["seen"][ids] * 4 + stream
        return _uniform_hash(self.arrays["seed"][ids], counter)

    def effective_count(self, ids: np.ndarray) -> np.ndarray:
        """How many recent points the histogram holds, after decay."""
        return self.arrays["mass_at_or_above"][ids, 0] / self.arrays["unit"][ids]

    def warming(self, ids: np.ndarray) -> np.ndarray:
        return self.arrays["seen"][ids] < self.warmup

    def _locate(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = np.clip(np.arcsinh(z), -_U_MAX, _U_MAX - 1e-9)
        position = (u + _U_MAX) / _WIDTH
        index = np.minimum(position.astype(np.int64), _BINS - 1)
        return u, index

    def _survival(self, ids: np.ndarray, z: np.ndarray, upper: bool) -> np.ndarray:
        """P(Z >= z) (``upper``) or P(Z <= z) from the decayed histogram."""
        stored = self.arrays["mass_at_or_above"]
        total = stored[ids, 0]
        if not upper:
            z = -z
        u, index = self._locate(z)
        # Read single cells, not whole rows: gathering rows costs 80 copies per point.
        if upper:
            at_mass = stored[ids, index]
            beyond_mass = stored[ids, index + 1]
        else:
            # P(Z <= z) is P(-Z >= -z): the histogram read mirrored.
            at_mass = total - stored[ids, _BINS - index]
            beyond_mass = total - stored[ids, _BINS - index - 1]
        safe_total = np.where(total > 0, total, 1.0)
        at_bin = at_mass / safe_total
        beyond_bin = beyond_mass / safe_total
        inside = np.clip((u - _EDGES[index]) / _WIDTH, 0.0, 1.0)
        # Tied values (counts, flat series) all land on one spot in a bin: a
        # bin holding most of the series' mass.  Randomising their position
        # makes the p-value uniform anyway.
        tied = (at_mass - beyond_mass) > 0.5 * total
        inside = np.where(tied, self.noise(ids, stream=int(upper)), inside)
        with np.errstate(divide="ignore", invalid="ignore"):
            geometric = at_bin * np.power(np.where(at_bin > 0, beyond_bin / at_bin, 0.0), inside)
        survival = np.where(beyond_bin > 0, geometric, at_bin * (1.0 - inside))
        count = total / self.arrays["unit"][ids]
        thin = survival * count < _TAIL_SUPPORT
        if np.any(thin & (count > 0)):
            pick = np.nonzero(thin & (count > 0))[0]
            mass = stored[ids[pick]]
            if not upper:
                mass = mass[:, :1] - mass[:, ::-1]
            tail = self._extrapolate(mass, u[pick], count[pick])
            survival[pick] = tail
        survival = np.where(count > 0, survival, 1.0)
        floor = np.where(
            self.arrays["seen"][ids] < self.warmup,
            1.0 / (self.arrays["seen"][ids] + 1.0),
            1e-12,
        )
        return np.clip(survival, floor, 1.0)

    @staticmethod
    def _extrapolate(mass: np.ndarray, u: np.ndarray, count: np.ndarray) -> np.ndarray:
        """Generalised Pareto tail in u fitted to the top of the histogram (SPOT).

        The shape and scale come from the method of moments on the excesses
        over the threshold; a negative shape (a light tail, as for Gaussian
        data) bounds the tail, a positive one (heavy tail) stretches it.
        """
        total = mass[:, 0]
        need = np.maximum(_TAIL_FIT_FRACTION * total, _TAIL_FIT_POINTS * total / count)
        need = np.minimum(need, total)
        # Threshold bin: the highest edge with at least `need` mass at or above it.
        enough = mass[:, :-1] >= need[:, None]
        threshold_bin = _BINS - 1 - np.argmax(enough[:, ::-1], axis=1)
        rows = np.arange(len(u))
        threshold_u = _EDGES[threshold_bin]
        in_bins = mass[:, :-1] - mass[:, 1:]
        above = np.arange(_BINS)[None, :] >= threshold_bin[:, None]
        excess_mass = np.where(above, in_bins, 0.0)
        tail_mass = np.maximum(excess_mass.sum(axis=1), 1e-300)
        excess = _CENTERS[None, :] - threshold_u[:, None]
        mean = (excess_mass * excess).sum(axis=1) / tail_mass
        mean = np.maximum(mean, 0.5 * _WIDTH)
        # A bin's mass is spread over its width: add that spread's variance.
        variance = (excess_mass * (excess - mean[:, None]) ** 2).sum(axis=1) / tail_mass
        variance = np.maximum(variance + _WIDTH**2 / 12.0, 1e-12)
        ratio = mean**2 / variance
        shape = np.clip(0.5 * (1.0 - ratio), -0.5, 0.5)
        scale = 0.5 * mean * (1.0 + ratio)
        p_threshold = mass[rows, threshold_bin] / total
        y = np.maximum(u - threshold_u, 0.0)
        return p_threshold * _pareto_survival(y, shape, scale)

    def p_value(self, ids: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Tail probability of each deviation under its series' past deviations."""
        if self.direction == "high":
            return self._survival(ids, z, upper=True)
        if self.direction == "low":
            return self._survival(ids, z, upper=False)
        high = self._survival(ids, z, upper=True)
        low = self._survival(ids, z, upper=False)
        return np.minimum(1.0, 2.0 * np.minimum(high, low))

    def quantile(self, ids: np.ndarray, p: np.ndarray, upper: bool) -> np.ndarray:
        """The signed deviation beyond which a one-sided p-value drops to ``p``.

        Used to draw the expected band: ``expected + quantile * scale`` is how
        far a point may go on that side without being judged that unusual.
        """
        stored = self.arrays["mass_at_or_above"]
        total = stored[ids, 0]
        safe_total = np.where(total > 0, total, 1.0)
        p = np.broadcast_to(np.asarray(p, dtype=np.float64), ids.shape)

        def survival_below(edge: np.ndarray) -> np.ndarray:
            # Low side: P(Z <= -edge) read mirrored, as in _survival.
            mass = stored[ids, edge] if upper else total - stored[ids, _BINS - edge]
            return mass / safe_total <= p

        # Survival only falls with the edge: binary-search the first edge at or
        # below p (single cells, not whole rows); none means the last edge.
        low = np.zeros(len(ids), dtype=np.int64)
        high = np.full(len(ids), _BINS, dtype=np.int64)
        for _ in range(_SEARCH_STEPS):
            middle = (low + high) // 2
            below = survival_below(middle)
            high = np.where(below, middle, high)
            low = np.where(below, low, middle + 1)
        edge = high
        z = np.sinh(_EDGES[edge])
        return z if upper else -z

    def learn(self, ids: np.ndarray, z: np.ndarray, weight: np.ndarray) -> None:
        """Add each deviation to its series' histogram with the given weight."""
        unit = self.arrays["unit"][ids] * self._growth
        _, index = self._locate(z)
        add = (weight * unit)[:, None] * (np.arange(_BINS + 1)[None, :] <= index[:, None])
        self.arrays["mass_at_or_above"][ids] += add
        self.arrays["unit"][ids] = unit
        self.arrays["seen"][ids] += 1.0
        big = unit > _RESCALE_AT
        if np.any(big):
            rescale = ids[big]
            factor = 1.0 / self.arrays["unit"][rescale]
            self.arrays["mass_at_or_above"][rescale] *= factor[:, None]
            self.arrays["unit"][rescale] = 1.0

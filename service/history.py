"""The last few hundred points of the series worth plotting, for the web page.

Scores and bands are computed once, as the samples arrive; the page only draws
what was kept.  A kept series has a ring buffer of ``capacity`` points in
preallocated arrays, so recording a batch is a few vectorised writes and
memory stays fixed: about 25 bytes per point, 6 KB per series at the default
240 points.

At 6 KB a series, a ring for each of a million series would be 6 GB, three
times the engine's own state.  So at most ``max_series`` series keep one (a
*slot*): every series while there are no more than that, and beyond, the
series that earn one: a series gets a slot when it alerts, scores as anomalous
(:data:`INTERESTING_SCORE`) or is looked at (:meth:`RecentHistory.watch`),
taking the slot of the series that earned its own longest ago and is not
alerting now.  A series' plot then starts when it got its slot; older values
are in Prometheus.
"""

from __future__ import annotations

import numpy as np

from detector.engine import ScoredBatch, occurrence_rank
from models.base import ArrayState, FieldSpecs

#: Points kept per series unless told otherwise: an hour at 15 s.
DEFAULT_CAPACITY = 240

#: A point scoring at least this earns its series a slot (the page's "anomalous").
INTERESTING_SCORE = 0.999

#: What is kept of each point, and in which dtype (float32 is plenty for a plot).
_COLUMNS: dict[str, type] = {
    "t": np.float64,
    "value": np.float32,
    "lower": np.float32,
    "upper": np.float32,
    "score": np.float32,
    "alert": np.bool_,
}


class RecentHistory(ArrayState):
    """Ring buffers of the latest points (value, band, score, alert state) of up to ``max_series`` series.

    The arrays have one row per slot; series are named by their engine row.

    Parameters
    ----------
    capacity
        Points kept per series; older ones are overwritten.
    max_series
        Series that keep points at once (None: every series).  See the module docstring.

    Examples
    --------
    >>> from detector.engine import Engine
    >>> from detector.calibration import TailCalibrator
    >>> from detector.policy import AlertPolicy
    >>> from models import RobustEWMA
    >>> engine = Engine(RobustEWMA(), TailCalibrator(), AlertPolicy())
    >>> ids = engine.register(["a", "b", "a", "a", "a"])
    >>> t, x = np.arange(5.0), np.array([10.0, 5.0, 11.0, 12.0, 13.0])
    >>> history = RecentHistory(capacity=3)
    >>> history.record(ids, t, x, engine.process(ids, t, x))
    >>> points = history.series(0)
    >>> points["t"].tolist(), points["value"].tolist()
    ([2.0, 3.0, 4.0], [11.0, 12.0, 13.0])
    >>> history.series(1)["value"].tolist()
    [5.0]
    >>> history.reset(np.array([0]))
    >>> len(history.series(0)["t"])
    0

    With room for one series, the second has none until it is looked at:

    >>> one = RecentHistory(capacity=3, max_series=1)
    >>> one.record(ids, t, x, engine.process(ids, t + 5, x))
    >>> len(one.series(0)["t"]), len(one.series(1)["t"])
    (3, 0)
    >>> one.watch(1)
    >>> len(one.series(0)["t"]), one.kept
    (0, 1)
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY, max_series: int | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"a history needs room for at least one point per series, got {capacity}")
        if max_series is not None and max_series < 1:
            raise ValueError(f"max_series must be at least 1 (or None for every series), got {max_series}")
        self.capacity = capacity
        self.max_series = max_series
        super().__init__()
        #: Per engine row, its slot (-1: none).
        self._slot_of = np.zeros(0, dtype=np.int64)
        #: Per slot, its engine row (-1: free), when its series last earned it, and whether it alerts.
        self._row_of = np.zeros(0, dtype=np.int64)
        self._earned = np.zeros(0, dtype=np.int64)
        self._alerting = np.zeros(0, dtype=bool)
        self._tick = 0

    def field_specs(self) -> FieldSpecs:
        specs: FieldSpecs = {
            name: (dtype, (self.capacity,), False if dtype is np.bool_ else np.nan)
            for name, dtype in _COLUMNS.items()
        }
        # Points ever written; the next one goes to slot written % capacity.
        specs["written"] = (np.int64, (), 0)
        return specs

    @property
    def kept(self) -> int:
        """Series holding a slot now."""
        return int(np.count_nonzero(self._row_of >= 0))

    def record(self, ids: np.ndarray, t: np.ndarray, x: np.ndarray, scored: ScoredBatch) -> None:
        """Append a scored batch; a series may repeat (taken in order), gaps (NaN, inf) are skipped."""
        keep = np.isfinite(x)
        if not keep.any():
            return
        rows = np.asarray(ids, dtype=np.int64)[keep]
        alert = np.asarray(scored.alert)[keep]
        score = np.asarray(scored.anomaly_score, dtype=np.float64)[keep]
        self._tick += 1
        self._fit_rows(int(rows.max()) + 1)
        earning = alert | (score >= INTERESTING_SCORE)
        self._allocate(np.unique(rows[self._slot_of[rows] < 0]), np.unique(rows[earning]))
        slots = self._slot_of[rows]
        self._earned[slots[earning & (slots >= 0)]] = self._tick
        has_slot = slots >= 0
        if not has_slot.any():
            return
        slots = slots[has_slot]
        rank = occurrence_rank(slots)
        count = np.bincount(slots, minlength=self.n_series)
        # Only the last `capacity` points of a series fit: writing the others would
        # put two points in one slot of one call, with no order guaranteed.
        fits = rank >= count[slots] - self.capacity
        chosen = slots[fits]
        written = self.arrays["written"]
        places = (written[chosen] + rank[fits]) % self.capacity
        columns = {
            "t": t,
            "value": x,
            "lower": scored.lower,
            "upper": scored.upper,
            "score": scored.anomaly_score,
            "alert": scored.alert,
        }
        for name, column in columns.items():
            self.arrays[name][chosen, places] = np.asarray(column)[keep][has_slot][fits]
        written += count
        # Each slot's latest alert state: the last point of the slot in this batch.
        last = len(slots) - 1 - np.unique(slots[::-1], return_index=True)[1]
        self._alerting[slots[last]] = alert[has_slot][last]

    def watch(self, row: int) -> None:
        """Someone looks at this series: give it a slot (if it has none) from now on."""
        self._tick += 1
        self._fit_rows(row + 1)
        self._allocate(np.array([row]), np.array([row]))
        slot = self._slot_of[row]
        if slot >= 0:
            self._earned[slot] = self._tick

    def reset(self, ids: np.ndarray) -> None:
        """Forget these series (their rows were released or reused): their slots are free again."""
        rows = np.asarray(ids, dtype=np.int64)
        rows = rows[rows < len(self._slot_of)]
        slots = self._slot_of[rows]
        self._free(slots[slots >= 0])

    def series(self, row: int) -> dict[str, np.ndarray]:
        """One series' kept points, oldest first (copies): ``t, value, lower, upper, score, alert``."""
        slot = int(self._slot_of[row]) if row < len(self._slot_of) else -1
        if slot < 0:
            return {name: np.zeros(0, dtype=dtype) for name, dtype in _COLUMNS.items()}
        written = int(self.arrays["written"][slot])
        filled = min(written, self.capacity)
        order = (written - filled + np.arange(filled)) % self.capacity
        return {name: self.arrays[name][slot, order] for name in _COLUMNS}

    def _fit_rows(self, n_rows: int) -> None:
        if n_rows > len(self._slot_of):
            more = max(n_rows, len(self._slot_of) + len(self._slot_of) // 4) - len(self._slot_of)
            self._slot_of = np.concatenate([self._slot_of, np.full(more, -1, dtype=np.int64)])

    def _allocate(self, new: np.ndarray, earning: np.ndarray) -> None:
        """Slots for the rows ``new`` that have none: for all while there is room, else for those
        ``earning`` one, taking slots of series not alerting, least recently earned first."""
        new = new[self._slot_of[new] < 0]
        if not len(new):
            return
        free = np.flatnonzero(self._row_of < 0)
        if len(free) < len(new):
            limit = len(self._row_of) + len(new) if self.max_series is None else self.max_series
            self._grow_slots(min(limit, len(self._row_of) + len(new) - len(free)))
            free = np.flatnonzero(self._row_of < 0)
        if len(free) < len(new):
            earned = np.isin(new, earning)
            if earned.sum() > len(free):  # only earning series displace others
                taken = np.flatnonzero((self._row_of >= 0) & ~self._alerting)
                taken = taken[np.argsort(self._earned[taken], kind="stable")[: earned.sum() - len(free)]]
                self._free(taken)
                free = np.flatnonzero(self._row_of < 0)
            new = np.concatenate([new[earned], new[~earned]])[: len(free)]
        slots = free[: len(new)]
        super().reset(slots)
        self._row_of[slots] = new
        self._slot_of[new] = slots
        self._earned[slots] = self._tick
        self._alerting[slots] = False

    def _grow_slots(self, need: int) -> None:
        """Room for ``need`` slots (a quarter more, within ``max_series``)."""
        have = len(self._row_of)
        if need <= have:
            return
        total = max(need, have + have // 4)
        if self.max_series is not None:
            total = min(total, self.max_series)
        for name, (dtype, shape, initial) in self.field_specs().items():
            grown: np.ndarray = np.full((total, *shape), initial, dtype=dtype)
            grown[:have] = self.arrays[name][:have]
            self.arrays[name] = grown
        more = total - have
        self._row_of = np.concatenate([self._row_of, np.full(more, -1, dtype=np.int64)])
        self._earned = np.concatenate([self._earned, np.zeros(more, dtype=np.int64)])
        self._alerting = np.concatenate([self._alerting, np.zeros(more, dtype=bool)])

    def _free(self, slots: np.ndarray) -> None:
        if len(slots):
            self._slot_of[self._row_of[slots]] = -1
            self._row_of[slots] = -1
            self._alerting[slots] = False

"""The last few hundred points of every series, for the web page's plots.

Scores and bands are computed once, as the samples arrive; the page only draws
what was kept.  Each series has a ring buffer of ``capacity`` points in
preallocated arrays (one row per engine row), so recording a batch is a few
vectorised writes and memory stays fixed: about 25 bytes per point, 6 KB per
series at the default 240 points.
"""

from __future__ import annotations

import numpy as np

from detector.engine import ScoredBatch, occurrence_rank
from models.base import ArrayState, FieldSpecs

#: Points kept per series unless told otherwise: an hour at 15 s.
DEFAULT_CAPACITY = 240

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
    """Per-series ring buffers of the latest points, value, band, score and alert state.

    Parameters
    ----------
    capacity
        Points kept per series; older ones are overwritten.

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
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"a history needs room for at least one point per series, got {capacity}")
        self.capacity = capacity
        super().__init__()

    def field_specs(self) -> FieldSpecs:
        specs: FieldSpecs = {
            name: (dtype, (self.capacity,), False if dtype is np.bool_ else np.nan)
            for name, dtype in _COLUMNS.items()
        }
        # Points ever written; the next one goes to slot written % capacity.
        specs["written"] = (np.int64, (), 0)
        return specs

    def record(self, ids: np.ndarray, t: np.ndarray, x: np.ndarray, scored: ScoredBatch) -> None:
        """Append a scored batch; a series may repeat (taken in order), gaps (NaN, inf) are skipped."""
        keep = np.isfinite(x)
        if not keep.any():
            return
        ids = np.asarray(ids, dtype=np.int64)[keep]
        self.resize(int(ids.max()) + 1)
        rank = occurrence_rank(ids)
        count = np.bincount(ids, minlength=self.n_series)
        # Only the last `capacity` points of a series fit: writing the others would
        # put two points in one slot of one call, with no order guaranteed.
        fits = rank >= count[ids] - self.capacity
        rows = ids[fits]
        written = self.arrays["written"]
        slots = (written[rows] + rank[fits]) % self.capacity
        columns = {
            "t": t,
            "value": x,
            "lower": scored.lower,
            "upper": scored.upper,
            "score": scored.anomaly_score,
            "alert": scored.alert,
        }
        for name, column in columns.items():
            self.arrays[name][rows, slots] = np.asarray(column)[keep][fits]
        written += count

    def series(self, row: int) -> dict[str, np.ndarray]:
        """One series' kept points, oldest first (copies): ``t, value, lower, upper, score, alert``."""
        if row >= self.n_series:  # registered, but nothing recorded yet
            return {name: np.zeros(0, dtype=dtype) for name, dtype in _COLUMNS.items()}
        written = int(self.arrays["written"][row])
        filled = min(written, self.capacity)
        order = (written - filled + np.arange(filled)) % self.capacity
        return {name: self.arrays[name][row, order] for name in _COLUMNS}

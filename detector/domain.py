"""The range a series lives in, so its expected band stays believable.

A request rate, a latency or a byte count is never negative, and a ratio stays
inside [0, 1]; a band reaching below zero ("expected 0.2 s, between -0.1 and
0.5") tells the reader the detector does not understand the metric.  The
engine remembers the smallest and largest value each series has shown and
clips the expected value and its band to the domain they imply: at least 0 for
a series never seen below 0, at most 1 for one never seen outside [0, 1].
Detection is not affected: deviations and probabilities are computed before
the clipping, so a rate going negative, or a ratio above 1, is still scored.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from models.base import ArrayState, FieldSpecs


class ValueDomain(ArrayState):
    """Per-series smallest and largest value seen, and the clipping they imply.

    Examples
    --------
    >>> import numpy as np
    >>> domain = ValueDomain()
    >>> domain.resize(3)
    >>> ids = np.arange(3)
    >>> domain.observe(ids, np.array([0.2, 0.002, -5.0]))
    >>> domain.observe(ids, np.array([3.5, 0.0, 2.0]))
    >>> floor, ceiling = domain.bounds(ids)
    >>> np.clip(np.array([-0.4, -0.01, -9.0]), floor, ceiling).tolist()
    [0.0, 0.0, -9.0]
    >>> np.clip(np.array([4.0, 1.3, 9.0]), floor, ceiling).tolist()
    [4.0, 1.0, 9.0]
    """

    fields: ClassVar[FieldSpecs] = {
        "lowest": (np.float64, (), np.inf),
        "highest": (np.float64, (), -np.inf),
    }

    def observe(self, ids: np.ndarray, x: np.ndarray) -> None:
        """Widen each series' range by its value (gaps are ignored)."""
        finite = np.isfinite(x)
        rows, values = ids[finite], x[finite]
        np.minimum.at(self.arrays["lowest"], rows, values)
        np.maximum.at(self.arrays["highest"], rows, values)

    def bounds(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each series' floor and ceiling for what is shown (-inf / inf where it has none)."""
        lowest, highest = self.arrays["lowest"][ids], self.arrays["highest"][ids]
        never_negative = lowest >= 0
        unit_interval = never_negative & (highest <= 1)
        return np.where(never_negative, 0.0, -np.inf), np.where(unit_interval, 1.0, np.inf)

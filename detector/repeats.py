"""Which samples are new evidence, and which repeat one already seen.

A detector can be shown one sample several times: an instant query
re-evaluated every 15 s over a series scraped every minute, a range query at a
finer step than the data, Prometheus resending a remote_write request.  Learned
or counted twice, a repeat makes one ordinary excursion look like a sustained
anomaly, so the engine passes only new samples on to the model, the
calibration and the alert policy.

A sample is a repeat when

* its timestamp is not after the last new sample's (a resend, or out of
  order: Prometheus rejects those too), or
* its value equals the last new sample's and less than
  :data:`REPEAT_FRACTION` of the series' *update interval* has passed.

The update interval is measured per series, from the data alone: the
shortest time between changes of value over the first :data:`MIN_CHANGES`
changes, then a low quantile (:data:`QUANTILE`) of it, tracked online in log
space.  A series evaluated faster than it is scraped changes
value only once per scrape, so the quantile is the scrape interval; a series
that changes at every sample gets the evaluation interval, and its equal
values (rare for continuous data, common for counts) are all new.  Until a
series has changed value :data:`MIN_CHANGES` times, nothing is judged a repeat
by value: a series that is nearly constant is not thinned out.

Timestamps are the samples' own where the source has them (remote_write, CSV,
range queries); for instant queries they are the evaluation times, and the
value rule does the work.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numba import njit

from models.base import ArrayState, FieldSpecs

#: The quantile of the time between value changes taken as the update interval.
QUANTILE = 0.05
#: Step of the online quantile, in log-seconds.
_STEP = 0.02
#: Changes of value a series needs before equal values can be judged repeats.
MIN_CHANGES = 10
#: An equal value this share of the update interval after the last new sample is a repeat.
REPEAT_FRACTION = 0.9


class RepeatFilter(ArrayState):
    """Per-series memory of the last new sample and of how often the series updates.

    Examples
    --------
    A series scraped every 60 s but evaluated every 15 s: after a few changes
    of value the filter knows its update interval and keeps one sample in four.

    >>> import numpy as np
    >>> repeats = RepeatFilter()
    >>> repeats.resize(1)
    >>> ids = np.array([0])
    >>> values = np.repeat(np.arange(40.0) % 7, 4)
    >>> new = [bool(repeats.new(ids, np.array([15.0 * i]), values[i : i + 1])[0])
    ...        for i in range(len(values))]
    >>> sum(new[:40]), sum(new[40:])  # all new for 10 changes of value; then one in four
    (40, 30)
    >>> round(float(repeats.arrays["update_interval"][0]) / 60.0, 1)  # in scrapes
    1.0

    A resend (same timestamp) is never new:

    >>> bool(repeats.new(ids, np.array([15.0 * 156]), np.array([5.0]))[0])
    False
    """

    fields: ClassVar[FieldSpecs] = {
        "last_t": (np.float64, (), np.nan),
        "last_x": (np.float64, (), np.nan),
        "last_change_t": (np.float64, (), np.nan),
        "update_interval": (np.float64, (), 0.0),
        "changes": (np.int32, (), 0),
    }

    def new(self, ids: np.ndarray, t: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Whether each sample is new (and remember it if so); each series at most once per batch.

        A gap (NaN or infinite value) is passed on as new: the engine treats it as a gap.
        """
        return _new_kernel(
            *(self.arrays[name] for name in self.fields),
            np.asarray(ids, dtype=np.int64),
            np.asarray(t, dtype=np.float64),
            np.asarray(x, dtype=np.float64),
        )


@njit(cache=True)
def _new_kernel(last_t, last_x, last_change_t, update_interval, changes, ids, t, x):  # type: ignore[no-untyped-def]
    n = len(ids)
    out = np.ones(n, dtype=np.bool_)
    for i in range(n):
        row, now, value = ids[i], t[i], x[i]
        if not np.isfinite(value):
            continue
        if now <= last_t[row]:
            out[i] = False
            continue
        if value == last_x[row]:
            known = changes[row] >= MIN_CHANGES and update_interval[row] > 0
            if known and now - last_t[row] < REPEAT_FRACTION * update_interval[row]:
                out[i] = False
                continue
        else:
            gap = now - last_change_t[row]
            if np.isfinite(gap) and gap > 0:
                if changes[row] >= MIN_CHANGES:
                    below = 1.0 if gap < update_interval[row] else 0.0
                    update_interval[row] *= np.exp(_STEP * (QUANTILE - below))
                elif update_interval[row] == 0 or gap < update_interval[row]:
                    # The shortest of the first gaps: a count may stay equal for a scrape or two.
                    update_interval[row] = gap
                changes[row] = min(changes[row] + 1, 1 << 30)
            last_change_t[row] = now
        last_t[row] = now
        last_x[row] = value
    return out

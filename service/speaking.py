"""Whether a series speaks for the replicas: one that just started stays quiet until it is warm again.

Two replicas of a detector, fed the same data, send the same alerts, and a
clustered Alertmanager keeps one.  That holds while their states agree; a
replica that just started does not know what the other one saw.  So each
series of a replica is *quiet* (scored and learned, shown on the page, but
its points reach no incident: it opens none, resolves none and refreshes
none) until it is warm again:

* A series restored from a checkpoint is **caught up** when its first sample
  after the restart follows the last one the checkpoint holds within
  ``max_gap`` (the checkpoint interval: at most what a checkpoint can miss
  while the process runs) plus two of its sampling intervals.  Pull detectors
  catch up by querying the gap; Prometheus re-sends what remote_write could not
  deliver while the process was down.  A caught-up series speaks from that
  sample on, once its model and calibration are not warming.
* Any other series, new to this process or restored from a checkpoint that
  missed more (stale), speaks once its model and calibration are not warming
  and it has had :meth:`SpeakingGate.needed` live samples in this process: as
  many as the alert policy needs to end an alert (``resolve_after``, at least
  :data:`~detector.policy.MIN_RESOLVE_POINTS`), so a stale alert that ended
  while the replica was away has ended in its state too.  A restored alert
  the series no longer shows when it begins to speak is not the replica's to
  resolve: :attr:`Admission.rejoined` says where to withdraw it.

History replayed to warm-start a series is not live and counts for nothing.
Once a series speaks it keeps speaking for the life of the process.

Examples
--------
A new series whose model is warm from its third point, with an alert policy
that resolves after three points (so three live samples are needed):

>>> gate = SpeakingGate(max_gap=60.0, resolve_after=0.0)
>>> gate.resize(1)
>>> ids, t = np.zeros(4, np.int64), np.arange(4) * 15.0
>>> warming, interval = np.array([True, True, False, False]), np.full(4, 15.0)
>>> gate.admit(ids, t, warming, interval).speaking.tolist()
[False, False, True, True]
>>> gate.reason(0, warming=False, interval=15.0)
''

A restored series that comes back where its checkpoint left off speaks at once:

>>> gate = SpeakingGate(max_gap=60.0, resolve_after=120.0)
>>> gate.restore(np.array([0]), np.array([1000.0]))
>>> gate.reason(0, warming=False, interval=15.0)
'waiting for live data after restart'
>>> gate.admit(np.array([0]), np.array([1015.0]), np.array([False]), np.array([15.0])).speaking.tolist()
[True]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from detector.policy import MIN_RESOLVE_POINTS
from models.base import ArrayState, FieldSpecs

#: A rank past any point of a batch: "never" in the per-series minimum below.
_NEVER = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Admission:
    """Which points of a batch speak, and which restored-but-stale series began speaking at which point.

    ``rejoined`` holds batch positions: the first speaking point of each series
    that was restored from a stale checkpoint (its restored alerts are not
    this replica's to resolve if that point no longer alerts).
    """

    speaking: np.ndarray
    rejoined: np.ndarray


class SpeakingGate(ArrayState):
    """Per series: quiet or speaking, and what it waits for (see the module docstring).

    Parameters
    ----------
    max_gap
        Seconds of data a checkpoint may miss and still count as caught up
        (the service's ``checkpoint_interval``), beyond two sampling intervals.
    resolve_after
        The alert policy's ``resolve_after``: how many live samples a series
        that was not caught up needs before it speaks.
    """

    fields: ClassVar[FieldSpecs] = {
        "speaking": (np.bool_, (), False),
        # Restored from a checkpoint and no live sample yet: the next one decides caught up or stale.
        "pending": (np.bool_, (), False),
        # Restored, with the last sample time the checkpoint holds (NaN otherwise).
        "restored_t": (np.float64, (), np.nan),
        "caught_up": (np.bool_, (), False),
        # Live samples seen in this process while quiet.
        "live": (np.int32, (), 0),
    }

    def __init__(self, max_gap: float, resolve_after: float) -> None:
        super().__init__()
        self.max_gap = float(max_gap)
        self.resolve_after = float(resolve_after)

    def needed(self, interval: np.ndarray | float) -> np.ndarray:
        """Live samples a series that is not caught up needs: what ``resolve_after`` spans, at least 3.

        >>> SpeakingGate(60.0, resolve_after=120.0).needed(np.array([15.0, 60.0, 0.0])).tolist()
        [8, 3, 3]
        """
        interval = np.asarray(interval, dtype=np.float64)
        known = np.isfinite(interval) & (interval > 0)
        spans = np.ceil(self.resolve_after / np.where(known, interval, 1.0) - 1e-9)
        return np.where(known, np.maximum(spans, MIN_RESOLVE_POINTS), MIN_RESOLVE_POINTS).astype(np.int64)

    def restore(self, rows: np.ndarray, last_t: np.ndarray) -> None:
        """Mark rows as restored from a checkpoint whose last samples were at ``last_t``."""
        rows = np.asarray(rows, dtype=np.int64)
        self.resize(int(rows.max()) + 1 if len(rows) else 0)
        self.reset(rows)
        self.arrays["pending"][rows] = True
        self.arrays["restored_t"][rows] = last_t

    def admit(self, ids: np.ndarray, t: np.ndarray, warming: np.ndarray, interval: np.ndarray) -> Admission:
        """Take a batch of live points (series rows ``ids``, each series in time order): which speak.

        ``warming`` and ``interval`` are the engine's per point (model or
        calibration warming; the series' sampling interval).  Updates the state.
        """
        a = self.arrays
        speaking = a["speaking"][ids]
        if speaking.all():
            return Admission(speaking, np.zeros(0, dtype=np.int64))
        quiet = np.nonzero(~speaking)[0]
        order = quiet[np.argsort(ids[quiet], kind="stable")]  # grouped by series, time order kept
        rows = ids[order]
        first = np.r_[True, rows[1:] != rows[:-1]]
        starts = np.nonzero(first)[0]
        rank = np.arange(len(order)) - starts[np.cumsum(first) - 1]
        # A restored series' first live sample says whether its checkpoint was caught up.
        deciding = first & a["pending"][rows]
        if deciding.any():
            decided_rows = rows[deciding]
            gap = t[order][deciding] - a["restored_t"][decided_rows]
            step = interval[order][deciding]
            slack = self.max_gap + 2.0 * np.where(np.isfinite(step) & (step > 0), step, 0.0)
            # A sample at or before the checkpoint's last one is a resend of what the state holds.
            a["caught_up"][decided_rows] = gap <= slack
            a["pending"][decided_rows] = False
        live = a["live"][rows].astype(np.int64) + rank + 1
        enough = a["caught_up"][rows] | (live >= self.needed(interval[order]))
        ready_rank = np.where(~warming[order] & enough, rank, _NEVER)
        from_rank = np.minimum.reduceat(ready_rank, starts)
        group = np.cumsum(first) - 1
        speaks = rank >= from_rank[group]
        speaking[order] = speaks
        began = from_rank != _NEVER
        series = rows[starts]
        stale = ~np.isnan(a["restored_t"][series]) & ~a["caught_up"][series]
        rejoined = order[starts[began & stale] + from_rank[began & stale]]
        counts = np.diff(np.r_[starts, len(order)])
        a["live"][series] = np.minimum(a["live"][series].astype(np.int64) + counts, np.iinfo(np.int32).max)
        a["speaking"][series[began]] = True
        return Admission(speaking, rejoined)

    def reason(self, row: int, warming: bool, interval: float) -> str:
        """Why the series is quiet, for people; ``""`` while it speaks.

        >>> gate = SpeakingGate(max_gap=60.0, resolve_after=120.0)
        >>> gate.resize(1)
        >>> gate.reason(0, warming=True, interval=15.0)
        'warming up: the model and its calibration are still learning'
        >>> gate.reason(0, warming=False, interval=15.0)
        'warming up after start: 0 of 8 live samples seen'
        """
        a = self.arrays
        if a["speaking"][row]:
            return ""
        if a["pending"][row]:
            return "waiting for live data after restart"
        if warming:
            return "warming up: the model and its calibration are still learning"
        needed = int(self.needed(interval if math.isfinite(interval) else 0.0))
        if a["live"][row] >= needed:
            return "warm: speaks from its next live sample"
        seen = f"{int(a['live'][row])} of {needed} live samples seen"
        if not np.isnan(a["restored_t"][row]) and not a["caught_up"][row]:
            return f"its checkpoint missed data; warming up again: {seen}"
        return f"warming up after start: {seen}"

    def quiet_count(self, rows: np.ndarray) -> int:
        """How many of these series are quiet."""
        return int((~self.arrays["speaking"][rows]).sum()) if len(rows) else 0

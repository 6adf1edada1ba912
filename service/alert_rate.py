"""A detector's realized alert rate: how many alerts it opened a day over the last week of its data.

The budget (``false_alerts_per_week`` per series or ``false_alerts_per_day``
per detector, see :mod:`detector.policy`) says how often a detector should
alert on ordinary behaviour; :class:`RecentOnsets` counts how often it did, so
the API and the page can show the two side by side.  Every alert onset counts
(the engine's, one per series whose alert opened), real incidents included:
a rate well above the budget is either real trouble or a budget that does not
hold on this data.

Time is the data's: onsets are placed at their samples' timestamps and the
window ends at the newest sample scored, never at the process clock, so the
catch-up after a restart counts its onsets when they happened and a replay
counts like live data.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

#: The realized rate is counted over this much of the data's time (seconds).
RATE_WINDOW = 7 * 86_400.0
#: Onsets kept at most; past that the window starts where the last one was dropped.
MAX_ONSETS = 100_000


class RecentOnsets:
    """Alert onset times over the last ``window`` seconds of a detector's data.

    The window covered (:attr:`window_seconds`) runs from the first live sample
    (:attr:`since`) to the newest until a whole ``window`` has been seen, then
    slides with the newest sample.  At most ``limit`` onsets are kept: when one
    more arrives the oldest is dropped and the window starts at its time, so
    memory stays bounded and the rate stays honest about what it covers.

    Examples
    --------
    >>> onsets = RecentOnsets()
    >>> onsets.observe(np.array([0.0, 3600.0, 86_400.0]), np.array([False, True, False]))
    >>> onsets.count, onsets.window_seconds, onsets.per_day
    (1, 86400.0, 1.0)
    >>> onsets.observe(np.array([8 * 86_400.0]), np.array([True]))  # a week on: the first one is out
    >>> onsets.count, onsets.window_seconds / 86_400.0, round(onsets.per_day, 3)
    (1, 7.0, 0.143)
    """

    def __init__(self, window: float = RATE_WINDOW, limit: int = MAX_ONSETS) -> None:
        self.window = window
        self.limit = limit
        self.times: deque[float] = deque()
        #: Data time from which onsets were counted (NaN before the first live sample).
        self.since = math.nan
        #: Data time of the newest sample scored (NaN before the first).
        self.newest = math.nan

    def observe(self, t: np.ndarray, onset: np.ndarray) -> None:
        """Count a live batch: its samples' timestamps ``t`` and which of them opened an alert."""
        finite = np.isfinite(t)
        if not finite.any():
            return
        first, last = float(t[finite].min()), float(t[finite].max())
        self.since = first if math.isnan(self.since) else min(self.since, first)
        self.newest = last if math.isnan(self.newest) else max(self.newest, last)
        self.times.extend(np.sort(t[onset & finite]).tolist())
        while len(self.times) > self.limit:
            self.since = max(self.since, self.times.popleft())
        while self.times and self.times[0] < self.start:
            self.times.popleft()

    @property
    def start(self) -> float:
        """Where the window covered begins (data time; NaN before the first live sample)."""
        return max(self.since, self.newest - self.window)

    @property
    def window_seconds(self) -> float:
        """How much of the data's time the count covers: ``window``, or less while younger."""
        covered = self.newest - self.start
        return covered if math.isfinite(covered) else 0.0

    @property
    def count(self) -> int:
        """Onsets in the window (an onset that arrived late, out of time order, still counts once)."""
        start = self.start
        return sum(1 for moment in self.times if moment >= start)

    @property
    def per_day(self) -> float:
        """Alert onsets per day over the window (NaN while it covers no time)."""
        seconds = self.window_seconds
        return self.count / seconds * 86_400.0 if seconds > 0 else math.nan

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON (no NaN), for the checkpoint."""
        ends = {"since": self.since, "newest": self.newest}
        return {"times": list(self.times), **{k: v if math.isfinite(v) else None for k, v in ends.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.times = deque(float(moment) for moment in state["times"])
        self.since, self.newest = (
            math.nan if state[k] is None else float(state[k]) for k in ("since", "newest")
        )

"""Real local stand-ins shared by tests: an HTTP receiver, free ports, a running Alertmanager.

Also two small deterministic stand-ins for time and chance:

>>> clock = FakeClock(100.0)
>>> clock.advance(5)
105.0
>>> clock()
105.0
>>> MaxJitter().uniform(0.0, 8.0)
8.0
"""

from __future__ import annotations

import random


class FakeClock:
    """A clock that moves only when told; call it for the time (Unix seconds)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` and return the new time."""
        self.now += seconds
        return self.now


class MaxJitter(random.Random):
    """A random source whose every draw is the top of its range: backoff becomes its ceiling."""

    def random(self) -> float:
        return 1.0

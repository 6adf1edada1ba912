"""Real local stand-ins shared by tests: an HTTP receiver, free ports, a running Alertmanager.

Also two small deterministic stand-ins for time and chance:

>>> clock = FakeClock(100.0)
>>> clock.advance(5)
105.0
>>> clock()
105.0
>>> MaxJitter().uniform(0.0, 8.0)
8.0

and :func:`wait_until`, to wait for observable state instead of sleeping.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, what: str, every: float = 0.2) -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    Raises AssertionError naming ``what`` after ``timeout`` seconds.

    >>> wait_until(lambda: 42, timeout=1, what="the answer")
    42
    >>> wait_until(lambda: [], timeout=0.05, what="a non-empty list", every=0.01)
    Traceback (most recent call last):
    ...
    AssertionError: timed out after 0.05 s waiting for a non-empty list
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


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

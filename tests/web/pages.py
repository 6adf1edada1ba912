"""Helpers for the web page tests: demo data, a page source, reading rendered pages."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from detector.alerts import AlertEvent
from detector.labels import series_key
from service.runtime import DetectorRuntime

METRIC = "demo_latency_ms"
INSTANCES = ("a", "b", "c")
SPIKING = "b"
STEP = 15.0

#: ``chromium(url, *flags)`` → its standard output (the DOM with ``--dump-dom``).
Browser = Callable[..., str]


def demo_key(instance: str) -> str:
    return series_key({"__name__": METRIC, "instance": instance, "job": "demo"})


def demo_samples(end: float, normal: int = 200, spike: int = 5) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Three latency series in time order: ``normal`` ordinary points, then a spike on one of them.

    The spike lasts ``spike`` points (a series this young errs towards silence:
    the default policy needs a few unusual points in a row to open an alert);
    the other series stay normal throughout.
    """
    rng = np.random.default_rng(7)
    steps = normal + spike
    t = end - STEP * np.arange(steps)[::-1]
    keys: list[str] = []
    times, values = [], []
    for step in range(steps):
        for number, instance in enumerate(INSTANCES):
            value = rng.normal(120.0 + 40.0 * number, 4.0)
            if instance == SPIKING and step >= normal:
                value += 600.0
            keys.append(demo_key(instance))
            times.append(t[step])
            values.append(value)
    return keys, np.array(times), np.array(values)


@dataclass
class FakeSource:
    """A :class:`service.web.PageSource` over real runtimes, with alert events set by the test."""

    runtimes: dict[str, DetectorRuntime]
    now: float = 1_700_000_000.0
    events: list[AlertEvent] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def recent_alerts(self, limit: int) -> list[AlertEvent]:
        return self.events[:limit]


def section(page: str, name: str) -> str:
    """The inside of ``<section id="name">`` in a rendered page."""
    found = re.search(rf'<section id="{name}">(.*?)</section>', page, re.S)
    assert found is not None, f"no section {name!r} in the page"
    return found.group(1)


def listed_keys(page: str) -> list[str]:
    """Series keys listed as anomalous now, in page order."""
    rows = re.findall(r'<tr class="series" data-key="([^"]*)"', section(page, "anomalous"))
    return [html.unescape(row) for row in rows]

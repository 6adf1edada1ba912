"""Prometheus down under a pull detector, in simulated time: no decision while down, no alert after.

A stand-in reader answers like Prometheus over samples scraped every second:
instant and range queries see the newest sample at most five minutes old (the
lookback delta), so over an outage a range query repeats the last value
scraped before it.  The real thing is ``tests/integration/test_prometheus_down.py``;
this one runs a five-minute outage in a fraction of a second.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from service.detection import Detection
from service.prometheus import PrometheusUnavailable, RangeSeries, Sample
from service.settings import ServiceSettings
from service.store import Store
from tests.support import FakeClock

LABELS = {"__name__": "demo_latency_ms", "job": "demo"}
LOOKBACK_DELTA = 300.0


class ScrapedPrometheus:
    """Samples scraped so far, queried with Prometheus's lookback; ``down`` refuses every query."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.t: list[float] = []
        self.x: list[float] = []
        self.down = False
        self.ranges: list[tuple[float, float]] = []

    def scrape(self, value: float) -> None:
        self.t.append(self.clock())
        self.x.append(value)

    def _at(self, moment: float) -> float | None:
        i = int(np.searchsorted(self.t, moment, side="right")) - 1
        if i < 0 or self.t[i] <= moment - LOOKBACK_DELTA:
            return None
        return self.x[i]

    def _check(self) -> None:
        if self.down:
            raise PrometheusUnavailable("cannot reach Prometheus (Connection refused)")

    def instant(self, query: str, at: float | None = None) -> list[Sample]:
        self._check()
        moment = self.clock() if at is None else at
        value = self._at(moment)
        return [] if value is None else [Sample(dict(LABELS), moment, value)]

    def range(self, query: str, start: float, end: float, step: float) -> list[RangeSeries]:
        self._check()
        self.ranges.append((start, end))
        grid = np.arange(start, end + 1e-9, step)
        found = [(moment, value) for moment in grid if (value := self._at(moment)) is not None]
        if not found:
            return []
        t, x = zip(*found, strict=True)
        return [RangeSeries(dict(LABELS), np.array(t), np.array(x))]


def _ingested(detection: Detection, source: str) -> float:
    value = detection.metrics.registry.get_sample_value(
        "anomaly_detector_samples_ingested_total", {"detector": "latency", "source": source}
    )
    return value or 0.0


def _source_up(detection: Detection) -> float | None:
    return detection.metrics.registry.get_sample_value("anomaly_detector_source_up", {"detector": "latency"})


def test_an_outage_scores_nothing_says_so_and_its_lookback_copies_raise_no_alert(tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000.0)
    prometheus = ScrapedPrometheus(clock)
    rng = np.random.default_rng(11)
    for _ in range(1800):  # half an hour of history: warm at the first evaluation
        prometheus.scrape(100.0 + rng.normal(0.0, 2.0))
        clock.advance(1)
    settings = ServiceSettings.model_validate(
        {
            "store": str(tmp_path / "state.db"),
            "detectors": [
                {"name": "latency", "query": "demo_latency_ms", "interval": "1s", "lookback": "30m"}
            ],
        }
    )
    detection = Detection(settings, Store(settings.store), reader=prometheus, clock=clock)  # type: ignore[arg-type]
    runtime = detection.runtimes["latency"]

    async def second(value: float | None) -> bool:
        clock.advance(1)
        if value is not None:
            prometheus.scrape(value)
        return await detection.pull_once(runtime)

    async def scenario() -> None:
        for _ in range(120):
            assert await second(100.0 + rng.normal(0.0, 2.0))
        assert _source_up(detection) == 1.0
        # The last value before the outage sits 1.5 standard deviations high: five minutes of
        # copies of it would pull the model's level up and shrink its scale.
        assert await second(103.0)
        prometheus.down = True
        scored_before = runtime.series_state(runtime.engine.series.keys[0])
        assert scored_before is not None
        for _ in range(300):
            assert not await second(None)  # nothing is scraped either
            assert _source_up(detection) == 0.0
        state = runtime.series_state(scored_before.key)
        assert state is not None and state.t == scored_before.t, "nothing is scored while down"
        prometheus.down = False
        for _ in range(180):
            assert await second(100.0 + rng.normal(0.0, 2.0))

    asyncio.run(scenario())
    assert _source_up(detection) == 1.0
    assert prometheus.ranges[-1][1] - prometheus.ranges[-1][0] > 250, "the outage was replayed"
    assert (
        detection.metrics.registry.get_sample_value(
            "anomaly_detector_source_errors_total", {"detector": "latency"}
        )
        == 300
    )
    assert detection.recent_alerts(10) == [], [e.summary for e in detection.recent_alerts(10)]
    assert _ingested(detection, "catch_up") == 1, "one sample repeated over the outage is one sample"

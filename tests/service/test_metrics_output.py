"""/metrics per series: every series up to outputs.metrics.max_series, beyond only the anomalous ones."""

from __future__ import annotations

import numpy as np
from prometheus_client import generate_latest

from detector.labels import series_key
from service.exposition import SelfMetrics
from service.runtime import DetectorRuntime
from service.settings import DetectorSpec, MetricsOutputSettings

KEYS = [series_key({"__name__": "latency", "instance": f"i{n}"}) for n in range(6)]


def _runtime() -> DetectorRuntime:
    spec = DetectorSpec.model_validate(
        {
            "name": "rw",
            "source": "remote_write",
            "model": "ewma",
            "model_params": {"warmup": 5},
            "calibration": {"warmup": 10},
            "alerting": {"false_alerts_per_week": 100},
        }
    )
    runtime = DetectorRuntime(spec, clock=lambda: 1_700_000_000.0)
    rng = np.random.default_rng(2)
    for step in range(120):
        x = rng.normal(100.0, 2.0, len(KEYS))
        if step >= 115:
            x[4] = 300.0  # one series spikes
        runtime.ingest(KEYS, np.full(len(KEYS), 15.0 * step), x)
    return runtime


def _scrape(runtime: DetectorRuntime, **shown: object) -> str:
    metrics = SelfMetrics(lambda: [runtime], MetricsOutputSettings.model_validate(shown))
    return generate_latest(metrics.registry).decode()


def _scored(text: str) -> list[str]:
    return sorted(
        line.split('instance="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("anomaly_score{")
    )


def test_every_series_while_there_are_few() -> None:
    text = _scrape(_runtime())
    assert _scored(text) == [f"i{n}" for n in range(6)]
    assert 'anomaly_detector_metrics_series_omitted{detector="rw"} 0.0' in text


def test_beyond_max_series_only_the_anomalous_ones_and_the_rest_are_counted() -> None:
    runtime = _runtime()
    text = _scrape(runtime, max_series=3)
    assert _scored(text) == ["i4"]
    assert 'anomaly_detector_metrics_series_omitted{detector="rw"} 5.0' in text
    assert 'anomaly_expected_upper{detector="rw",instance="i4",metric="latency"}' in text
    assert _scored(_scrape(runtime, series="anomalous")) == ["i4"]
    none = _scrape(runtime, series="none")
    assert _scored(none) == [] and 'anomaly_detector_metrics_series_omitted{detector="rw"} 6.0' in none

"""Scores go back out as Prometheus metrics, plus the service's own health figures.

Per series, with the series' own labels plus ``detector`` (a series label that
clashes with ``detector`` is kept as ``exported_detector``, as Prometheus does;
the metric name becomes the ``metric`` label)::

    anomaly_score{detector="cpu",instance="a"}           1 - p, calibrated
    anomaly_expected{...}, anomaly_expected_lower{...}, anomaly_expected_upper{...}
    anomaly_alert_firing{...}                            1 while an alert is open

The per-series families are built at scrape time from the engines' arrays
(a collector, not a gauge child per series), so they cost no memory between
scrapes.  Bands are left out while a series is warming up.  A scrape costs
about 100 bytes and 10 µs a line, five lines a series: beyond
``outputs.metrics.max_series`` series only the anomalous ones are shown
(:class:`SeriesCollector`), and the rest leave by ``outputs.remote_write``
(:mod:`service.score_writer`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

from service.access import REASONS
from service.history import INTERESTING_SCORE
from service.runtime import DetectorRuntime
from service.settings import MetricsOutputSettings

_PER_SERIES = {
    "anomaly_score": (
        "score",
        "Calibrated anomaly score, 1 - p (p: tail probability under the series' normal).",
        False,
    ),
    "anomaly_expected": ("expected", "The model's expected value for the series.", True),
    "anomaly_expected_lower": ("lower", "Lower edge of the expected band at the alert threshold.", True),
    "anomaly_expected_upper": ("upper", "Upper edge of the expected band at the alert threshold.", True),
    "anomaly_alert_firing": ("alert", "1 while an alert is open for the series.", False),
}


def exported_labels(detector: str, labels: dict[str, str]) -> dict[str, str]:
    """The label set a series is exported with.

    >>> exported_labels("cpu", {"__name__": "node_load1", "detector": "x", "job": "node"})
    {'metric': 'node_load1', 'exported_detector': 'x', 'job': 'node', 'detector': 'cpu'}
    """
    out: dict[str, str] = {}
    for name, value in labels.items():
        if name == "__name__":
            out["metric"] = value
        elif name in ("detector", "metric"):
            out[f"exported_{name}"] = value
        else:
            out[name] = value
    out["detector"] = detector
    return out


class SeriesCollector:
    """A prometheus_client collector reading every detector's latest results at scrape time.

    Which series it shows is ``settings`` (:class:`~service.settings.MetricsOutputSettings`);
    ``anomaly_detector_metrics_series_omitted{detector}`` counts the series left out.
    """

    def __init__(
        self,
        runtimes: Callable[[], Iterable[DetectorRuntime]],
        settings: MetricsOutputSettings | None = None,
    ) -> None:
        self._runtimes = runtimes
        self.settings = settings or MetricsOutputSettings()

    def collect(self) -> Iterable[Metric]:
        families = {name: Metric(name, doc, "gauge") for name, (_, doc, _) in _PER_SERIES.items()}
        omitted = Metric(
            "anomaly_detector_metrics_series_omitted",
            "Series whose scores /metrics leaves out (outputs.metrics); send them by remote_write instead.",
            "gauge",
        )
        for runtime in self._runtimes():
            arrays = runtime.latest.arrays
            shown, left_out = self.shown(runtime)
            omitted.add_sample(omitted.name, {"detector": runtime.name}, float(left_out))
            for key, row in shown:
                labels = exported_labels(runtime.name, runtime.labels[key])
                warming = bool(arrays["warming"][row])
                for name, (column, _, is_band) in _PER_SERIES.items():
                    value = float(arrays[column][row])
                    if (is_band and warming) or math.isnan(value):
                        continue
                    families[name].add_sample(name, labels, value)
        return [*families.values(), omitted]

    def shown(self, runtime: DetectorRuntime) -> tuple[list[tuple[str, int]], int]:
        """The (key, row) of each series to show, and how many with a value are left out."""
        keys = runtime.engine.series.keys
        arrays = {name: column[: len(keys)] for name, column in runtime.latest.arrays.items()}
        live = ~arrays["ended"] & np.isfinite(arrays["t"])
        live[[row for row, key in enumerate(keys) if not key]] = False
        limit, mode = self.settings.max_series, self.settings.series
        if mode == "none":
            return [], int(live.sum())
        if mode == "all" and live.sum() <= limit:
            rows = np.flatnonzero(live)
        else:
            flagged = np.flatnonzero(live & (arrays["alert"] | (arrays["score"] >= INTERESTING_SCORE)))
            top = np.argsort(-np.nan_to_num(arrays["score"][flagged]), kind="stable")[:limit]
            rows = np.sort(flagged[top])
        return [(keys[row], int(row)) for row in rows.tolist()], int(live.sum()) - len(rows)


class SelfMetrics:
    """The service's own figures, on their own registry (with the per-series collector)."""

    def __init__(
        self,
        runtimes: Callable[[], Iterable[DetectorRuntime]],
        shown: MetricsOutputSettings | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(SeriesCollector(runtimes, shown))  # type: ignore[arg-type]
        r = self.registry
        self.ingested = Counter(
            "anomaly_detector_samples_ingested",
            "Samples scored, by detector and source.",
            ["detector", "source"],
            registry=r,
        )
        self.dropped = Counter(
            "anomaly_detector_samples_dropped",
            "Samples received but not scored, by reason.",
            ["reason"],
            registry=r,
        )
        self.late = Counter(
            "anomaly_detector_samples_late",
            "Samples scored more than the detector's late_after after their own time (their alerts say so).",
            ["detector"],
            registry=r,
        )
        self.series = Gauge(
            "anomaly_detector_series_tracked", "Series with model state.", ["detector"], registry=r
        )
        self.warming = Gauge(
            "anomaly_detector_series_warming",
            "Series still warming up (scores provisional).",
            ["detector"],
            registry=r,
        )
        self.evaluation = Histogram(
            "anomaly_detector_evaluation_duration_seconds",
            "Time to query and score one pull evaluation.",
            ["detector"],
            registry=r,
        )
        self.lag = Gauge(
            "anomaly_detector_lag_seconds",
            "Wall time minus the newest sample time scored.",
            ["detector"],
            registry=r,
        )
        self.store_errors = Counter(
            "anomaly_detector_store_errors",
            "Failed store operations, by operation.",
            ["operation"],
            registry=r,
        )
        self.checkpoint_time = Gauge(
            "anomaly_detector_last_checkpoint_timestamp_seconds", "When state was last saved.", registry=r
        )
        self.checkpoint_seconds = Gauge(
            "anomaly_detector_last_checkpoint_duration_seconds",
            "Wall time the last checkpoint took, copying and writing every detector's state.",
            registry=r,
        )
        self.checkpoint_bytes = Gauge(
            "anomaly_detector_last_checkpoint_bytes",
            "Size of the state the last checkpoint wrote.",
            registry=r,
        )
        self.source_errors = Counter(
            "anomaly_detector_source_errors",
            "Failed queries to Prometheus, by detector.",
            ["detector"],
            registry=r,
        )
        self.source_up = Gauge(
            "anomaly_detector_source_up",
            "1 if the pull detector's last evaluation read Prometheus, 0 if its query failed.",
            ["detector"],
            registry=r,
        )
        self.write_batches = Histogram(
            "anomaly_detector_remote_write_batch_samples",
            "Samples per scoring batch of queued remote_write requests (remote_write.batch_samples).",
            buckets=(500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000),
            registry=r,
        )
        self.alerts = Counter(
            "anomaly_detector_alert_events",
            "Alert events emitted, by detector and change.",
            ["detector", "change"],
            registry=r,
        )
        self.output_sent = Counter(
            "anomaly_detector_output_samples_sent",
            "Score, band and alert samples the receiver of outputs.remote_write accepted.",
            registry=r,
        )
        self.output_dropped = Counter(
            "anomaly_detector_output_samples_dropped",
            "Output samples not sent: queue_full (the receiver was down or slow), rejected (a 4xx).",
            ["reason"],
            registry=r,
        )
        self.output_failures = Counter(
            "anomaly_detector_output_request_failures",
            "remote_write output requests that failed and were retried (5xx, 429, network errors).",
            registry=r,
        )
        self.output_queue = Gauge(
            "anomaly_detector_output_queue_samples",
            "Output samples waiting to be sent to outputs.remote_write.",
            registry=r,
        )
        self.auth_failures = Counter(
            "anomaly_detector_http_auth_failures",
            "HTTP requests refused: no or wrong credentials (401), or a write without them (403).",
            ["reason"],
            registry=r,
        )
        for reason in REASONS:  # at 0 from the start, so rate() sees the first one
            self.auth_failures.labels(reason)

    def observe_series(self, runtimes: Iterable[DetectorRuntime]) -> None:
        for runtime in runtimes:
            self.series.labels(runtime.name).set(len(runtime.engine.series.active()))
            self.warming.labels(runtime.name).set(runtime.warming_count())

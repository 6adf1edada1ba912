"""Prometheus goes down under a pull detector, stays down a few evaluations, and comes back.

A real Prometheus scrapes the tests' exporter every second and the service (a
real process) evaluates every second.  While Prometheus is stopped the service
stays healthy, scores nothing and says so in ``anomaly_detector_source_up``;
once Prometheus is back (same port, same storage) the missed interval is
replayed as live samples, and the gap opens no alert.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import wait_until
from tests.support.exporter import NoisyExporter
from tests.support.prometheus import scrape_config, start_prometheus
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.live

METRIC = "demo_latency_ms"
SERIES = 2
DETECTOR = "latency"
#: Failed evaluations to sit through before Prometheus comes back.
DOWN_EVALUATIONS = 5


@pytest.fixture
def exporter() -> Iterator[NoisyExporter]:
    exporter = NoisyExporter(METRIC, level=100.0, port=0, series=SERIES)
    yield exporter
    exporter.stop()


def _sample_times(service: ServiceProcess) -> list[float]:
    """Each series' newest scored sample time."""
    response = service.get("/api/v1/series")
    response.raise_for_status()
    return [float(s["t"]) for s in response.json()]


def test_prometheus_outage_is_no_decision_and_is_caught_up(tmp_path: Path, exporter: NoisyExporter) -> None:
    with start_prometheus(
        tmp_path / "prometheus",
        scrape_configs=[scrape_config("demo", [exporter.url], "1s")],
        backfill=exporter.history(1200, job="demo", seed=5),
    ) as prometheus:
        config = tmp_path / "pull.yaml"
        config.write_text(
            json.dumps(
                {
                    "prometheus": {"url": prometheus.url},
                    "store": str(tmp_path / "state.db"),
                    "detectors": [{"name": DETECTOR, "query": METRIC, "interval": "1s", "lookback": "30m"}],
                }
            )
        )
        service = ServiceProcess(config, tmp_path / "service.log").start()
        try:

            def up() -> float | None:
                return service.metric("anomaly_detector_source_up", detector=DETECTOR)

            def errors() -> float:
                return service.metric("anomaly_detector_source_errors_total", detector=DETECTOR) or 0.0

            def caught_up() -> float:
                found = service.metric(
                    "anomaly_detector_samples_ingested_total", detector=DETECTOR, source="catch_up"
                )
                return found or 0.0

            wait_until(lambda: up() == 1.0, 30, "source_up to be 1 with Prometheus running")
            caught_up_before = caught_up()

            prometheus.stop()
            stopped_at = time.time()
            wait_until(lambda: up() == 0.0, 30, "source_up to be 0 with Prometheus stopped")
            errors_at_first = errors()
            wait_until(
                lambda: errors() >= errors_at_first + DOWN_EVALUATIONS,
                30,
                f"{DOWN_EVALUATIONS} more failed evaluations",
            )
            assert up() == 0.0
            assert service.get("/-/healthy").status_code == 200
            assert max(_sample_times(service)) < stopped_at, "nothing is scored while Prometheus is down"

            prometheus.restart()
            restarted_at = time.time()
            wait_until(lambda: up() == 1.0, 30, "source_up to return to 1 after Prometheus restarted")
            wait_until(
                lambda: caught_up() > caught_up_before, 30, "the missed interval to be replayed (catch_up)"
            )
            wait_until(
                lambda: min(_sample_times(service)) > restarted_at,
                30,
                "every series to be scored again past the restart",
            )

            alerts = service.get("/api/v1/alerts").json()["events"]
            assert alerts == [], f"the outage opened alerts: {alerts}"
            assert service.get("/-/ready").status_code == 200
            assert service.process is not None and service.process.poll() is None
            log = service.log()
            assert "Traceback" not in log, log
            warned = [
                line
                for line in log.splitlines()
                if f"WARNING service.detection: detector {DETECTOR}:" in line
            ]
            assert warned and prometheus.url in warned[0], "a failed evaluation is logged with its reason"
        finally:
            service.stop()

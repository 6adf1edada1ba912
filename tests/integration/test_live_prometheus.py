"""End to end through a real Prometheus: pull, remote_write, and a kill -9 restart.

Prometheus scrapes the tests' own exporter every second; the detection service
runs as a real process (``python -m service run``) on loopback.  Pull mode is
warm-started from history backfilled into Prometheus (so it is warm at once);
remote_write mode learns from live samples with short warm-ups.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import wait_until
from tests.support.exporter import NoisyExporter
from tests.support.prometheus import PrometheusHandle, scrape_config, start_prometheus
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.live

METRIC = "demo_latency_ms"
SERIES = 2
HISTORY_SECONDS = 1200


@pytest.fixture
def exporter() -> Iterator[NoisyExporter]:
    exporter = NoisyExporter(METRIC, level=100.0, port=0, series=SERIES)
    yield exporter
    exporter.stop()


def _write_config(path: Path, prometheus: PrometheusHandle, detector: dict[str, Any]) -> Path:
    config = {
        "prometheus": {"url": prometheus.url},
        "store": str(path.parent / "state.db"),
        "checkpoint_interval": "1s",
        "detectors": [detector],
    }
    path.write_text(json.dumps(config))
    return path


def _series(service: ServiceProcess) -> list[dict[str, Any]]:
    response = service.get("/api/v1/series")
    response.raise_for_status()
    return list(response.json())


def _metric_samples(service: ServiceProcess, name: str) -> list[tuple[str, float]]:
    text = service.get("/metrics").text
    return [
        (line.split(" ")[0], float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith(name + "{")
    ]


def _spike_is_caught(service: ServiceProcess, exporter: NoisyExporter) -> None:
    exporter.spike(60.0)  # 30 standard deviations
    spiking = wait_until(
        lambda: [
            s for s in _series(service) if s["anomaly_score"] is not None and s["anomaly_score"] >= 0.999
        ],
        timeout=45,  # generous: a loaded machine delays scrapes and remote_write batches
        what="a spiking series to score >= 0.999",
    )
    assert spiking[0]["labels"]["__name__"] == METRIC
    assert spiking[0]["value"] > spiking[0]["expected"] + 30
    exported = _metric_samples(service, "anomaly_score")
    assert any(value >= 0.999 and 'detector="' in labels for labels, value in exported), exported
    assert _metric_samples(service, "anomaly_expected_upper"), "bands are exported for warm series"


def test_pull_warm_starts_from_history_and_catches_a_spike(tmp_path: Path, exporter: NoisyExporter) -> None:
    with start_prometheus(
        tmp_path / "prometheus",
        scrape_configs=[scrape_config("demo", [exporter.url], "1s")],
        backfill=exporter.history(HISTORY_SECONDS, job="demo", seed=3),
    ) as prometheus:
        config = _write_config(
            tmp_path / "pull.yaml",
            prometheus,
            {"name": "latency", "query": METRIC, "interval": "1s", "lookback": "30m"},
        )
        service = ServiceProcess(config, tmp_path / "service.log").start()
        try:
            series = _series(service)
            assert len(series) == SERIES
            assert not any(s["warming"] for s in series), "history warm-started every series"
            normal = [s["anomaly_score"] for s in series]
            assert max(normal) < 0.999, normal
            _spike_is_caught(service, exporter)
            assert service.get("/-/ready").status_code == 200
        finally:
            service.stop()


def test_remote_write_from_prometheus_catches_a_spike(tmp_path: Path, exporter: NoisyExporter) -> None:
    service_port = ServiceProcess(tmp_path / "unused", tmp_path / "unused.log").port
    remote_write = {
        "url": f"http://127.0.0.1:{service_port}/api/v1/write",
        "queue_config": {"batch_send_deadline": "1s"},
    }
    with start_prometheus(
        tmp_path / "prometheus",
        scrape_configs=[scrape_config("demo", [exporter.url], "1s")],
        remote_write=[remote_write],
    ) as prometheus:
        config = _write_config(
            tmp_path / "push.yaml",
            prometheus,
            {
                "name": "pushed",
                "source": "remote_write",
                "match": {"__name__": METRIC},
                "model": "ewma",
                "model_params": {"warmup": 10},
                "calibration": {"warmup": 20},
            },
        )
        service = ServiceProcess(config, tmp_path / "service.log", port=service_port).start()
        try:
            warm = wait_until(
                lambda: [s for s in _series(service) if not s["warming"]],
                timeout=120,
                what="remote-written series to finish warming up",
            )
            assert {s["labels"]["job"] for s in warm} == {"demo"}
            _spike_is_caught(service, exporter)
            ingested = _metric_samples(service, "anomaly_detector_samples_ingested_total")
            assert any('source="remote_write"' in labels and value > 0 for labels, value in ingested)
        finally:
            service.stop()


def test_kill_and_restart_restores_state_and_catches_up(tmp_path: Path, exporter: NoisyExporter) -> None:
    with start_prometheus(
        tmp_path / "prometheus",
        scrape_configs=[scrape_config("demo", [exporter.url], "1s")],
        backfill=exporter.history(HISTORY_SECONDS, job="demo", seed=3),
    ) as prometheus:
        config = _write_config(
            tmp_path / "pull.yaml",
            prometheus,
            {"name": "latency", "query": METRIC, "interval": "1s", "lookback": "30m"},
        )
        first = ServiceProcess(config, tmp_path / "first.log").start()
        time.sleep(3.0)  # at least one checkpoint (every 1 s) after warm start
        first.kill()
        time.sleep(4.0)  # a gap the restarted service must catch up from Prometheus
        second = ServiceProcess(config, tmp_path / "second.log", port=first.port).start()
        try:
            detectors = second.get("/api/v1/detectors").json()
            assert detectors[0]["restored"] is True
            assert detectors[0]["series"] == SERIES
            assert not any(s["warming"] for s in _series(second)), "restored series never re-enter warm-up"
            ingested = dict(_metric_samples(second, "anomaly_detector_samples_ingested_total"))
            caught_up = [v for labels, v in ingested.items() if 'source="catch_up"' in labels]
            warm_started = [v for labels, v in ingested.items() if 'source="history"' in labels]
            assert caught_up and caught_up[0] >= SERIES * 2, ingested
            assert not warm_started, "restored series are not warm-started again"
        finally:
            second.stop()

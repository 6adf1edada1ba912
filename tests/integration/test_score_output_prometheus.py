"""Scores and bands leave by remote_write: a real Prometheus receives them and answers queries on them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from detector.labels import series_key
from service.settings import ServiceSettings
from tests.support.prometheus import start_prometheus
from tests.support.remote_write import HEADERS, write_request
from tests.support.service import serve_in_thread

pytestmark = pytest.mark.live

STEP = 15.0
POINTS = 80
KEYS = [series_key({"__name__": "demo_latency_ms", "instance": name, "job": "demo"}) for name in ("a", "b")]
METRICS = ("anomaly_score", "anomaly_expected", "anomaly_expected_lower", "anomaly_expected_upper")


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    reply = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
    reply.raise_for_status()
    result: list[dict[str, Any]] = reply.json()["data"]["result"]
    return result


def test_prometheus_receives_scores_and_bands_by_remote_write(tmp_path: Path) -> None:
    with start_prometheus(tmp_path / "prometheus", remote_write_receiver=True) as prometheus:
        settings = ServiceSettings.model_validate(
            {
                "store": str(tmp_path / "state.db"),
                "detectors": [
                    {
                        "name": "rw",
                        "source": "remote_write",
                        "model": "ewma",
                        "model_params": {"warmup": 10},
                        "calibration": {"warmup": 20},
                    }
                ],
                # Nothing per series on /metrics: the scores go only to Prometheus.
                "outputs": {
                    "metrics": {"series": "none"},
                    "remote_write": {
                        "url": f"{prometheus.url}/api/v1/write",
                        "labels": {"replica": "a"},
                        "max_samples_per_send": 100,
                    },
                },
            }
        )
        rng = np.random.default_rng(3)
        end = time.time()
        t = end - STEP * np.arange(POINTS)[::-1]
        with serve_in_thread(settings) as service:
            for moment in t:  # one request per scrape, as Prometheus sends
                values = rng.normal([100.0, 200.0], 3.0)
                body = write_request(KEYS, np.full(2, moment), values)
                reply = httpx.post(f"{service}/api/v1/write", content=body, headers=HEADERS, timeout=10)
                assert reply.status_code == 204, reply.text
            latest = {item["key"]: item for item in httpx.get(f"{service}/api/v1/series", timeout=10).json()}
            deadline = time.monotonic() + 30
            while True:
                found = {metric: _query(prometheus.url, f'{metric}{{detector="rw"}}') for metric in METRICS}
                if all(len(result) == 2 for result in found.values()) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            scrape = httpx.get(f"{service}/metrics", timeout=10).text
            counts = _query(prometheus.url, 'count_over_time(anomaly_score{detector="rw"}[1h])')

    for metric, result in found.items():
        assert len(result) == 2, f"{metric}: {result}"
        for item in result:
            labels = item["metric"]
            assert labels["metric"] == "demo_latency_ms" and labels["job"] == "demo"
            assert labels["replica"] == "a" and labels["__name__"] == metric
    # Every live scored sample arrived, at its own timestamp, with the value the service holds.
    assert sorted(int(item["value"][1]) for item in counts) == [POINTS, POINTS]
    for item in found["anomaly_expected"]:
        labels = item["metric"]
        key = series_key({"__name__": "demo_latency_ms", "instance": labels["instance"], "job": "demo"})
        _, value = item["value"]
        assert float(value) == pytest.approx(latest[key]["expected"], rel=1e-9)
    # /metrics says it leaves them out, and that they went out.
    assert 'anomaly_detector_metrics_series_omitted{detector="rw"} 2.0' in scrape
    assert "\nanomaly_score{" not in scrape
    sent = float(scrape.split("\nanomaly_detector_output_samples_sent_total ")[1].split()[0])
    assert sent >= 2 * POINTS * 2  # scores and alert state of every point, bands once warm

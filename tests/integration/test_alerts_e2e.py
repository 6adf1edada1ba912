"""Alerts end to end: the service, a real Alertmanager, and a webhook receiver of the test's own.

Ten series of one job spike together: Alertmanager must receive ONE explained
alert listing all ten (not ten alerts), and its resolution after recovery.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support import wait_until
from tests.support.alertmanager import start_alertmanager
from tests.support.net import Receiver
from tests.support.remote_write import HEADERS, write_request
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.live

SERIES = [f'checkout_latency_ms{{instance="web-{i}",job="shop"}}' for i in range(10)]
STEP = 60.0


def _post(client: httpx.Client, t: float, values: np.ndarray) -> None:
    body = write_request(SERIES, np.full(len(SERIES), t), values)
    response = client.post("/api/v1/write", content=body, headers=HEADERS)
    assert response.status_code == 204, response.text


def _alerts(receiver: Receiver, status: str) -> list[dict[str, object]]:
    return [
        alert
        for request in receiver.requests
        for alert in request.json()["alerts"]
        if alert["status"] == status
    ]


def test_ten_correlated_spikes_reach_alertmanager_as_one_explained_alert_then_resolve(tmp_path: Path) -> None:
    with Receiver() as receiver, start_alertmanager(tmp_path, receiver.url) as alertmanager:
        config = tmp_path / "service.yaml"
        config.write_text(
            json.dumps(
                {
                    "store": str(tmp_path / "state.db"),
                    "detectors": [
                        {
                            "name": "checkout",
                            "source": "remote_write",
                            "match": {"__name__": "checkout_latency_ms"},
                            "model": "ewma",
                            "model_params": {"warmup": 10},
                            "calibration": {"warmup": 20},
                            # Generous: series 300 points old may alert on a ten-point spike.
                            "alerting": {"group_by": ["job"], "cooldown": "5m", "false_alerts_per_week": 20},
                        }
                    ],
                    "sinks": [{"type": "alertmanager", "name": "alertmanager", "url": alertmanager.url}],
                }
            )
        )
        service = ServiceProcess(config, tmp_path / "service.log").start()
        try:
            rng = np.random.default_rng(11)
            start = float(int(time.time())) - 400 * STEP
            with httpx.Client(base_url=service.url, timeout=10) as client:
                for step in range(300):
                    _post(client, start + step * STEP, 200.0 + rng.normal(0, 5, len(SERIES)))
                # Early false alerts (the budget allows some) resolve before the incident; start clean.
                time.sleep(3.0)
                receiver.clear()
                for step in range(300, 310):
                    _post(client, start + step * STEP, 400.0 + rng.normal(0, 5, len(SERIES)))
                firing = wait_until(lambda: _alerts(receiver, "firing"), 20, "the grouped alert")
                for step in range(310, 325):
                    _post(client, start + step * STEP, 200.0 + rng.normal(0, 5, len(SERIES)))
                resolved = wait_until(lambda: _alerts(receiver, "resolved"), 30, "the resolution")
        finally:
            service.stop()
    assert len({json.dumps(a["labels"], sort_keys=True) for a in firing}) == 1, "one alert, not ten"
    alert = firing[0]
    assert alert["labels"]["alertname"] == "AnomalyDetected"
    assert alert["labels"]["detector"] == "checkout"
    assert alert["labels"]["job"] == "shop"
    description = alert["annotations"]["description"]
    assert all(f'web-{i}"' in description or f"web-{i}" in description for i in range(10)), description
    assert "expected" in description.lower()
    assert resolved[0]["labels"] == alert["labels"]

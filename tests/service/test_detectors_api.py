"""``/api/v1/detectors``: each detector's alert budget beside the alerts it opened, over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import ServiceSettings
from tests.support.remote_write import HEADERS, write_request

SHOP = 'checkout_latency_ms{instance="web-1",job="shop"}'
NODES = [f'node_load1{{instance="n{i}",job="node"}}' for i in range(3)]
STEP = 60.0
START = 1.7e9
WEEK = 7 * 86_400.0


def _settings(tmp_path: Path) -> ServiceSettings:
    """Two detectors: one with a budget for the whole detector, one with the default per series."""
    return ServiceSettings.model_validate(
        {
            "store": str(tmp_path / "state.db"),
            # The tests send one request at a time: waiting for more to batch with would only cost time.
            "remote_write": {"batch_wait": 0},
            "detectors": [
                {
                    "name": "shop",
                    "source": "remote_write",
                    "match": {"__name__": "checkout_latency_ms"},
                    "model": "ewma",
                    "alerting": {"false_alerts_per_day": 2},
                },
                {"name": "node", "source": "remote_write", "match": {"__name__": "node_load1"}},
            ],
        }
    )


def _write(client: TestClient, keys: list[str], t: float, values: list[float]) -> None:
    body = write_request(keys, np.full(len(keys), t), np.array(values))
    assert client.post("/api/v1/write", content=body, headers=HEADERS).status_code == 204


def _spiky_shop(client: TestClient, start: float, steps: int, spike_from: int) -> None:
    rng = np.random.default_rng(5)
    for step in range(steps):
        value = 200.0 + rng.normal(0, 5) + (300.0 if step >= spike_from else 0.0)
        _write(client, [SHOP], start + step * STEP, [value])


def _detectors(client: TestClient) -> dict[str, dict[str, Any]]:
    reply = client.get("/api/v1/detectors")
    assert reply.status_code == 200, reply.text
    return {detector["name"]: detector for detector in reply.json()}


def _opened(client: TestClient) -> int:
    return sum(event["change"] == "opened" for event in client.get("/api/v1/alerts").json()["events"])


def test_each_detector_shows_its_budget_said_both_ways(tmp_path: Path) -> None:
    with TestClient(create_app(_settings(tmp_path))) as client:
        detectors = _detectors(client)
        assert detectors["shop"]["budget"] == {
            "false_alerts_per_week": None,
            "false_alerts_per_day": 2.0,
            "per_day": 2.0,  # whatever the number of series
            "per_series_per_day": None,  # no series to share it yet
        }
        assert detectors["node"]["budget"] == {
            "false_alerts_per_week": 1.0,  # the default, per series
            "false_alerts_per_day": None,
            "per_day": 0.0,
            "per_series_per_day": pytest.approx(1 / 7),
        }
        assert detectors["node"]["alert_rate"] == {
            "onsets": 0,
            "window_seconds": 0.0,
            "per_day": None,  # no data, no rate
            "per_series_per_day": None,
        }
        for step in range(5):
            _write(client, NODES, START + step * STEP, [1.0, 2.0, 3.0])
        _write(client, [SHOP], START, [200.0])
        detectors = _detectors(client)
        assert detectors["node"]["budget"]["per_day"] == pytest.approx(3 / 7)  # three series, one a week each
        assert detectors["node"]["alert_rate"]["window_seconds"] == 4 * STEP
        assert detectors["shop"]["budget"]["per_series_per_day"] == 2.0  # one series: all of it


def test_the_realized_rate_counts_onsets_in_the_last_week_of_data_across_restarts(tmp_path: Path) -> None:
    with TestClient(create_app(_settings(tmp_path))) as client:
        _spiky_shop(client, START, steps=303, spike_from=300)
        onsets = _opened(client)  # one series: each alert it opens is an incident of its own
        assert onsets >= 1  # the spike
        rate = _detectors(client)["shop"]["alert_rate"]
    covered = 302 * STEP  # from the first sample to the newest: the data's time, not the process clock
    assert rate == {
        "onsets": onsets,
        "window_seconds": covered,
        "per_day": pytest.approx(onsets / covered * 86_400),
        "per_series_per_day": pytest.approx(onsets / covered * 86_400),
    }

    with TestClient(create_app(_settings(tmp_path))) as client:
        assert _detectors(client)["shop"]["alert_rate"] == rate  # kept in the checkpoint
        # Eight days on, the spike's onset is out of the window, which is now a week long.
        later = START + 8 * 86_400.0
        _spiky_shop(client, later, steps=60, spike_from=60)
        rate = _detectors(client)["shop"]["alert_rate"]
        assert rate["window_seconds"] == WEEK
        assert rate["onsets"] == _opened(client)  # only what opened since (this process's events)
        assert rate["per_day"] == pytest.approx(rate["onsets"] / 7)

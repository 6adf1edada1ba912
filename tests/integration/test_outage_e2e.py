"""An outage as long as it lasts, at a real Alertmanager: one sample per request, or all in one.

A p99 latency of 0.20 s jumps to 1.4 s for 10 minutes (40 samples 15 s
apart), then comes back.  Sent one sample per request, the alert must stay
active in Alertmanager for the whole outage and resolve within 2 minutes of
the series' return; sent in one request (a backlog), the outage must still
arrive as one incident that fired and resolved, with its real times.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest

from tests.support import wait_until
from tests.support.alertmanager import AlertmanagerHandle, start_alertmanager
from tests.support.net import Receiver
from tests.support.remote_write import HEADERS, write_request
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.live

STEP = 15.0
NORMAL, OUTAGE = 0.20, 1.4
WARMUP, OUTAGE_POINTS, RETURN_POINTS = 600, 40, 12


def _key(job: str) -> str:
    return f'api_p99_latency_seconds{{instance="web-1",job="{job}"}}'


def _values(rng: np.random.Generator, n: int, level: float) -> np.ndarray:
    return level * np.exp(rng.normal(0.0, 0.05, n))


@dataclass
class Stack:
    service: ServiceProcess
    alertmanager: AlertmanagerHandle
    receiver: Receiver
    client: httpx.Client

    def post(self, job: str, t: np.ndarray, x: np.ndarray) -> None:
        response = self.client.post(
            "/api/v1/write", content=write_request([_key(job)] * len(t), t, x), headers=HEADERS
        )
        assert response.status_code == 204, response.text

    def events(self, job: str) -> list[dict[str, object]]:
        events = self.client.get("/api/v1/alerts", params={"limit": 500}).json()["events"]
        return [e for e in reversed(events) if e["group_labels"].get("job") == job]  # oldest first

    def received(self, job: str, status: str) -> list[dict[str, object]]:
        return [
            alert
            for request in self.receiver.requests
            for alert in request.json()["alerts"]
            if alert["status"] == status and alert["labels"].get("job") == job
        ]

    def alertmanager_received(self, status: str) -> float:
        """Alertmanager's own count of alerts posted to it with this status."""
        text = httpx.get(f"{self.alertmanager.url}/metrics", timeout=5).text
        pattern = re.compile(
            rf'^alertmanager_alerts_received_total{{[^}}]*status="{status}"[^}}]*}} (\S+)$', re.M
        )
        return sum(float(value) for value in pattern.findall(text))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp_path = tmp_path_factory.mktemp("outage")
    with Receiver() as receiver, start_alertmanager(tmp_path, receiver.url) as alertmanager:
        config = tmp_path / "service.yaml"
        detector = {
            "name": "latency",
            "source": "remote_write",
            "match": {"__name__": "api_p99_latency_seconds"},
            # A generous budget: these series are young (600 points) and young series err towards silence.
            "alerting": {"group_by": ["job"], "false_alerts_per_week": 20},
        }
        settings = {
            "store": str(tmp_path / "state.db"),
            "detectors": [detector],
            "sinks": [{"type": "alertmanager", "name": "alertmanager", "url": alertmanager.url}],
        }
        config.write_text(json.dumps(settings))
        service = ServiceProcess(config, tmp_path / "service.log").start()
        try:
            with httpx.Client(base_url=service.url, timeout=30) as client:
                yield Stack(service, alertmanager, receiver, client)
        finally:
            service.stop()


def _warm(stack: Stack, job: str, rng: np.random.Generator) -> float:
    """600 normal samples (2.5 hours) in requests of 100; returns the time of the next sample."""
    start = float(int(time.time())) - 4 * 3600.0
    t = start + STEP * np.arange(WARMUP)
    x = _values(rng, WARMUP, NORMAL)
    for part in range(0, WARMUP, 100):
        stack.post(job, t[part : part + 100], x[part : part + 100])
    assert not [e for e in stack.events(job) if e["change"] == "opened"], "a false alert during warm-up"
    return start + STEP * WARMUP


def test_an_outage_sent_sample_by_sample_stays_active_until_the_series_returns(stack: Stack) -> None:
    rng = np.random.default_rng(1)
    outage_start = _warm(stack, "one-by-one", rng)
    values = _values(rng, OUTAGE_POINTS, OUTAGE)
    for k in range(OUTAGE_POINTS):
        stack.post("one-by-one", np.array([outage_start + STEP * k]), values[k : k + 1])
    back = outage_start + STEP * OUTAGE_POINTS
    [opened] = [e for e in stack.events("one-by-one") if e["change"] == "opened"]
    assert outage_start <= opened["opened_at"] <= outage_start + 3 * STEP
    assert not [e for e in stack.events("one-by-one") if e["change"] == "resolved"], (
        "resolved during the outage"
    )
    active = wait_until(
        lambda: [a for a in stack.alertmanager.alerts() if a["labels"].get("job") == "one-by-one"],
        20,
        "the alert at Alertmanager",
    )
    assert len(active) == 1 and active[0]["status"]["state"] == "active"
    assert not stack.received("one-by-one", "resolved")

    values = _values(rng, RETURN_POINTS, NORMAL)
    for k in range(RETURN_POINTS):
        stack.post("one-by-one", np.array([back + STEP * k]), values[k : k + 1])
    [resolved] = wait_until(
        lambda: stack.received("one-by-one", "resolved"), 30, "the resolution at the webhook"
    )
    ends = np.datetime64(resolved["endsAt"].replace("Z", "")).astype("datetime64[ms]").astype(float) / 1000
    assert back < ends <= back + 120.0, (back, ends)
    assert len(stack.received("one-by-one", "firing")) >= 1
    assert {e["incident_id"] for e in stack.events("one-by-one")} == {opened["incident_id"]}


def test_an_outage_in_one_request_arrives_as_one_incident_that_fired_and_resolved(stack: Stack) -> None:
    rng = np.random.default_rng(2)
    outage_start = _warm(stack, "backlog", rng)
    firing_before, resolved_before = (
        stack.alertmanager_received("firing"),
        stack.alertmanager_received("resolved"),
    )
    n = OUTAGE_POINTS + RETURN_POINTS
    t = outage_start + STEP * np.arange(n)
    x = np.r_[_values(rng, OUTAGE_POINTS, OUTAGE), _values(rng, RETURN_POINTS, NORMAL)]
    stack.post("backlog", t, x)
    back = outage_start + STEP * OUTAGE_POINTS
    events = stack.events("backlog")
    assert [e["change"] for e in events] == ["opened", "resolved"], events
    opened, resolved = events
    assert opened["incident_id"] == resolved["incident_id"]
    assert outage_start <= opened["opened_at"] <= outage_start + 3 * STEP
    assert back < resolved["resolved_at"] <= back + 120.0
    # Alertmanager got the alert firing, then resolved: one incident, nothing lost.
    wait_until(
        lambda: stack.alertmanager_received("resolved") == resolved_before + 1,
        30,
        "the resolution at Alertmanager",
    )
    assert stack.alertmanager_received("firing") == firing_before + 1

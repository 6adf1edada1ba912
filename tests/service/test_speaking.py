"""Replicas of one detector: the same data gives the same alert, and a restarted one is quiet until warm.

Each replica here is a :class:`~service.runtime.DetectorRuntime` with a clock
of its own (they disagree by seconds, as machines do); they get the same
samples.  What they send is compared as Alertmanager would receive it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from detector.alerts import AlertEvent
from service.app import create_app
from service.detection import Detection
from service.runtime import DetectorRuntime
from service.settings import DetectorSpec, ServiceSettings
from service.sinks import AlertmanagerSink
from service.store import Store
from tests.support.remote_write import HEADERS, write_request

KEY = 'api_latency_seconds{instance="web-1",job="api"}'
STEP = 15.0
START = 1.7e9
CHECKPOINT_INTERVAL = 60.0
DETECTOR: dict[str, Any] = {
    "name": "latency",
    "source": "remote_write",
    "match": {"__name__": "api_latency_seconds"},
    "model": "ewma",
    "model_params": {"warmup": 10},
    "calibration": {"warmup": 20},
    # Resolve after 3 calm points; a generous budget, for young series.
    "alerting": {"group_by": ["job"], "false_alerts_per_week": 20, "resolve_after": "30s"},
}


class Replica:
    """One runtime whose clock runs ``skew`` seconds off the data, fed one sample per call."""

    def __init__(self, skew: float = 0.0) -> None:
        self.skew = skew
        self.now = START
        spec = DetectorSpec.model_validate(DETECTOR)
        self.runtime = DetectorRuntime(spec, clock=lambda: self.now, checkpoint_interval=CHECKPOINT_INTERVAL)
        self.events: list[AlertEvent] = []

    def feed(self, t: np.ndarray, x: np.ndarray, live: bool = True) -> list[AlertEvent]:
        new = []
        for moment, value in zip(t.tolist(), x.tolist(), strict=True):
            self.now = moment + 2.0 + self.skew
            new += self.runtime.ingest([KEY], np.array([moment]), np.array([value]), live=live)
        self.events += new
        return new

    def restored_from(self, other: Replica) -> Replica:
        self.runtime.restore(other.runtime.checkpoint())
        return self

    @property
    def state(self) -> Any:
        return self.runtime.series_state(KEY)


class Data:
    """The samples both replicas get: normal latency, an outage, normal again."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(3)
        self.next_t = START - 400 * STEP

    def take(self, n: int, level: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
        t = self.next_t + STEP * np.arange(n)
        self.next_t += STEP * n
        return t, level * np.exp(self.rng.normal(0.0, 0.05, n))


def _feed_all(replicas: list[Replica], part: tuple[np.ndarray, np.ndarray]) -> None:
    for replica in replicas:
        replica.feed(*part)


def _as_sent(events: list[AlertEvent], replica: str) -> list[dict[str, Any]]:
    """The alerts as posted to Alertmanager, without what may differ between replicas."""
    sink = AlertmanagerSink("http://127.0.0.1:9093", lease=300, replica=replica)
    alerts = []
    for event in events:
        [alert] = json.loads(sink.request(event, "id").body)
        alerts.append(alert)
    return alerts


def test_two_replicas_send_alerts_alertmanager_keeps_one_of() -> None:
    a, b = Replica(), Replica(skew=7.0)
    data = Data()
    _feed_all([a, b], data.take(300))
    _feed_all([a, b], data.take(10, level=1.0))
    _feed_all([a, b], data.take(10))
    assert [e.change for e in a.events if e.change != "refreshed"] == ["opened", "resolved"]
    from_a, from_b = _as_sent(a.events, "a"), _as_sent(b.events, "b")
    assert [e.change for e in a.events] == [e.change for e in b.events]
    for one, other in zip(from_a, from_b, strict=True):
        assert one["labels"] == other["labels"]
        assert "replica" not in one["labels"]
        assert one["startsAt"] == other["startsAt"]
        assert (one["annotations"]["replica"], other["annotations"]["replica"]) == ("a", "b")
        assert one["annotations"]["incident_id"] == other["annotations"]["incident_id"]
    resolved_a, resolved_b = a.events[-1], b.events[-1]
    # A resolved alert ends when the data says so, not when either clock read.
    assert from_a[-1]["endsAt"] == from_b[-1]["endsAt"]
    assert resolved_a.resolved_at == resolved_b.resolved_at
    assert resolved_a.resolved_at in data.next_t - STEP * np.arange(1, 11)


def test_a_new_series_is_quiet_until_warm_and_says_why() -> None:
    replica, data = Replica(), Data()
    replica.feed(*data.take(5))
    assert (replica.state.speaking, replica.state.quiet_reason) == (
        False,
        "warming up: the model and its calibration are still learning",
    )
    # History warms the model, but is not live data: the series has yet to see some.
    replica = Replica()
    replica.feed(*data.take(200), live=False)
    assert replica.state.quiet_reason == "warming up after start: 0 of 3 live samples seen"
    replica.feed(*data.take(2))
    assert replica.state.quiet_reason == "warming up after start: 2 of 3 live samples seen"
    replica.feed(*data.take(1))
    assert (replica.state.speaking, replica.state.quiet_reason) == (True, "")
    assert replica.runtime.quiet_count() == 0


def test_a_replica_restored_from_a_fresh_checkpoint_speaks_at_once_and_resolves_the_incident() -> None:
    a, data = Replica(), Data()
    a.feed(*data.take(300))
    a.feed(*data.take(4, level=1.0))
    [opened] = [e for e in a.events if e.change == "opened"]
    b = Replica(skew=3.0).restored_from(a)  # a restart right after a checkpoint
    assert (b.state.speaking, b.state.quiet_reason) == (False, "waiting for live data after restart")
    _feed_all([a, b], data.take(1, level=1.0))
    assert b.state.speaking, b.state.quiet_reason
    _feed_all([a, b], data.take(6, level=1.0))
    _feed_all([a, b], data.take(10))
    [resolved_a] = [e for e in a.events if e.change == "resolved"]
    [resolved_b] = [e for e in b.events if e.change == "resolved"]
    assert resolved_b.incident_id == opened.incident_id == resolved_a.incident_id
    assert resolved_b.resolved_at == resolved_a.resolved_at
    assert resolved_b.sequence > opened.sequence


def test_a_replica_restored_from_a_stale_checkpoint_does_not_resolve_what_it_did_not_watch() -> None:
    a, data = Replica(), Data()
    a.feed(*data.take(300))
    a.feed(*data.take(4, level=1.0))
    checkpoint = a.runtime.checkpoint()
    # The outage goes on and ends while the other replica is away, and nobody re-sends that data.
    a.feed(*data.take(10, level=1.0))
    a.feed(*data.take(10))
    assert a.events[-1].change == "resolved"
    b = Replica()
    b.runtime.restore(checkpoint)
    b.feed(*data.take(2))
    assert (b.state.speaking, b.state.quiet_reason) == (
        False,
        "its checkpoint missed data; warming up again: 2 of 3 live samples seen",
    )
    b.feed(*data.take(20))
    assert b.state.speaking
    assert b.events == [], "no refresh, no resolution of an incident it did not see end"
    assert b.runtime.tracker.open_incidents == []


def test_a_restored_incident_whose_series_never_returns_ends_without_a_word() -> None:
    a, data = Replica(), Data()
    a.feed(*data.take(300))
    a.feed(*data.take(4, level=1.0))
    b = Replica().restored_from(a)
    b.now += 2 * 3600.0
    assert b.runtime.expire() == []
    assert b.runtime.tracker.open_incidents == []


def test_a_series_that_stops_reporting_resolves_at_its_last_sample() -> None:
    a, data = Replica(), Data()
    a.feed(*data.take(300))
    a.feed(*data.take(4, level=1.0))
    last = data.next_t - STEP
    a.now += 2 * 3600.0
    [resolved] = a.runtime.expire()
    assert (resolved.change, resolved.resolved_at) == ("resolved", last)


def _service(tmp_path: Path, clock: Callable[[], float]) -> ServiceSettings:
    return ServiceSettings.model_validate(
        {
            "store": str(tmp_path / "state.db"),
            "replica": "b",
            "remote_write": {"batch_wait": 0},
            "detectors": [DETECTOR],
            "sinks": [
                {"type": "webhook", "url": "http://127.0.0.1:9/hook", "secret": "a-long-random-secret"}
            ],
        }
    )


def test_a_restart_numbers_new_events_after_those_sent_since_the_checkpoint(tmp_path: Path) -> None:
    now = [START]
    settings = _service(tmp_path, lambda: now[0])
    data = Data()
    first = Detection(settings, Store(settings.store), clock=lambda: now[0])
    runtime = first.runtimes["latency"]
    for part in (data.take(300), data.take(4, level=1.0)):
        now[0] = float(part[0][-1])
        first.publish(runtime.ingest([KEY] * len(part[0]), *part))
    asyncio.run(first.checkpoint())
    now[0] += 120.0  # a refresh is due: sent, and numbered after the checkpoint
    first.publish(runtime.ingest([KEY], *data.take(1, level=1.0)))
    sent = first.outbox.last_sequences(runtime.tracker.open_incidents)
    first.outbox.close()

    again = Detection(settings, Store(settings.store), clock=lambda: now[0])
    again.restore()
    tracker = again.runtimes["latency"].tracker
    t, x = data.take(12)
    now[0] = float(t[-1])
    events = again.runtimes["latency"].ingest([KEY] * len(t), t, x)
    [resolved] = [e for e in events if e.change == "resolved"]
    assert min(e.sequence for e in events) == max(sent.values()) + 1
    assert again.outbox.enqueue(resolved), "the resolution is stored, not mistaken for a sent event"
    assert tracker.open_incidents == []
    again.outbox.close()


@pytest.fixture()
def client(tmp_path: Path) -> Any:
    settings = _service(tmp_path, lambda: START)
    with TestClient(create_app(settings)) as client:
        yield client


def test_the_api_says_which_series_are_quiet_and_why(client: TestClient) -> None:
    body = write_request([KEY], np.array([START]), np.array([0.2]))
    assert client.post("/api/v1/write", content=body, headers=HEADERS).status_code == 204
    [series] = client.get("/api/v1/series").json()
    assert series["speaking"] is False
    assert series["quiet_reason"] == "warming up: the model and its calibration are still learning"
    assert client.get(f"/api/v1/series/{series['id']}").json()["quiet_reason"] == series["quiet_reason"]
    [detector] = client.get("/api/v1/detectors").json()
    assert detector["quiet"] == 1
    page = client.get(f"/series/{series['id']}").text
    assert "the model and its calibration are still learning" in page


def test_a_replica_name_is_a_plain_name() -> None:
    base = {"detectors": [DETECTOR]}
    assert ServiceSettings.model_validate({**base, "replica": "detector-0.eu:1"}).replica == "detector-0.eu:1"
    assert ServiceSettings.model_validate(base).replica == ""
    with pytest.raises(ValueError, match="replica"):
        ServiceSettings.model_validate({**base, "replica": "a b"})

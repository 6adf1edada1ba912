"""Alertmanager: stable labels, changing annotations, a lease; then the real thing."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import replace
from datetime import datetime
from typing import Any

import httpx
import pytest

from detector.alerts import AlertEvent
from service.outbox import Outbox
from service.sinks import AlertmanagerSink, example_event, rfc3339
from tests.support.alertmanager import AlertmanagerHandle
from tests.support.net import Receiver, RecordedRequest

LEASE = 300.0


def _alert(event: AlertEvent, sink: AlertmanagerSink | None = None) -> dict[str, Any]:
    request = (sink or AlertmanagerSink("http://127.0.0.1:9093", lease=LEASE)).request(event, "d")
    assert (request.method, request.url) == ("POST", "http://127.0.0.1:9093/api/v2/alerts")
    assert request.headers["Content-Type"] == "application/json"
    [alert] = json.loads(request.body)
    return dict(alert)


def _later(event: AlertEvent, seconds: float, **changes: Any) -> AlertEvent:
    top = replace(event.top, observed=event.top.observed * 1.5, p_value=event.top.p_value / 10)
    return replace(
        event,
        updated_at=event.updated_at + seconds,
        sequence=event.sequence + 1,
        findings=(top,),
        description="worse",
        **changes,
    )


def test_labels_stay_the_same_while_annotations_follow_the_values() -> None:
    opened = example_event()
    refreshed = _later(opened, 100, change="refreshed")
    first, second = _alert(opened), _alert(refreshed)
    assert (
        first["labels"]
        == second["labels"]
        == {
            "alertname": "AnomalyDetected",
            "detector": "latency",
            "job": "api",
            "instance": "a",
            "metric": "api_latency_p99",
        }
    )
    assert (first["annotations"]["observed"], second["annotations"]["observed"]) == ("950", "1425")
    assert (first["annotations"]["p_value"], second["annotations"]["p_value"]) == ("2e-06", "2e-07")
    assert second["annotations"]["description"] == "worse"


def test_annotations_carry_values_band_score_series_and_links() -> None:
    annotations = _alert(
        example_event(links={"graph": "http://prom/graph?g0.expr=x", "series": "http://svc/s"})
    )["annotations"]
    assert annotations == {
        "summary": "latency: api_latency_p99 on a is above its expected band",
        "description": "p99 latency 950 ms against an expected 300–500 ms for the last 3 minutes.",
        "incident_id": "latency-api-1",
        "series": 'api_latency_p99{instance="a",job="api"}',
        "observed": "950",
        "expected": "400",
        "expected_band": "[300, 500]",
        "anomaly_score": "0.999998",
        "p_value": "2e-06",
        "rarity": "p = 2e-06, about 1 in 500,000",
        "direction": "high",
        "since": rfc3339(example_event().top.started_at),
        "model": "auto",
        "group": '{job="api"}',
        "graph_url": "http://prom/graph?g0.expr=x",
        "series_url": "http://svc/s",
    }
    assert "runbook" not in " ".join(annotations)


def test_firing_ends_a_lease_after_the_event_and_resolution_ends_at_resolution() -> None:
    event = example_event()
    firing = _alert(event)
    assert firing["startsAt"] == rfc3339(event.opened_at)
    assert firing["endsAt"] == rfc3339(event.updated_at + LEASE)
    assert firing["generatorURL"] == event.links["graph"]
    resolved_at = event.updated_at + 30
    resolved = _alert(replace(event, status="resolved", change="resolved", resolved_at=resolved_at))
    assert resolved["endsAt"] == rfc3339(resolved_at)
    assert resolved["labels"] == firing["labels"]


def test_resolution_and_lateness_are_annotations_only_when_set() -> None:
    event = example_event()
    resolved = replace(event, status="resolved", change="resolved", resolved_at=event.updated_at + 30)
    plain = _alert(resolved)["annotations"]
    assert "resolution" not in plain and "late_by" not in plain
    annotations = _alert(replace(resolved, resolution="accepted as the new normal after 2h", late_by=7500.0))[
        "annotations"
    ]
    assert annotations == {
        **plain,
        "resolution": "accepted as the new normal after 2h",
        "late_by": "2h 5m",
    }
    assert _alert(replace(event, late_by=45.0))["annotations"]["late_by"] == "45s"


def test_no_graph_link_means_no_generator_url() -> None:
    assert "generatorURL" not in _alert(example_event(links={}))


def test_multi_series_incident_is_identified_by_its_group() -> None:
    top = example_event().top
    other = replace(
        top, key='api_latency_p99{instance="b",job="api"}', labels={**top.labels, "instance": "b"}
    )
    alert = _alert(example_event(findings=(top, other)))
    assert alert["labels"] == {"alertname": "AnomalyDetected", "detector": "latency", "job": "api"}
    detail = "observed 950, expected [300, 500], p = 2e-06, about 1 in 500,000"
    assert alert["annotations"]["contributors"].splitlines() == [
        f'api_latency_p99{{instance="a",job="api"}}: {detail}',
        f'api_latency_p99{{instance="b",job="api"}}: {detail}',
    ]


def test_series_labels_never_override_the_sinks_own() -> None:
    top = replace(
        example_event().top, labels={"alertname": "Mine", "detector": "x", "__meta": "drop", "pod": ""}
    )
    labels = _alert(example_event(findings=(top,), group_labels={}))["labels"]
    assert labels == {
        "alertname": "AnomalyDetected",
        "detector": "latency",
        "exported_alertname": "Mine",
        "exported_detector": "x",
    }


# --- against a real Alertmanager -------------------------------------------------------------------


def _notifications(requests: list[RecordedRequest], status: str) -> list[dict[str, Any]]:
    return [r.json() for r in requests if r.path == "/am" and r.json()["status"] == status]


@pytest.mark.live
def test_real_alertmanager_notifies_firing_then_resolved(
    alertmanager_webhook: tuple[AlertmanagerHandle, Receiver], connection: sqlite3.Connection
) -> None:
    alertmanager, receiver = alertmanager_webhook
    with Outbox(connection, [AlertmanagerSink(alertmanager.url, lease=LEASE)]) as outbox:
        opened = example_event()
        outbox.enqueue(opened)
        assert outbox.deliver_due().delivered == 1

        requests = receiver.wait_for(lambda got: len(_notifications(got, "firing")) >= 1, timeout=20)
        [notification] = _notifications(requests, "firing")
        [alert] = notification["alerts"]
        assert alert["status"] == "firing"
        assert alert["labels"] == {
            "alertname": "AnomalyDetected",
            "detector": "latency",
            "job": "api",
            "instance": "a",
            "metric": "api_latency_p99",
        }
        assert alert["annotations"]["observed"] == "950"
        assert alert["annotations"]["expected_band"] == "[300, 500]"
        assert alert["annotations"]["anomaly_score"] == "0.999998"
        assert alert["annotations"]["summary"] == opened.summary
        assert alert["generatorURL"] == opened.links["graph"]
        assert datetime.fromisoformat(alert["startsAt"]).timestamp() == opened.opened_at

        resolved = replace(
            opened,
            status="resolved",
            change="resolved",
            sequence=2,
            resolved_at=time.time(),
            updated_at=time.time(),
            resolution="accepted as the new normal after 2h",
        )
        outbox.enqueue(resolved)
        assert outbox.deliver_due().delivered == 1
        requests = receiver.wait_for(lambda got: len(_notifications(got, "resolved")) >= 1, timeout=20)
        [notification] = _notifications(requests, "resolved")
        [alert] = notification["alerts"]
        assert alert["status"] == "resolved"
        assert alert["labels"]["instance"] == "a"
        assert alert["annotations"]["incident_id"] == opened.incident_id
        assert alert["annotations"]["resolution"] == "accepted as the new normal after 2h"


@pytest.mark.live
def test_real_alertmanager_refresh_extends_the_lease(
    alertmanager_webhook: tuple[AlertmanagerHandle, Receiver], connection: sqlite3.Connection
) -> None:
    alertmanager, _ = alertmanager_webhook
    with Outbox(connection, [AlertmanagerSink(alertmanager.url, lease=LEASE)]) as outbox:
        opened = example_event()
        refreshed = replace(opened, change="refreshed", sequence=2, updated_at=opened.updated_at + 100)
        outbox.enqueue(opened)
        outbox.deliver_due()
        [held] = alertmanager.alerts()
        assert datetime.fromisoformat(str(held["endsAt"])).timestamp() == pytest.approx(
            opened.updated_at + LEASE
        )

        outbox.enqueue(refreshed)
        assert outbox.deliver_due().delivered == 1
        [held] = alertmanager.alerts()  # the same alert: same labels
        assert datetime.fromisoformat(str(held["endsAt"])).timestamp() == pytest.approx(
            refreshed.updated_at + LEASE
        )


@pytest.mark.live
def test_real_alertmanager_rejection_is_permanent(
    alertmanager_webhook: tuple[AlertmanagerHandle, Receiver],
    connection: sqlite3.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    alertmanager, _ = alertmanager_webhook
    # Not a valid label name: Alertmanager answers 400, and retrying cannot help.
    event = example_event(group_labels={"bad-name": "x"})
    with Outbox(connection, [AlertmanagerSink(alertmanager.url)]) as outbox, caplog.at_level(logging.ERROR):
        outbox.enqueue(event)
        report = outbox.deliver_due()
        assert (report.failed, report.retrying) == (1, 0)
        [delivery] = outbox.recent()
        assert (delivery.state, delivery.last_status, delivery.attempts) == ("failed", 400, 1)
    assert "failed permanently (HTTP 400" in caplog.text
    assert httpx.get(f"{alertmanager.url}/api/v2/alerts").json() == []

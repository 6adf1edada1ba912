"""PagerDuty Events API v2, checked on the wire by a local receiver."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace

from detector.alerts import AlertEvent, SeriesFinding
from service.outbox import Outbox
from service.sinks import PagerDutySink, example_event
from service.sinks.pagerduty import dedup_key
from tests.support.net import Receiver

KEY = "R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY00"
ACCEPTED = b'{"status":"success","message":"Event processed","dedup_key":"latency-api-7"}'


def _event() -> AlertEvent:
    finding = SeriesFinding(
        key='api_latency_p99{instance="a",job="api"}',
        labels={"__name__": "api_latency_p99", "instance": "a", "job": "api"},
        observed=950.0,
        expected=400.0,
        lower=300.0,
        upper=500.0,
        p_value=2e-6,
        direction="high",
        started_at=1_800_000_000.0,
        model="auto",
        warming=False,
    )
    return AlertEvent(
        incident_id="latency-api-7",
        status="firing",
        change="opened",
        detector="latency",
        group_labels={"job": "api"},
        opened_at=1_800_000_060.0,
        resolved_at=None,
        updated_at=1_800_000_120.0,
        sequence=1,
        findings=(finding,),
        summary="latency: api_latency_p99 on a is above its expected band",
        description="p99 latency 950 ms against 300–500 ms.",
        links={"graph": "http://prom:9090/graph?g0.expr=api_latency_p99", "series": "http://svc/series/1"},
    )


def test_trigger_then_resolve_with_one_dedup_key(receiver: Receiver, connection: sqlite3.Connection) -> None:
    receiver.respond_with(202, headers={"Content-Type": "application/json"}, body=ACCEPTED)
    sink = PagerDutySink(KEY, url=receiver.url + "/v2/enqueue", severity="critical")
    opened = _event()
    refreshed = replace(opened, change="refreshed", sequence=2, updated_at=opened.updated_at + 60)
    resolved = replace(
        opened,
        status="resolved",
        change="resolved",
        sequence=3,
        resolved_at=1_800_000_300.0,
        updated_at=1_800_000_300.0,
    )
    with Outbox(connection, [sink]) as outbox:
        for event in (opened, refreshed, resolved):
            outbox.enqueue(event)
        while outbox.pending():
            outbox.deliver_due()

    trigger, resolve = receiver.requests  # the refresh was never sent
    for request in (trigger, resolve):
        assert (request.method, request.path) == ("POST", "/v2/enqueue")
        assert request.header("Content-Type") == "application/json"
    assert trigger.json() == {
        "routing_key": KEY,
        "event_action": "trigger",
        "dedup_key": "latency-api-7",
        "payload": {
            "summary": "latency: api_latency_p99 on a is above its expected band",
            "source": "a",
            "severity": "critical",
            "timestamp": "2027-01-15T08:02:00.000Z",
            "component": "api_latency_p99",
            "group": "api",
            "class": "latency",
            "custom_details": {
                "incident_id": "latency-api-7",
                "change": "opened",
                "sequence": 1,
                "description": "p99 latency 950 ms against 300–500 ms.",
                "opened_at": "2027-01-15T08:01:00.000Z",
                "group_labels": {"job": "api"},
                "series": [
                    {
                        "series": 'api_latency_p99{instance="a",job="api"}',
                        "observed": 950.0,
                        "expected": 400.0,
                        "expected_band": [300.0, 500.0],
                        "p_value": 2e-6,
                        "anomaly_score": 1.0 - 2e-6,
                        "direction": "high",
                        "since": "2027-01-15T08:00:00.000Z",
                        "model": "auto",
                        "warming": False,
                    }
                ],
                "series_count": 1,
                "correlated": [],
            },
        },
        "links": [
            {"href": "http://prom:9090/graph?g0.expr=api_latency_p99", "text": "Graph"},
            {"href": "http://svc/series/1", "text": "Series"},
        ],
    }
    assert resolve.json() == {"routing_key": KEY, "event_action": "resolve", "dedup_key": "latency-api-7"}


def test_an_update_triggers_again_under_the_same_key(
    receiver: Receiver, connection: sqlite3.Connection
) -> None:
    receiver.respond_with(202, body=ACCEPTED)
    opened = _event()
    updated = replace(opened, change="updated", sequence=2, updated_at=opened.updated_at + 60)
    with Outbox(connection, [PagerDutySink(KEY, url=receiver.url + "/v2/enqueue")]) as outbox:
        outbox.enqueue(opened)
        outbox.enqueue(updated)
        outbox.deliver_due()
    first, second = (r.json() for r in receiver.requests)
    assert [first["event_action"], second["event_action"]] == ["trigger", "trigger"]
    assert first["dedup_key"] == second["dedup_key"] == "latency-api-7"
    assert second["payload"]["custom_details"]["change"] == "updated"
    assert second["payload"]["severity"] == "error"


def test_summary_is_cut_to_1024_characters_and_a_long_id_is_hashed() -> None:
    event = replace(example_event(), summary="x" * 5000, incident_id="i" * 400)
    body = PagerDutySink(KEY).request(event, "d").body
    message = json.loads(body)
    assert len(message["payload"]["summary"]) == 1024
    assert message["payload"]["summary"].endswith("…")
    assert message["dedup_key"] == dedup_key("i" * 400)
    assert len(message["dedup_key"]) <= 255


def test_source_without_an_instance_is_the_series_or_group() -> None:
    top = replace(example_event().top, labels={"job": "api"}, key='up{job="api"}')
    single = example_event(findings=(top,))
    several = example_event(findings=(top, replace(top, key='up{job="api",x="1"}')))
    assert json.loads(PagerDutySink(KEY).request(single, "d").body)["payload"]["source"] == 'up{job="api"}'
    assert json.loads(PagerDutySink(KEY).request(several, "d").body)["payload"]["source"] == '{job="api"}'


def test_late_data_is_a_custom_detail_only_when_late_and_a_resolve_stays_bare() -> None:
    sink = PagerDutySink(KEY)
    on_time = json.loads(sink.request(_event(), "d").body)["payload"]["custom_details"]
    assert "late_by" not in on_time
    late = json.loads(sink.request(replace(_event(), late_by=7500.0), "d").body)["payload"]["custom_details"]
    assert late == {**on_time, "late_by": "2h 5m"}
    # PagerDuty reads the payload of triggers only: a resolve has nothing to carry the reason in.
    resolved = replace(
        _event(),
        status="resolved",
        change="resolved",
        resolved_at=1_800_000_300.0,
        resolution="accepted as the new normal by feedback from alice",
        late_by=7500.0,
    )
    assert json.loads(sink.request(resolved, "d").body) == {
        "routing_key": KEY,
        "event_action": "resolve",
        "dedup_key": "latency-api-7",
    }

"""Slack incoming webhook messages, checked on the wire by a local receiver."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace

from detector.alerts import AlertEvent, SeriesFinding
from service.outbox import Outbox
from service.sinks import SlackSink, example_event
from tests.support.net import Receiver

T0 = 1_800_000_000  # 2027-01-15T08:00:00Z
SUMMARY = "latency: api_latency_p99 on a is above its expected band"


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
        started_at=float(T0),
        model="auto",
        warming=False,
    )
    return AlertEvent(
        incident_id="latency-api-7",
        status="firing",
        change="opened",
        detector="latency",
        group_labels={"job": "api"},
        opened_at=T0 + 60.0,
        resolved_at=None,
        updated_at=T0 + 120.0,
        sequence=1,
        findings=(finding,),
        summary=SUMMARY,
        description="p99 latency 950 ms against 300–500 ms & rising.",
        links={"graph": "http://prom:9090/graph?g0.expr=x&g0.tab=0"},
    )


def _field(title: str, value: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": f"*{title}*\n{value}"}


SINCE = "<!date^1800000000^{date_short_pretty} {time}|2027-01-15T08:00:00.000Z>"


def test_opened_and_resolved_messages_on_the_wire(receiver: Receiver, connection: sqlite3.Connection) -> None:
    receiver.respond_with(200, body=b"ok")
    opened = _event()
    refreshed = replace(opened, change="refreshed", sequence=2)
    resolved = replace(
        opened,
        status="resolved",
        change="resolved",
        sequence=3,
        resolved_at=T0 + 810.0,
        updated_at=T0 + 810.0,
    )
    with Outbox(connection, [SlackSink(receiver.url + "/services/T0/B0/XXXX")]) as outbox:
        for event in (opened, refreshed, resolved):
            outbox.enqueue(event)
        outbox.deliver_due()

    first, second = receiver.requests  # Slack gets no refreshes
    for request in (first, second):
        assert (request.method, request.path) == ("POST", "/services/T0/B0/XXXX")
        assert request.header("Content-Type") == "application/json; charset=utf-8"
    series_fields = [
        _field("Series", '`api_latency_p99{instance="a",job="api"}`'),
        _field("Observed", "950 (high)"),
        _field("Expected", "400, band [300, 500]"),
        _field("How unusual", "p = 2e-06, about 1 in 500,000"),
        _field("Since", SINCE),
        _field("Detector", "latency"),
    ]
    links = {
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": "<http://prom:9090/graph?g0.expr=x&amp;g0.tab=0|Graph>"}],
    }
    footer = {
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": "incident `latency-api-7` · event 1 · model auto"}],
    }
    assert first.json() == {
        "text": f"[FIRING] {SUMMARY} — observed 950, expected [300, 500]",
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": f":rotating_light: Anomaly: {SUMMARY}",
                    "emoji": True,
                },
            },
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": "p99 latency 950 ms against 300–500 ms &amp; rising."},
            },
            {"type": "section", "fields": series_fields},
            links,
            footer,
        ],
    }
    message = second.json()
    assert message["text"] == f"[RESOLVED] {SUMMARY}"
    assert message["blocks"][0]["text"]["text"].startswith(":white_check_mark: Resolved: ")
    assert message["blocks"][1] == {
        "type": "section",
        "text": {
            "type": "mrkdwn",
            "text": "*Resolved* after 12m 30s. p99 latency 950 ms against 300–500 ms &amp; rising.",
        },
    }
    assert message["blocks"][2]["fields"][-1] == _field(
        "Resolved at", "<!date^1800000810^{date_short_pretty} {time}|2027-01-15T08:13:30.000Z>"
    )


def test_several_series_warming_and_correlated_incidents_are_shown() -> None:
    top = replace(_event().top, warming=True)
    others = tuple(replace(top, key=f"s{i}", observed=float(i), p_value=1e-3) for i in range(7))
    event = replace(_event(), findings=(top, *others), correlated=("errors-api-3",))
    message = json.loads(SlackSink("https://hooks.slack.com/x").request(event, "d").body)
    texts = [json.dumps(block) for block in message["blocks"]]
    assert "and 7 more" in message["blocks"][2]["fields"][0]["text"]
    other_series = message["blocks"][3]["text"]["text"].splitlines()
    assert other_series[0] == "*Other series*"
    assert other_series[1] == "• `s0`: 0, expected [300, 500], p = 0.001, about 1 in 1,000"
    assert other_series[-1] == "… and 2 more"
    assert any("still warming up" in text for text in texts)
    assert "related: `errors-api-3`" in texts[-1]


def test_control_characters_are_escaped_and_the_header_fits() -> None:
    event = example_event(summary="<!channel> " + "x" * 300)
    message = json.loads(SlackSink("https://hooks.slack.com/x").request(event, "d").body)
    assert message["text"].startswith("[FIRING] &lt;!channel&gt; ")
    assert len(message["blocks"][0]["text"]["text"]) == 150


def test_a_resolution_reason_and_late_data_are_said_only_when_set() -> None:
    sink = SlackSink("https://hooks.slack.com/x")
    resolved = replace(_event(), status="resolved", change="resolved", resolved_at=T0 + 810.0)
    plain = json.loads(sink.request(resolved, "d").body)
    assert plain["text"] == f"[RESOLVED] {SUMMARY}"
    assert plain["blocks"][1]["text"]["text"].startswith("*Resolved* after 12m 30s. p99")
    assert "arrived" not in json.dumps(plain)

    why = "accepted as the new normal by feedback from <alice>"
    message = json.loads(sink.request(replace(resolved, resolution=why, late_by=7500.0), "d").body)
    assert (
        message["text"] == f"[RESOLVED] {SUMMARY} — accepted as the new normal by feedback from &lt;alice&gt;"
    )
    # The reason and the lateness are said once, by the description (detector.explain.describe).
    assert message["blocks"] == plain["blocks"]

"""Sink configuration, construction and routing: what reaches which sink."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from pydantic import TypeAdapter

import service.sinks
from detector.alerts import SeriesFinding
from detector.config import ConfigError
from service.sinks import (
    AlertmanagerSink,
    PagerDutySink,
    Route,
    Sink,
    SinkConfig,
    SlackSink,
    WebhookSink,
    build_sinks,
    example_event,
)

CONFIGS: list[dict[str, Any]] = [
    {"type": "alertmanager", "url": "http://127.0.0.1:9093", "lease": "15m", "timeout": "5s"},
    {"type": "pagerduty", "routing_key": "pd-key-123", "match": {"job": "api"}},
    {"type": "slack", "webhook_url": "https://hooks.slack.com/services/T0/B0/SECRETPART"},
    {"type": "webhook", "name": "audit", "url": "http://127.0.0.1:8080/in", "secret": "hmac-key-456"},
]


def test_each_type_builds_its_sink_with_its_settings() -> None:
    alertmanager, pagerduty, slack, webhook = build_sinks(CONFIGS)
    assert isinstance(alertmanager, AlertmanagerSink)
    assert (alertmanager.name, alertmanager.lease, alertmanager.timeout) == ("alertmanager", 900.0, 5.0)
    assert isinstance(pagerduty, PagerDutySink)
    assert (pagerduty.url, pagerduty.severity, pagerduty.routing_key) == (
        "https://events.pagerduty.com/v2/enqueue",
        "error",
        "pd-key-123",
    )
    assert isinstance(slack, SlackSink)
    assert slack.webhook_url == "https://hooks.slack.com/services/T0/B0/SECRETPART"
    assert isinstance(webhook, WebhookSink)
    assert (webhook.name, webhook.secret) == ("audit", "hmac-key-456")
    assert all(isinstance(sink, Sink) for sink in (alertmanager, pagerduty, slack, webhook))


def test_defaults_lease_and_timeout() -> None:
    [sink] = build_sinks([{"type": "alertmanager", "url": "http://127.0.0.1:9093"}])
    assert isinstance(sink, AlertmanagerSink)
    assert (sink.lease, sink.timeout) == (300.0, 10.0)


def test_secrets_never_print() -> None:
    configs = [TypeAdapter(SinkConfig).validate_python(raw) for raw in CONFIGS]
    printed = repr(configs) + repr(build_sinks(configs))
    for secret in ("pd-key-123", "SECRETPART", "hmac-key-456"):
        assert secret not in printed


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"type": "webhook", "url": "http://127.0.0.1:1/", "secret": ""},
            "sinks[0]: secret: secret is empty",
        ),
        ({"type": "webhook", "url": "http://127.0.0.1:1/", "secret": "  "}, "secret is empty"),
        ({"type": "pagerduty", "routing_key": ""}, "sinks[0]: routing_key: routing_key is empty"),
        (
            {"type": "slack", "webhook_url": "https://x/y", "channel": "#ops"},
            "sinks[0]: channel: unknown key; allowed: match, match_re, timeout, type, name, webhook_url",
        ),
        ({"type": "teams", "url": "http://x/"}, "sinks[0]: type: 'teams' is not a sink type; use one of"),
        ({"url": "http://x/"}, "sinks[0]: type: missing"),
        ({"type": "alertmanager", "url": "localhost:9093"}, "'localhost:9093' is not an http(s) URL"),
        ({"type": "alertmanager", "url": "http://x/", "lease": "5x"}, "'5x' is not a duration"),
        (
            {"type": "alertmanager", "url": "http://x/", "match_re": {"job": "api("}},
            "'api(' is not a regular",
        ),
        ({"type": "alertmanager", "url": "http://x/", "name": "a/b"}, "sinks[0]: name:"),
        ({"type": "pagerduty", "routing_key": "k", "severity": "page"}, "sinks[0]: severity:"),
    ],
)
def test_bad_configuration_names_the_sink_and_key(config: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_sinks([config])
    assert message in str(caught.value)


def test_slack_url_error_does_not_quote_the_secret_url() -> None:
    with pytest.raises(ConfigError) as caught:
        build_sinks([{"type": "slack", "webhook_url": "hooks.slack.com/services/SECRETPART"}])
    assert "webhook_url is not an http(s) URL" in str(caught.value)
    assert "SECRETPART" not in str(caught.value)


def test_names_must_be_unique() -> None:
    with pytest.raises(ConfigError, match=r"sinks\[1\]: name 'slack' is already used by sinks\[0\]"):
        build_sinks(
            [
                {"type": "slack", "webhook_url": "https://hooks.slack.com/a"},
                {"type": "slack", "webhook_url": "https://hooks.slack.com/b"},
            ]
        )


def _finding(**labels: str) -> SeriesFinding:
    return replace(example_event().top, labels=labels, key=str(labels))


def test_match_uses_group_labels_detector_and_series_labels() -> None:
    event = example_event()  # detector latency, group {job: api}, series {instance: a, job: api, ...}
    assert Route(match={"job": "api"}).matches(event)
    assert Route(match={"detector": "latency"}).matches(event)
    assert Route(match={"instance": "a"}).matches(event)
    assert not Route(match={"instance": "b"}).matches(event)
    assert not Route(match={"env": "prod"}).matches(event)  # missing reads as ""
    assert Route(match={"env": ""}).matches(event)


def test_match_re_is_anchored_like_alertmanager() -> None:
    event = example_event()
    assert Route(match_re={"job": "ap."}).matches(event)
    assert not Route(match_re={"job": "ap"}).matches(event)
    assert Route(match_re={"job": "web|api", "detector": "lat.*"}).matches(event)
    assert Route(match_re={"env": "prod|"}).matches(event)


def test_all_matchers_must_hold_for_one_series_together() -> None:
    event = replace(
        example_event(), findings=(_finding(instance="a", zone="x"), _finding(instance="b", zone="y"))
    )
    assert Route(match={"instance": "b", "zone": "y"}).matches(event)
    # instance=a and zone=y hold only for different series.
    assert not Route(match={"instance": "a", "zone": "y"}).matches(event)


def test_paging_sinks_skip_refreshes_and_others_take_them() -> None:
    alertmanager, pagerduty, slack, webhook = build_sinks(CONFIGS)
    for change in ("opened", "updated", "refreshed", "resolved"):
        status = "resolved" if change == "resolved" else "firing"
        event = example_event(change=change, status=status)
        paged = change != "refreshed"
        assert (
            alertmanager.wants(event),
            pagerduty.wants(event),
            slack.wants(event),
            webhook.wants(event),
        ) == (
            True,
            paged,
            paged,
            True,
        )


def test_pagerduty_route_filters_by_label() -> None:
    pagerduty = build_sinks(CONFIGS)[1]
    assert pagerduty.wants(example_event())
    assert not pagerduty.wants(
        example_event(group_labels={"job": "batch"}, findings=(_finding(job="batch"),))
    )


def test_public_surface() -> None:
    assert service.sinks.__all__ == [
        "ALL_CHANGES",
        "PAGING_CHANGES",
        "AlertmanagerConfig",
        "AlertmanagerSink",
        "OutgoingRequest",
        "PagerDutyConfig",
        "PagerDutySink",
        "Route",
        "Sink",
        "SinkConfig",
        "SlackConfig",
        "SlackSink",
        "WebhookConfig",
        "WebhookSink",
        "build_sinks",
        "example_event",
        "format_band",
        "format_duration",
        "format_labels",
        "format_number",
        "format_rarity",
        "json_bytes",
        "rfc3339",
        "verify_signature",
    ]


def test_the_replica_name_goes_to_every_sink_but_never_into_an_identity() -> None:
    configs = [
        {"type": "alertmanager", "urls": ["http://127.0.0.1:9093", "http://127.0.0.1:9094"]},
        *CONFIGS[1:],
    ]
    event = example_event()
    bodies = {}
    for replica in ("a", "b"):
        sinks = build_sinks(configs, replica=replica)
        assert [sink.replica for sink in sinks] == [replica] * 5  # type: ignore[attr-defined]
        bodies[replica] = [json.loads(sink.request(event, "api-1/1/x").body) for sink in sinks]
    for number in (0, 1):  # each Alertmanager of the cluster
        one, other = bodies["a"][number][0], bodies["b"][number][0]
        assert one["labels"] == other["labels"] and one["startsAt"] == other["startsAt"]
        assert (one["annotations"]["replica"], other["annotations"]["replica"]) == ("a", "b")
    pagerduty, slack, webhook = bodies["a"][2:]
    assert pagerduty["dedup_key"] == bodies["b"][2]["dedup_key"]
    assert pagerduty["payload"]["custom_details"]["replica"] == "a"
    assert "sent by replica `a`" in slack["blocks"][-1]["elements"][0]["text"]
    assert (webhook["replica"], webhook["event"]) == ("a", bodies["b"][4]["event"])


def test_an_unnamed_replica_adds_nothing() -> None:
    alertmanager, pagerduty, slack, webhook = build_sinks(CONFIGS)
    event = example_event()
    assert "replica" not in json.loads(alertmanager.request(event, "x").body)[0]["annotations"]
    assert "replica" not in json.loads(pagerduty.request(event, "x").body)["payload"]["custom_details"]
    assert "replica" not in json.loads(slack.request(event, "x").body)["blocks"][-1]["elements"][0]["text"]
    assert "replica" not in json.loads(webhook.request(event, "x").body)

"""PagerDuty: Events API v2 ``trigger`` and ``resolve`` with one ``dedup_key`` per incident.

Opening and updating an incident both send ``trigger`` with the same
``dedup_key``; PagerDuty folds them into one alert.  ``resolve`` closes it.
Refreshes are not sent: they would only repeat the latest trigger.

A trigger's ``custom_details`` carry the whole explanation, plus ``late_by``
(how late the data arrived, e.g. ``"2h 5m"``) when it was late.  A
``resolve`` carries no payload (PagerDuty uses the payload of triggers only),
so the reason a resolved incident resolved cannot reach PagerDuty this way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from detector.alerts import AlertEvent
from service.http_config import HTTPClientConfig, check_secret
from service.sinks import (
    _ROUTING_KEY_ADVICE,
    PAGING_CHANGES,
    OutgoingRequest,
    RoutedSink,
    format_duration,
    format_labels,
    json_bytes,
    rfc3339,
)

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
_MAX_SUMMARY = 1024
_MAX_DEDUP_KEY = 255
_MAX_SERIES = 20


def dedup_key(incident_id: str) -> str:
    """PagerDuty's ``dedup_key`` for an incident: the id itself, hashed if too long.

    >>> dedup_key("latency-api-1")
    'latency-api-1'
    >>> len(dedup_key("x" * 300))
    71
    """
    if len(incident_id) <= _MAX_DEDUP_KEY:
        return incident_id
    return "sha256:" + hashlib.sha256(incident_id.encode()).hexdigest()


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _source(event: AlertEvent) -> str:
    """Where the problem is: an instance if known, else the series or the group."""
    top = event.top
    instance = event.group_labels.get("instance") or top.labels.get("instance")
    if instance:
        return instance
    if len(event.findings) == 1 or not event.group_labels:
        return top.key
    return format_labels(event.group_labels)


def _finding_details(event: AlertEvent) -> list[dict[str, Any]]:
    return [
        {
            "series": f.key,
            "observed": f.observed,
            "expected": f.expected,
            "expected_band": [f.lower, f.upper],
            "p_value": f.p_value,
            "anomaly_score": 1.0 - f.p_value,
            "direction": f.direction,
            "since": rfc3339(f.started_at),
            "model": f.model,
            "warming": f.warming,
        }
        for f in event.findings[:_MAX_SERIES]
    ]


class PagerDutySink(RoutedSink):
    """Sends events to a PagerDuty service through its Events API v2 integration.

    Parameters
    ----------
    routing_key
        The service integration key (a secret; never printed).
    name
        Unique sink name; part of every delivery id.
    url
        The Events API endpoint.
    severity
        ``critical``, ``error``, ``warning`` or ``info``.
    match, match_re
        Label routing, see :class:`~service.sinks.Route`.
    timeout
        Seconds allowed for one request.
    http
        Credentials and TLS for the requests (Prometheus's ``http_config``).
    replica
        The sending replica's name, as a ``custom_details`` entry of triggers; ``""``: left out.

    Examples
    --------
    >>> import json
    >>> from service.sinks import example_event
    >>> sink = PagerDutySink("R0UT1NGKEY")
    >>> sink
    PagerDutySink(routing_key='**********', name='pagerduty', severity='error')
    >>> body = json.loads(sink.request(example_event(), "latency-api-1/1/pagerduty").body)
    >>> body["event_action"], body["dedup_key"], body["payload"]["severity"]
    ('trigger', 'latency-api-1', 'error')
    >>> resolved = example_event(status="resolved", change="resolved", sequence=2)
    >>> json.loads(sink.request(resolved, "latency-api-1/2/pagerduty").body)
    {'dedup_key': 'latency-api-1', 'event_action': 'resolve', 'routing_key': 'R0UT1NGKEY'}
    """

    changes = PAGING_CHANGES

    def __init__(
        self,
        routing_key: str,
        *,
        name: str = "pagerduty",
        url: str = EVENTS_URL,
        severity: str = "error",
        match: Mapping[str, str] | None = None,
        match_re: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        http: HTTPClientConfig | None = None,
        replica: str = "",
    ) -> None:
        check_secret(routing_key, "routing_key", _ROUTING_KEY_ADVICE)
        if severity not in ("critical", "error", "warning", "info"):
            raise ValueError(f"severity {severity!r} is not one of critical, error, warning, info")
        self.routing_key = routing_key
        self.url = url
        self.severity = severity
        super().__init__(name, match, match_re, timeout, http, replica)

    def request(self, event: AlertEvent, delivery_id: str) -> OutgoingRequest:
        """A ``trigger`` for a firing event, a ``resolve`` for a resolved one."""
        body: dict[str, Any] = {
            "routing_key": self.routing_key,
            "event_action": "resolve" if event.status == "resolved" else "trigger",
            "dedup_key": dedup_key(event.incident_id),
        }
        if event.status != "resolved":
            body["payload"] = self._payload(event)
            body["links"] = [{"href": url, "text": name.capitalize()} for name, url in event.links.items()]
        return OutgoingRequest(
            method="POST", url=self.url, headers={"Content-Type": "application/json"}, body=json_bytes(body)
        )

    def _payload(self, event: AlertEvent) -> dict[str, Any]:
        top = event.top
        summary = event.summary or f"{event.detector}: anomaly on {top.key}"
        payload: dict[str, Any] = {
            "summary": _truncate(summary, _MAX_SUMMARY),
            "source": _source(event),
            "severity": self.severity,
            "timestamp": rfc3339(event.updated_at),
            "class": event.detector,
            "custom_details": {
                "incident_id": event.incident_id,
                "change": event.change,
                "sequence": event.sequence,
                "description": event.description,
                "opened_at": rfc3339(event.opened_at),
                "group_labels": event.group_labels,
                "series": _finding_details(event),
                "series_count": len(event.findings),
                "correlated": list(event.correlated),
            },
        }
        if event.late_by > 0:
            payload["custom_details"]["late_by"] = format_duration(event.late_by)
        if self.replica:
            payload["custom_details"]["replica"] = self.replica
        component = top.labels.get("__name__")
        if component:
            payload["component"] = component
        group = event.group_labels.get("job") or top.labels.get("job")
        if group:
            payload["group"] = group
        return payload

    def __repr__(self) -> str:
        return f"PagerDutySink(routing_key='**********', name={self.name!r}, severity={self.severity!r})"

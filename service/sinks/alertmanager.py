"""Alertmanager: alerts posted to API v2 with a lease, as Prometheus posts them.

An alert's identity at Alertmanager is its label set, so labels hold only what
never changes during an incident: ``alertname``, ``detector``, the group labels
and, for a single-series incident, that series' labels.  Everything that moves
(observed value, expected band, score, explanation, other series, links) is an
annotation; so are ``resolution``, why a resolved incident resolved when it was
not the ordinary return to the band, and ``late_by``, how late the data arrived
when it was late.  A firing alert ends ``lease`` seconds after the event; the
detector's periodic ``refreshed`` events push that end forward, and a resolved
event sets it to the resolution time.  If the detector stops, Alertmanager
resolves the alert itself when the lease runs out.
"""

from __future__ import annotations

from collections.abc import Mapping

from detector.alerts import AlertEvent
from service.http_config import HTTPClientConfig
from service.sinks import (
    OutgoingRequest,
    RoutedSink,
    format_band,
    format_duration,
    format_labels,
    format_number,
    format_rarity,
    json_bytes,
    rfc3339,
)

ALERTNAME = "AnomalyDetected"
#: Labels set by the sink; a series label of the same name is kept as ``exported_<name>``.
_RESERVED = ("alertname", "detector", "metric")
_MAX_CONTRIBUTORS = 20


def alert_labels(event: AlertEvent) -> dict[str, str]:
    """The stable label set that identifies the event's incident at Alertmanager.

    The metric name (``__name__``) becomes ``metric``; other ``__`` labels are
    internal to Prometheus and dropped; empty values mean "absent".

    >>> from service.sinks import example_event
    >>> sorted(alert_labels(example_event()).items())  # doctest: +NORMALIZE_WHITESPACE
    [('alertname', 'AnomalyDetected'), ('detector', 'latency'), ('instance', 'a'),
     ('job', 'api'), ('metric', 'api_latency_p99')]
    """
    labels: dict[str, str] = {}
    source: Mapping[str, str] = event.findings[0].labels if len(event.findings) == 1 else {}
    for name, value in {**source, **event.group_labels}.items():
        if name.startswith("__") or not value:
            continue
        labels[f"exported_{name}" if name in _RESERVED else name] = value
    metric = source.get("__name__", "")
    if metric:
        labels["metric"] = metric
    labels["alertname"] = ALERTNAME
    labels["detector"] = event.detector
    return labels


def alert_annotations(event: AlertEvent, replica: str = "") -> dict[str, str]:
    """Everything about the event that may change between updates, as strings.

    >>> from service.sinks import example_event
    >>> annotations = alert_annotations(example_event())
    >>> annotations["observed"], annotations["expected_band"], annotations["anomaly_score"]
    ('950', '[300, 500]', '0.999998')

    ``resolution`` (why a resolved incident resolved, when not the ordinary
    way), ``late_by`` (how late the data arrived) and ``replica`` (which
    replica sent it) appear only when set:

    >>> late = alert_annotations(example_event(late_by=7500.0))
    >>> late["late_by"], "resolution" in late
    ('2h 5m', False)
    >>> alert_annotations(example_event(status="resolved", change="resolved",
    ...                                 resolution="accepted as the new normal after 2h"))["resolution"]
    'accepted as the new normal after 2h'
    >>> alert_annotations(example_event(), replica="detector-b")["replica"]
    'detector-b'
    """
    top = event.top
    annotations = {
        "summary": event.summary,
        "description": event.description,
        "incident_id": event.incident_id,
        "series": top.key,
        "observed": format_number(top.observed),
        "expected": format_number(top.expected),
        "expected_band": format_band(top),
        "anomaly_score": f"{1.0 - top.p_value:.10g}",
        "p_value": f"{top.p_value:.3g}",
        "rarity": format_rarity(top.p_value),
        "direction": top.direction,
        "since": rfc3339(top.started_at),
        "model": top.model + (" (warming up)" if top.warming else ""),
        "resolution": event.resolution,
        "replica": replica,
    }
    if event.late_by > 0:
        annotations["late_by"] = format_duration(event.late_by)
    if len(event.findings) > 1:
        lines = [
            f"{f.key}: observed {format_number(f.observed)}, expected {format_band(f)}, "
            f"{format_rarity(f.p_value)}"
            for f in event.findings[:_MAX_CONTRIBUTORS]
        ]
        if len(event.findings) > _MAX_CONTRIBUTORS:
            lines.append(f"… and {len(event.findings) - _MAX_CONTRIBUTORS} more series")
        annotations["contributors"] = "\n".join(lines)
    if event.correlated:
        annotations["correlated"] = ", ".join(event.correlated)
    if event.group_labels:
        annotations["group"] = format_labels(event.group_labels)
    for name, url in event.links.items():
        annotations[f"{name}_url"] = url
    return {name: value for name, value in annotations.items() if value}


class AlertmanagerSink(RoutedSink):
    """Posts events to an Alertmanager's ``/api/v2/alerts``.

    Parameters
    ----------
    url
        The Alertmanager base URL, e.g. ``http://127.0.0.1:9093``.
    name
        Unique sink name; part of every delivery id.
    lease
        Seconds a firing alert lives after its latest event; about three
        refresh intervals.
    match, match_re
        Label routing, see :class:`~service.sinks.Route`.
    timeout
        Seconds allowed for one request.
    http
        Credentials and TLS for the requests (Prometheus's ``http_config``).
    replica
        The sending replica's name, as the ``replica`` annotation (never a label); ``""``: left out.

    Examples
    --------
    >>> import json
    >>> from service.sinks import example_event
    >>> sink = AlertmanagerSink("http://127.0.0.1:9093/", lease=300)
    >>> event = example_event()
    >>> request = sink.request(event, "latency-api-1/1/alertmanager")
    >>> request.method, request.url
    ('POST', 'http://127.0.0.1:9093/api/v2/alerts')
    >>> [alert] = json.loads(request.body)
    >>> sorted(alert)
    ['annotations', 'endsAt', 'generatorURL', 'labels', 'startsAt']
    >>> alert["endsAt"] == rfc3339(event.updated_at + 300)
    True
    """

    def __init__(
        self,
        url: str,
        *,
        name: str = "alertmanager",
        lease: float = 300.0,
        match: Mapping[str, str] | None = None,
        match_re: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        http: HTTPClientConfig | None = None,
        replica: str = "",
    ) -> None:
        if lease <= 0:
            raise ValueError(f"lease {lease!r} must be positive; use about three refresh intervals")
        self.url = url
        self.lease = float(lease)
        super().__init__(name, match, match_re, timeout, http, replica)
        self._endpoint = url.rstrip("/") + "/api/v2/alerts"

    def request(self, event: AlertEvent, delivery_id: str) -> OutgoingRequest:
        """A one-alert list for ``POST /api/v2/alerts``."""
        ends_at = event.resolved_at if event.status == "resolved" else None
        if ends_at is None:
            ends_at = event.updated_at + self.lease
        alert: dict[str, object] = {
            "labels": alert_labels(event),
            "annotations": alert_annotations(event, self.replica),
            # Alertmanager refuses an alert that ends before it starts.
            "startsAt": rfc3339(min(event.opened_at, ends_at)),
            "endsAt": rfc3339(ends_at),
        }
        if event.links.get("graph"):
            alert["generatorURL"] = event.links["graph"]
        return OutgoingRequest(
            method="POST",
            url=self._endpoint,
            headers={"Content-Type": "application/json"},
            body=json_bytes([alert]),
        )

    def __repr__(self) -> str:
        return f"AlertmanagerSink(url={self.url!r}, name={self.name!r}, lease={self.lease!r})"

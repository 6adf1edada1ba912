"""Slack: one readable message per opened, updated or resolved incident.

A message says which series, what was seen against what was expected, how
unusual that is, since when, and where to look; a resolved message says so,
how long the incident lasted and, when it was not the ordinary return to the
band, why it resolved.  An alert raised from late data says how late.
``text`` is the plain fallback Slack shows in notifications.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detector.alerts import AlertEvent
from service.http_config import HTTPClientConfig
from service.sinks import (
    PAGING_CHANGES,
    OutgoingRequest,
    RoutedSink,
    format_band,
    format_duration,
    format_number,
    format_rarity,
    json_bytes,
    rfc3339,
)

_MAX_HEADER = 150
_MAX_TEXT = 3000
_MAX_FIELD = 2000
_MAX_OTHER_SERIES = 5
_TITLES = {
    "opened": ":rotating_light: Anomaly",
    "updated": ":rotating_light: Anomaly (updated)",
    "refreshed": ":rotating_light: Anomaly (still firing)",
    "resolved": ":white_check_mark: Resolved",
}


def escape(text: str) -> str:
    """Text made safe for Slack ``mrkdwn``: only ``&``, ``<`` and ``>`` are control characters.

    >>> escape("p99 <500ms & rising")
    'p99 &lt;500ms &amp; rising'
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _date(timestamp: float) -> str:
    """A time every reader sees in their own time zone, with UTC as the fallback."""
    return f"<!date^{int(timestamp)}^{{date_short_pretty}} {{time}}|{rfc3339(timestamp)}>"


def _mrkdwn(text: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": _cut(text, _MAX_FIELD)}


def fallback_text(event: AlertEvent) -> str:
    """The one-line message for notifications and clients without blocks.

    >>> from service.sinks import example_event
    >>> fallback_text(example_event())
    '[FIRING] latency: api_latency_p99 on a is above its expected band — observed 950, expected [300, 500]'
    >>> fallback_text(example_event(status="resolved", change="resolved", resolution="the series ended"))
    '[RESOLVED] latency: api_latency_p99 on a is above its expected band — the series ended'
    """
    if event.status == "resolved":
        why = f" — {escape(event.resolution)}" if event.resolution else ""
        return f"[RESOLVED] {escape(event.summary)}{why}"
    top = event.top
    observed = format_number(top.observed)
    return f"[FIRING] {escape(event.summary)} — observed {observed}, expected {format_band(top)}"


def blocks(event: AlertEvent, replica: str = "") -> list[dict[str, Any]]:
    """The Block Kit layout of the message; the last line names the sending ``replica``, if given.

    >>> from service.sinks import example_event
    >>> [block["type"] for block in blocks(example_event())]
    ['header', 'section', 'section', 'context', 'context']
    """
    top = event.top
    resolved = event.status == "resolved"
    layout: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": _cut(f"{_TITLES[event.change]}: {event.summary}", _MAX_HEADER),
                "emoji": True,
            },
        }
    ]
    if resolved:
        lasted = format_duration((event.resolved_at or event.updated_at) - event.opened_at)
        # The description says why it resolved (when not the ordinary way) and whether the data was late.
        layout.append(
            {
                "type": "section",
                "text": _mrkdwn(f"*Resolved* after {lasted}. {escape(event.description)}"),
            }
        )
    elif event.description:
        layout.append({"type": "section", "text": _mrkdwn(escape(event.description))})

    series = f"`{escape(top.key)}`"
    if len(event.findings) > 1:
        series += f" and {len(event.findings) - 1} more"
    fields = [
        _mrkdwn(f"*Series*\n{series}"),
        _mrkdwn(f"*Observed*\n{format_number(top.observed)} ({top.direction})"),
        _mrkdwn(f"*Expected*\n{format_number(top.expected)}, band {format_band(top)}"),
        _mrkdwn(f"*How unusual*\n{format_rarity(top.p_value)}"),
        _mrkdwn(f"*Since*\n{_date(top.started_at)}"),
        _mrkdwn(f"*Detector*\n{escape(event.detector)}"),
    ]
    if resolved:
        fields.append(_mrkdwn(f"*Resolved at*\n{_date(event.resolved_at or event.updated_at)}"))
    layout.append({"type": "section", "fields": fields})

    others = event.findings[1 : 1 + _MAX_OTHER_SERIES]
    if others:
        lines = [
            f"• `{escape(f.key)}`: {format_number(f.observed)}, expected {format_band(f)}, "
            f"{format_rarity(f.p_value)}"
            for f in others
        ]
        hidden = len(event.findings) - 1 - len(others)
        if hidden:
            lines.append(f"… and {hidden} more")
        layout.append({"type": "section", "text": _mrkdwn("*Other series*\n" + "\n".join(lines))})

    if top.warming:
        layout.append(
            {
                "type": "context",
                "elements": [_mrkdwn("The model is still warming up: the score is provisional.")],
            }
        )
    if event.links:
        links = " · ".join(
            f"<{escape(url)}|{escape(name.capitalize())}>" for name, url in event.links.items()
        )
        layout.append({"type": "context", "elements": [_mrkdwn(links)]})
    context = f"incident `{escape(event.incident_id)}` · event {event.sequence} · model {escape(top.model)}"
    if event.correlated:
        context += " · related: " + ", ".join(f"`{escape(i)}`" for i in event.correlated)
    if replica:
        context += f" · sent by replica `{escape(replica)}`"
    layout.append({"type": "context", "elements": [_mrkdwn(context)]})
    return layout


class SlackSink(RoutedSink):
    """Posts a message to a Slack incoming webhook for each opened, updated or resolved incident.

    Parameters
    ----------
    webhook_url
        The incoming webhook URL (a secret; never printed).
    name
        Unique sink name; part of every delivery id.
    match, match_re
        Label routing, see :class:`~service.sinks.Route`.
    timeout
        Seconds allowed for one request.
    http
        Credentials and TLS for the requests (Prometheus's ``http_config``).
    replica
        The sending replica's name, in the message's last line; ``""``: left out.

    Examples
    --------
    >>> import json
    >>> from service.sinks import example_event
    >>> sink = SlackSink("https://hooks.slack.com/services/T0/B0/XXXX")
    >>> sink
    SlackSink(webhook_url='**********', name='slack')
    >>> sink.wants(example_event(change="refreshed"))
    False
    >>> message = json.loads(sink.request(example_event(), "latency-api-1/1/slack").body)
    >>> sorted(message), message["blocks"][0]["text"]["text"]
    (['blocks', 'text'], ':rotating_light: Anomaly: latency: api_latency_p99 on a is above its expected band')
    """

    changes = PAGING_CHANGES

    def __init__(
        self,
        webhook_url: str,
        *,
        name: str = "slack",
        match: Mapping[str, str] | None = None,
        match_re: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        http: HTTPClientConfig | None = None,
        replica: str = "",
    ) -> None:
        self.webhook_url = webhook_url
        super().__init__(name, match, match_re, timeout, http, replica)

    def request(self, event: AlertEvent, delivery_id: str) -> OutgoingRequest:
        """The message as an incoming-webhook POST."""
        message = {"text": fallback_text(event), "blocks": blocks(event, self.replica)}
        return OutgoingRequest(
            method="POST",
            url=self.webhook_url,
            headers={"Content-Type": "application/json; charset=utf-8"},
            body=json_bytes(message),
        )

    def __repr__(self) -> str:
        return f"SlackSink(webhook_url='**********', name={self.name!r})"

"""A generic webhook: the whole event as JSON, signed so the receiver can trust it.

The body is ``{"delivery_id": ..., "event": AlertEvent.to_dict()}``: every
field of :class:`~detector.alerts.AlertEvent`, among them ``resolution`` (why a
resolved incident resolved; ``""`` for the ordinary return to the band) and
``late_by`` (seconds the onset data arrived late; ``0.0`` when on time).  A
receiver should read a missing field as that default: older versions of the
detector do not send them.  When the service's ``replica`` is set, the body
also says ``"replica": <name>``; the event is the same from every replica of
a pair.  Two headers come with it:

``X-Delivery-Id``
    Stable across retries; a receiver that has seen it can answer 2xx and do nothing.
``X-Signature: t=<unix seconds>,v1=<hex>``
    ``hex`` is HMAC-SHA256 under the shared secret of ``f"{t}.".encode() + body``.
    The time is the send time of this attempt, so a receiver can refuse
    replays of old requests; :func:`verify_signature` does both checks.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from urllib.parse import quote

from detector.alerts import AlertEvent
from service.http_config import HTTPClientConfig, check_secret
from service.sinks import _SECRET_ADVICE, OutgoingRequest, RoutedSink, json_bytes


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Signature`` header value for ``body`` sent at ``timestamp``.

    >>> sign("k", 1700000000, b"{}")
    't=1700000000,v1=c6ef4734033cee2367414a0939385eca0397754aa7a59716da7463a9298b5146'
    """
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(
    secret: str, header: str, body: bytes, tolerance: float = 300.0, now: float | None = None
) -> bool:
    """Whether ``header`` signs exactly ``body`` with ``secret`` within ``tolerance`` seconds of now.

    For receivers.  Several ``v1=`` entries are accepted (any one may match),
    so a sender can sign with an old and a new secret while rotating.

    >>> header = sign("k", 1700000000, b'{"a":1}')
    >>> verify_signature("k", header, b'{"a":1}', now=1700000010)
    True
    >>> verify_signature("k", header, b'{"a":2}', now=1700000010)
    False
    >>> verify_signature("k", header, b'{"a":1}', now=1700009999)
    False
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).partition(",v1=")[2]
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


def _header_safe(value: str) -> str:
    """HTTP header values are ASCII: percent-encode an id that is not (the body keeps it as is)."""
    return value if value.isascii() and value.isprintable() else quote(value, safe="")


class WebhookSink(RoutedSink):
    """Posts every event, refreshes included, as signed JSON to any HTTP receiver.

    Parameters
    ----------
    url
        Where to POST.
    secret
        The HMAC key shared with the receiver (never printed); not empty, not a placeholder.
    name
        Unique sink name; part of every delivery id.
    match, match_re
        Label routing, see :class:`~service.sinks.Route`.
    timeout
        Seconds allowed for one request.
    http
        Credentials and TLS for the requests (Prometheus's ``http_config``).
    replica
        The sending replica's name, as the body's ``replica`` field; ``""``: left out.
    clock
        Unix time for the signature; each attempt is signed when it is built.

    Examples
    --------
    >>> import json
    >>> from service.sinks import example_event
    >>> sink = WebhookSink("http://127.0.0.1:8080/alerts", "a-long-random-secret")
    >>> request = sink.request(example_event(), "latency-api-1/1/webhook")
    >>> json.loads(request.body)["delivery_id"], request.headers["X-Delivery-Id"]
    ('latency-api-1/1/webhook', 'latency-api-1/1/webhook')
    >>> event = json.loads(request.body)["event"]
    >>> event["status"], event["resolution"], event["late_by"]
    ('firing', '', 0.0)
    >>> verify_signature("a-long-random-secret", request.headers["X-Signature"], request.body)
    True
    """

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        name: str = "webhook",
        match: Mapping[str, str] | None = None,
        match_re: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        http: HTTPClientConfig | None = None,
        replica: str = "",
    ) -> None:
        check_secret(secret, "secret", _SECRET_ADVICE)
        self.url = url
        self.secret = secret
        self.clock = clock
        super().__init__(name, match, match_re, timeout, http, replica)

    def request(self, event: AlertEvent, delivery_id: str) -> OutgoingRequest:
        """The signed POST, signed now."""
        data: dict[str, object] = {"delivery_id": delivery_id, "event": event.to_dict()}
        if self.replica:
            data["replica"] = self.replica
        body = json_bytes(data)
        return OutgoingRequest(
            method="POST",
            url=self.url,
            headers={
                "Content-Type": "application/json",
                "X-Delivery-Id": _header_safe(delivery_id),
                "X-Signature": sign(self.secret, int(self.clock()), body),
            },
            body=body,
        )

    def __repr__(self) -> str:
        return f"WebhookSink(url={self.url!r}, secret='**********', name={self.name!r})"

"""The signed webhook: a receiver can verify who sent the body, and when."""

from __future__ import annotations

import json
import sqlite3
import time

from detector.alerts import AlertEvent
from service.outbox import Outbox
from service.sinks import WebhookSink, example_event, verify_signature
from service.sinks.webhook import sign
from tests.support.net import Receiver, RecordedRequest, Reply

SECRET = "0123456789abcdef-shared-secret"


def _delivered(receiver: Receiver, connection: sqlite3.Connection, event: AlertEvent) -> RecordedRequest:
    with Outbox(connection, [WebhookSink(receiver.url + "/alerts", SECRET, name="hook")]) as outbox:
        outbox.enqueue(event)
        assert outbox.deliver_due().delivered == 1
    [request] = receiver.requests
    return request


def test_receiver_verifies_the_signature_and_reads_the_event(
    receiver: Receiver, connection: sqlite3.Connection
) -> None:
    # The receiver checks the signature itself and refuses what does not verify.
    def check(request: RecordedRequest) -> Reply:
        header = request.header("X-Signature") or ""
        return Reply(204) if verify_signature(SECRET, header, request.body) else Reply(401)

    receiver.respond_by(check)
    event = example_event(correlated=("errors-api-2",))
    request = _delivered(receiver, connection, event)

    assert request.status == 204
    assert request.header("Content-Type") == "application/json"
    assert request.header("X-Delivery-Id") == "latency-api-1/1/hook"
    body = request.json()
    assert sorted(body) == ["delivery_id", "event"]
    assert body["delivery_id"] == "latency-api-1/1/hook"
    assert AlertEvent.from_dict(body["event"]) == event
    timestamp = int((request.header("X-Signature") or "").split(",")[0].removeprefix("t="))
    assert abs(timestamp - time.time()) < 60


def test_the_event_carries_its_resolution_and_lateness(
    receiver: Receiver, connection: sqlite3.Connection
) -> None:
    event = example_event(
        status="resolved", change="resolved", resolution="accepted as the new normal after 2h", late_by=7500.0
    )
    sent = _delivered(receiver, connection, event).json()["event"]
    assert (sent["resolution"], sent["late_by"]) == ("accepted as the new normal after 2h", 7500.0)
    assert AlertEvent.from_dict(sent) == event


def test_an_event_without_them_sends_the_defaults() -> None:
    body = WebhookSink("http://127.0.0.1:1/", SECRET).request(example_event(), "d").body
    sent = json.loads(body)["event"]
    assert (sent["resolution"], sent["late_by"]) == ("", 0.0)


def test_tampering_a_wrong_secret_or_an_old_request_fail(
    receiver: Receiver, connection: sqlite3.Connection
) -> None:
    request = _delivered(receiver, connection, example_event())
    header = request.header("X-Signature") or ""
    assert verify_signature(SECRET, header, request.body)
    tampered = request.body.replace(b'"observed":950.0', b'"observed":951.0')
    assert tampered != request.body
    assert not verify_signature(SECRET, header, tampered)
    assert not verify_signature("another-secret", header, request.body)
    assert not verify_signature(SECRET, header, request.body, now=time.time() + 3600)
    stamp, _, digest = header.partition(",v1=")
    moved = f"t={int(stamp.removeprefix('t=')) + 1},v1={digest}"  # the time is signed too
    assert not verify_signature(SECRET, moved, request.body)
    assert not verify_signature(SECRET, "v1=" + header.partition("v1=")[2], request.body)
    assert not verify_signature(SECRET, "", request.body)


def test_a_rotated_secret_verifies_with_either_signature() -> None:
    body = b'{"delivery_id":"x"}'
    now = int(time.time())
    header = sign("old-secret", now, body) + ",v1=" + sign("new-secret", now, body).partition("v1=")[2]
    assert verify_signature("old-secret", header, body)
    assert verify_signature("new-secret", header, body)


def test_each_attempt_is_signed_when_it_is_sent() -> None:
    now = [1_800_000_000.0]
    sink = WebhookSink("http://127.0.0.1:1/", SECRET, clock=lambda: now[0])
    first = sink.request(example_event(), "d")
    now[0] += 600
    retry = sink.request(example_event(), "d")
    assert first.body == retry.body
    assert first.headers["X-Signature"].startswith("t=1800000000,")
    assert retry.headers["X-Signature"].startswith("t=1800000600,")
    assert verify_signature(SECRET, retry.headers["X-Signature"], retry.body, now=now[0])


def test_a_non_ascii_delivery_id_is_percent_encoded_in_the_header() -> None:
    request = WebhookSink("http://127.0.0.1:1/", SECRET).request(example_event(), "latência/1/hook")
    assert request.headers["X-Delivery-Id"] == "lat%C3%AAncia%2F1%2Fhook"

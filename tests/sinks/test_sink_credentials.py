"""Sinks with credentials and TLS: the outbox's request carries them and verifies the receiver.

Each receiver is a local HTTPS server whose certificate comes from a CA made in
the test, and which answers 200 only to the right ``Authorization`` header.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from detector.config import ConfigError
from service.outbox import Outbox
from service.sinks import SinkConfig, build_sinks, example_event
from tests.support.net import Receiver, RecordedRequest, Reply
from tests.support.tls import PKI, make_pki, server_context

TOKEN = "am-token-5e0c2b7f91"
PASSWORD = "hook-pw-0d4f8a2c"
SECRET = "hmac-key-6b1e9d3a70"
BASIC = "Basic YWxlcnRzOmhvb2stcHctMGQ0ZjhhMmM="  # alerts:PASSWORD


def _requiring(expected: str) -> Any:
    def answer(request: RecordedRequest) -> Reply:
        return Reply(200 if request.header("Authorization") == expected else 401)

    return answer


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def https(pki: PKI) -> Iterator[Receiver]:
    with Receiver(tls=server_context(pki)) as receiver:
        yield receiver


@pytest.fixture
def second_https(pki: PKI) -> Iterator[Receiver]:
    with Receiver(tls=server_context(pki)) as receiver:
        yield receiver


def _deliver(connection: sqlite3.Connection, configs: list[dict[str, Any]]) -> Outbox:
    outbox = Outbox(connection, build_sinks(configs))
    outbox.enqueue(example_event())
    outbox.deliver_due()
    return outbox


def test_webhook_sends_basic_auth_and_verifies_the_ca(
    https: Receiver, pki: PKI, connection: sqlite3.Connection, tmp_path: Path
) -> None:
    https.respond_by(_requiring(BASIC))
    (tmp_path / "password").write_text(PASSWORD + "\n")
    webhook = {
        "type": "webhook",
        "url": https.url + "/alerts",
        "secret": SECRET,
        "basic_auth": {"username": "alerts", "password_file": str(tmp_path / "password")},
        "tls_config": {"ca_file": str(pki.ca)},
    }
    with _deliver(connection, [webhook]) as outbox:
        [delivery] = outbox.recent()
    assert (delivery.state, delivery.last_status) == ("delivered", 200)
    [request] = https.requests
    assert request.header("Authorization") == BASIC and request.header("X-Signature")


def test_alertmanager_sends_a_bearer_token_to_every_url(
    https: Receiver, second_https: Receiver, pki: PKI, connection: sqlite3.Connection
) -> None:
    for receiver in (https, second_https):
        receiver.respond_by(_requiring(f"Bearer {TOKEN}"))
    alertmanager = {
        "type": "alertmanager",
        "name": "am",
        "urls": [https.url, second_https.url],
        "authorization": {"credentials": TOKEN},
        "tls_config": {"ca_file": str(pki.ca)},
    }
    with _deliver(connection, [alertmanager]) as outbox:
        states = {(d.sink, d.state) for d in outbox.recent()}
    assert states == {("am.1", "delivered"), ("am.2", "delivered")}
    for receiver in (https, second_https):
        [request] = receiver.requests
        assert (request.path, request.header("Authorization")) == ("/api/v2/alerts", f"Bearer {TOKEN}")


def test_a_receiver_whose_ca_is_not_trusted_is_retried_with_a_clear_error(
    https: Receiver, connection: sqlite3.Connection, tmp_path: Path
) -> None:
    stranger = make_pki(tmp_path / "other")
    alertmanager = {"type": "alertmanager", "url": https.url, "tls_config": {"ca_file": str(stranger.ca)}}
    with _deliver(connection, [alertmanager]) as outbox:
        [delivery] = outbox.recent()
    assert delivery.state == "pending"
    assert delivery.last_error is not None
    assert delivery.last_error.startswith("TLS: the server's certificate was not accepted")
    assert "ca_file must hold the CA that signed it" in delivery.last_error
    assert not https.requests


def test_insecure_skip_verify_delivers_to_any_certificate(
    https: Receiver, connection: sqlite3.Connection
) -> None:
    webhook = {
        "type": "webhook",
        "url": https.url,
        "secret": SECRET,
        "tls_config": {"insecure_skip_verify": True},
    }
    with _deliver(connection, [webhook]) as outbox:
        assert [d.state for d in outbox.recent()] == ["delivered"]


def test_wrong_credentials_fail_without_retrying(
    https: Receiver, pki: PKI, connection: sqlite3.Connection
) -> None:
    https.respond_by(_requiring(f"Bearer {TOKEN}"))
    alertmanager = {
        "type": "alertmanager",
        "url": https.url,
        "authorization": {"credentials": "am-token-wrong"},
        "tls_config": {"ca_file": str(pki.ca)},
    }
    with _deliver(connection, [alertmanager]) as outbox:
        [delivery] = outbox.recent()
    assert (delivery.state, delivery.last_status) == ("failed", 401)


def test_secrets_never_reach_logs_or_reprs(
    https: Receiver, pki: PKI, connection: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    https.respond_by(_requiring("nobody"))  # every request fails and is logged
    configs: list[dict[str, Any]] = [
        {
            "type": "webhook",
            "url": https.url,
            "secret": SECRET,
            "basic_auth": {"username": "alerts", "password": PASSWORD},
            "tls_config": {"ca_file": str(pki.ca)},
        },
        {
            "type": "alertmanager",
            "url": https.url,
            "authorization": {"credentials": TOKEN},
            "tls_config": {"ca_file": str(pki.ca)},
        },
    ]
    with caplog.at_level(logging.DEBUG):
        sinks = build_sinks(configs)
        with Outbox(connection, sinks) as outbox:
            outbox.enqueue(example_event())
            report = outbox.deliver_due()
    assert report.failed == 2
    parsed = [_validate(config) for config in configs]
    shown = [caplog.text, repr(sinks), repr(parsed), repr([sink.http for sink in sinks])]
    shown += [str(config.model_dump()) for config in parsed]
    for text in shown:
        for secret in (TOKEN, PASSWORD, SECRET):
            assert secret not in text


def _validate(config: dict[str, Any]) -> SinkConfig:
    return TypeAdapter(SinkConfig).validate_python(config)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"type": "webhook", "url": "http://127.0.0.1:1/", "secret": "change-me"},
            "sinks[0]: secret: secret is left at the placeholder 'change-me'; set a long random string",
        ),
        ({"type": "webhook", "url": "http://127.0.0.1:1/", "secret": "CHANGEME"}, "placeholder 'CHANGEME'"),
        ({"type": "webhook", "url": "http://127.0.0.1:1/", "secret": "<secret>"}, "placeholder '<secret>'"),
        ({"type": "webhook", "url": "http://127.0.0.1:1/", "secret": "secret"}, "placeholder 'secret'"),
        ({"type": "pagerduty", "routing_key": "xxx"}, "sinks[0]: routing_key: routing_key is left at the"),
        (
            {
                "type": "slack",
                "webhook_url": "https://hooks.slack.com/x",
                "authorization": {"credentials": "TODO"},
            },
            "sinks[0]: authorization: credentials is left at the placeholder 'TODO'",
        ),
        (
            {
                "type": "alertmanager",
                "url": "http://127.0.0.1:1/",
                "basic_auth": {"username": "u", "password": "pw-1a2b3c"},
                "authorization": {"credentials": "tok-1a2b3c"},
            },
            "sinks[0]: basic_auth and authorization are both set",
        ),
        (
            {
                "type": "alertmanager",
                "url": "http://127.0.0.1:1/",
                "tls_config": {"ca_file": "/nonexistent.pem"},
            },
            "sinks[0]: tls_config: ca_file: cannot read /nonexistent.pem (No such file or directory)",
        ),
        ({"type": "alertmanager"}, "sinks[0]: needs url (one Alertmanager) or urls"),
        ({"type": "alertmanager", "url": "http://a:1/", "urls": ["http://b:1/"]}, "sinks[0]: needs url"),
        ({"type": "alertmanager", "urls": ["http://a:1/", "http://a:1/"]}, "'http://a:1/' is listed twice"),
        ({"type": "alertmanager", "url": "http://u:pw-1a2b3c@a:1/"}, "sinks[0]: url: url holds credentials"),
        ({"type": "webhook", "url": "http://a/", "secret": "k", "tls": {}}, "tls: unknown key; allowed: "),
    ],
)
def test_bad_credentials_are_refused_naming_the_sink_and_key(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_sinks([config])
    assert message in str(caught.value)
    assert "pw-1a2b3c" not in str(caught.value)


def test_alertmanager_urls_become_one_sink_each_and_names_stay_unique() -> None:
    sinks = build_sinks([{"type": "alertmanager", "urls": ["http://a:9093", "http://b:9093"]}])
    assert [(sink.name, sink.url) for sink in sinks] == [  # type: ignore[attr-defined]
        ("alertmanager.1", "http://a:9093"),
        ("alertmanager.2", "http://b:9093"),
    ]
    with pytest.raises(ConfigError, match=r"sinks\[1\]: name 'alertmanager.2' is already used by sinks\[0\]"):
        build_sinks(
            [
                {"type": "alertmanager", "urls": ["http://a:9093", "http://b:9093"]},
                {"type": "alertmanager", "name": "alertmanager.2", "url": "http://c:9093"},
            ]
        )

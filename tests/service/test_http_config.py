"""Credentials and TLS for what the service calls: the http_config keys, and the Prometheus reader using them.

The reader talks to a local HTTPS receiver whose certificate comes from a CA
made in the test, and which answers only the right credentials.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import service.http_config
from detector.config import ConfigError
from service.http_config import HTTPClientConfig, requests_session
from service.prometheus import PrometheusError, PrometheusReader, PrometheusUnavailable, Sample
from service.serve import check_config, describe
from service.settings import PrometheusSettings, load_settings
from tests.support.net import Receiver, RecordedRequest, Reply
from tests.support.tls import PKI, make_pki, server_context

TOKEN = "tok-7c1d0a9e44b2"
PASSWORD = "pw-93be0f51d7"
VECTOR = {
    "status": "success",
    "data": {"resultType": "vector", "result": [{"metric": {"__name__": "up"}, "value": [1700000000, "1"]}]},
}


def _guarded(expected: str) -> Any:
    """Prometheus's query API behind a check of the Authorization header."""

    def answer(request: RecordedRequest) -> Reply:
        if request.header("Authorization") != expected:
            return Reply(401, {"WWW-Authenticate": 'Basic realm="prometheus"'})
        return Reply(200, {"Content-Type": "application/json"}, json.dumps(VECTOR).encode())

    return answer


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def prometheus(pki: PKI) -> Iterator[Receiver]:
    """An HTTPS "Prometheus" that wants ``Authorization: Bearer TOKEN``."""
    with Receiver(tls=server_context(pki)) as receiver:
        receiver.respond_by(_guarded(f"Bearer {TOKEN}"))
        yield receiver


def _settings(tmp_path: Path, section: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    config = {"prometheus": section, "detectors": [{"name": "up", "query": "up"}]}
    path.write_text(yaml.safe_dump(config))
    return path


def _reader(tmp_path: Path, section: dict[str, Any]) -> PrometheusReader:
    prometheus = load_settings(_settings(tmp_path, section)).prometheus
    return PrometheusReader(prometheus.url, prometheus.headers, 5, http=prometheus)


def test_bearer_token_over_tls_verified_against_the_ca(
    prometheus: Receiver, pki: PKI, tmp_path: Path
) -> None:
    reader = _reader(
        tmp_path,
        {
            "url": prometheus.url,
            "authorization": {"credentials": TOKEN},
            "tls_config": {"ca_file": str(pki.ca)},
        },
    )
    assert reader.instant("up") == [Sample({"__name__": "up"}, 1700000000.0, 1.0)]
    [request] = prometheus.requests
    assert request.header("Authorization") == f"Bearer {TOKEN}"
    assert request.header("Accept-Encoding") == "identity"


def test_basic_auth_and_files_relative_to_the_configuration(
    prometheus: Receiver, pki: PKI, tmp_path: Path
) -> None:
    prometheus.respond_by(_guarded("Basic ZGV0ZWN0b3I6cHctOTNiZTBmNTFkNw=="))  # detector:PASSWORD
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "password").write_text(PASSWORD + "\n")
    (tmp_path / "secrets" / "ca.pem").write_bytes(pki.ca.read_bytes())
    section = {
        "url": prometheus.url,
        "basic_auth": {"username": "detector", "password_file": "secrets/password"},
        "tls_config": {"ca_file": "secrets/ca.pem"},
    }
    assert _reader(tmp_path, section).instant("up")


def test_wrong_credentials_are_named_as_such(prometheus: Receiver, pki: PKI, tmp_path: Path) -> None:
    section = {"url": prometheus.url, "authorization": {"credentials": "tok-wrong-one"}}
    reader = _reader(tmp_path, {**section, "tls_config": {"ca_file": str(pki.ca)}})
    with pytest.raises(
        PrometheusError, match=r"refused the request \(HTTP 401 .*basic_auth or authorization"
    ):
        reader.instant("up")


def test_a_certificate_from_another_ca_fails_clearly(prometheus: Receiver, tmp_path: Path) -> None:
    stranger = make_pki(tmp_path / "other")
    section = {"url": prometheus.url, "authorization": {"credentials": TOKEN}}
    reader = _reader(tmp_path, {**section, "tls_config": {"ca_file": str(stranger.ca)}})
    with pytest.raises(PrometheusUnavailable) as caught:
        reader.instant("up")
    message = str(caught.value)
    assert message.startswith(
        f"Prometheus at {prometheus.url}: TLS: the server's certificate was not accepted"
    )
    assert "ca_file must hold the CA that signed it" in message
    assert not prometheus.requests
    # Without any tls_config the public CAs are used, which do not know the test's CA either.
    with pytest.raises(PrometheusUnavailable, match="TLS: the server's certificate was not accepted"):
        _reader(tmp_path, section).instant("up")


def test_insecure_skip_verify_accepts_any_certificate(prometheus: Receiver, tmp_path: Path) -> None:
    section = {"url": prometheus.url, "authorization": {"credentials": TOKEN}}
    reader = _reader(tmp_path, {**section, "tls_config": {"insecure_skip_verify": True}})
    assert reader.instant("up")


def test_server_name_is_what_the_certificate_must_hold(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", server_names=("prometheus.internal",))
    with Receiver(tls=server_context(pki)) as prometheus:
        prometheus.respond_by(_guarded(f"Bearer {TOKEN}"))
        section = {"url": prometheus.url, "authorization": {"credentials": TOKEN}}
        tls = {"ca_file": str(pki.ca)}
        with pytest.raises(PrometheusUnavailable, match="server_name"):
            _reader(tmp_path, {**section, "tls_config": tls}).instant("up")
        named = _reader(tmp_path, {**section, "tls_config": {**tls, "server_name": "prometheus.internal"}})
        assert named.instant("up")


def test_client_certificate_for_mutual_tls(pki: PKI, tmp_path: Path) -> None:
    with Receiver(tls=server_context(pki, client_certificates=True)) as prometheus:
        prometheus.respond_by(_guarded(f"Bearer {TOKEN}"))
        section = {"url": prometheus.url, "authorization": {"credentials": TOKEN}}
        tls = {"ca_file": str(pki.ca)}
        with pytest.raises(PrometheusUnavailable, match="TLS"):
            _reader(tmp_path, {**section, "tls_config": tls}).instant("up")
        client = {**tls, "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
        assert _reader(tmp_path, {**section, "tls_config": client}).instant("up")


def test_a_requests_session_keeps_its_ca_file_over_the_environment(
    prometheus: Receiver, pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without care, REQUESTS_CA_BUNDLE replaces ca_file in a bare ``session.get`` (psf/requests#3829)."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(make_pki(tmp_path / "other").ca))
    config = {"authorization": {"credentials": TOKEN}, "tls_config": {"ca_file": str(pki.ca)}}
    session = requests_session(HTTPClientConfig.model_validate(config))
    assert session.get(prometheus.url + "/api/v1/query", timeout=5).status_code == 200


def test_secrets_are_not_logged_printed_or_described(
    prometheus: Receiver, pki: PKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "token").write_text(TOKEN)
    section = {
        "url": prometheus.url,
        "authorization": {"credentials_file": "token"},
        "tls_config": {"ca_file": str(pki.ca)},
    }
    path = _settings(tmp_path, section)
    settings = load_settings(path)
    reader = PrometheusReader(settings.prometheus.url, timeout=5, http=settings.prometheus)
    with caplog.at_level(logging.DEBUG):
        reader.instant("up")
        wrong = _reader(tmp_path, {**section, "authorization": {"credentials": PASSWORD}})
        with pytest.raises(PrometheusError):
            wrong.instant("up")
    shown = [caplog.text, repr(settings), repr(reader), str(settings.prometheus.model_dump())]
    shown += [*describe(settings), *check_config(path)]
    for text in shown:
        assert TOKEN not in text and PASSWORD not in text


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"authorization": {"credentials": "change-me"}},
            "prometheus.authorization: credentials is left at the placeholder 'change-me'; set a real secret",
        ),
        ({"basic_auth": {"username": "u", "password": "<password>"}}, "placeholder '<password>'"),
        ({"basic_auth": {"username": "u", "password": "TODO"}}, "placeholder 'TODO'"),
        ({"basic_auth": {"username": "u", "password": ""}}, "password is empty"),
        (
            {"basic_auth": {"username": "u", "password_file": "placeholder.txt"}},
            "password_file {dir}/placeholder.txt is left at the placeholder 'changeme'; write the real",
        ),
        (
            {"basic_auth": {"username": "u", "password_file": "missing"}},
            "prometheus.basic_auth: password_file: cannot read {dir}/missing (No such file or directory)",
        ),
        (
            {"authorization": {"credentials_file": "missing"}},
            "prometheus.authorization: credentials_file: cannot read {dir}/missing",
        ),
        (
            {"tls_config": {"ca_file": "missing.pem"}},
            "prometheus.tls_config: ca_file: cannot read {dir}/missing.pem (No such file or directory)",
        ),
        (
            {"tls_config": {"ca_file": "placeholder.txt"}},
            "ca_file: {dir}/placeholder.txt holds no usable PEM",
        ),
        (
            {"tls_config": {"cert_file": "client.pem"}},
            "prometheus.tls_config: cert_file and key_file go together",
        ),
        (
            {
                "basic_auth": {"username": "u", "password": "pw-1a2b3c"},
                "authorization": {"credentials": "t-9z"},
            },
            "prometheus: basic_auth and authorization are both set; use one of them",
        ),
        (
            {"basic_auth": {"username": "u", "password": "pw-1a2b3c", "password_file": "p"}},
            "prometheus.basic_auth: give password or password_file, not both",
        ),
        ({"authorization": {}}, "prometheus.authorization: needs credentials or credentials_file"),
        (
            {"authorization": {"type": "basic", "credentials": "dTpwdw=="}},
            "type 'basic' is not allowed here; use basic_auth",
        ),
        (
            {"headers": {"authorization": "Bearer abc"}},
            "prometheus.headers: Authorization is not set in headers",
        ),
        ({"url": "http://user:pw-1a2b3c@127.0.0.1:9090"}, "prometheus.url: url holds credentials; move them"),
        ({"tls_config": {"verify": False}}, "prometheus.tls_config.verify: unknown key; allowed: ca_file,"),
    ],
)
def test_bad_http_config_is_refused_at_start_naming_the_key(
    tmp_path: Path, section: dict[str, Any], message: str
) -> None:
    (tmp_path / "placeholder.txt").write_text("changeme\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(_settings(tmp_path, section))
    assert message.format(dir=tmp_path) in str(caught.value)
    assert "pw-1a2b3c" not in str(caught.value)


def test_the_shape_is_prometheus_http_config() -> None:
    assert {"basic_auth", "authorization", "tls_config"} <= set(PrometheusSettings.model_fields)
    assert list(HTTPClientConfig.model_fields) == ["basic_auth", "authorization", "tls_config"]


def test_public_surface() -> None:
    assert service.http_config.__all__ == [
        "Authorization",
        "BasicAuth",
        "HTTPClientConfig",
        "TLSConfig",
        "check_secret",
        "describe_error",
        "http_client",
        "http_url",
        "httpx_arguments",
        "is_placeholder",
        "requests_session",
        "tls_problem",
    ]

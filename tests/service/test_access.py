"""Who may read and who may change what: basic auth, the loopback rule, and TLS served for real."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.access import Access, BasicAuth, Refusal
from service.app import create_app
from service.settings import ServiceSettings
from service.web_config import TLSServerConfig, WebConfig
from tests.support.remote_write import HEADERS, write_request
from tests.support.service import ServiceProcess
from tests.support.tls import make_pki

PASSWORD = "correct horse battery staple"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
SILENCE = {
    "matchers": ['job="shop"'],
    "starts_at": "2026-01-01T00:00:00Z",
    "ends_at": "2099-01-01T00:00:00Z",
}
DETECTOR = {"name": "rw", "source": "remote_write", "match": {"__name__": "checkout_latency_ms"}}


def _settings(tmp_path: Path) -> ServiceSettings:
    return ServiceSettings.model_validate({"store": str(tmp_path / "state.db"), "detectors": [DETECTOR]})


def _client(tmp_path: Path, access: Access) -> TestClient:
    return TestClient(create_app(_settings(tmp_path), access=access))


def _write_body() -> bytes:
    return write_request(['checkout_latency_ms{job="shop"}'], np.array([1.7e9]), np.array([200.0]))


def _failures(client: TestClient, **auth: tuple[str, str]) -> dict[str, float]:
    text = client.get("/metrics", **auth).text  # type: ignore[arg-type]
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "anomaly_detector_http_auth_failures_total"
    }


@pytest.fixture
def with_users(tmp_path: Path) -> Iterator[TestClient]:
    web = WebConfig.model_validate({"basic_auth_users": {"alice": HASH}})
    with _client(tmp_path, Access(web, host="0.0.0.0")) as client:
        yield client


def test_with_users_every_request_needs_credentials(with_users: TestClient) -> None:
    for method, path in [("GET", "/metrics"), ("GET", "/-/healthy"), ("GET", "/"), ("GET", "/api/v1/alerts")]:
        reply = with_users.request(method, path)
        assert reply.status_code == 401, (path, reply.text)
        assert reply.headers["www-authenticate"] == 'Basic realm="anomaly-detector"'
    assert with_users.post("/api/v1/silences", json=SILENCE).status_code == 401
    refused = with_users.post("/api/v1/write", content=_write_body(), headers=HEADERS)
    assert refused.status_code == 401


def test_a_wrong_password_is_refused_and_counted(with_users: TestClient) -> None:
    right = ("alice", PASSWORD)
    wrong = [("alice", "wrong"), ("mallory", PASSWORD), ("alice", PASSWORD + "x"), ("alice", "x" * 100)]
    for auth in wrong:
        reply = with_users.post("/api/v1/silences", json=SILENCE, auth=auth)
        assert reply.status_code == 401 and "wrong user name or password" in reply.text
    garbled = {"Authorization": "Basic not-base64!"}
    assert with_users.get("/metrics", headers=garbled).status_code == 401
    token = {"Authorization": "Bearer " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()}
    assert with_users.get("/metrics", headers=token).status_code == 401
    assert with_users.get("/metrics").status_code == 401
    assert _failures(with_users, auth=right) == {
        "missing_credentials": 1.0,
        "wrong_credentials": 6.0,
        "writes_refused": 0.0,
    }


def test_the_right_password_works_and_the_user_is_recorded(with_users: TestClient) -> None:
    auth = ("alice", PASSWORD)
    assert with_users.get("/-/healthy", auth=auth).status_code == 200
    created = with_users.post("/api/v1/silences", json={**SILENCE, "created_by": "ana"}, auth=auth)
    assert created.status_code == 201, created.text
    [rule] = with_users.get("/api/v1/silences", auth=auth).json()
    assert rule["created_by"] == "ana (via alice)"  # what the request says, and who it really was
    assert (
        with_users.post("/api/v1/write", content=_write_body(), headers=HEADERS, auth=auth).status_code == 204
    )
    assert with_users.delete(f"/api/v1/silences/{rule['id']}", auth=auth).status_code == 204
    assert with_users.get("/api/v1/silences", auth=auth).json() == []


def test_a_verified_password_is_remembered_a_wrong_one_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    basic = BasicAuth({"alice": HASH})
    checked: list[bytes] = []
    verify = basic.verify

    def counted(user: bytes, password: bytes) -> bool:
        checked.append(password)
        return verify(user, password)

    monkeypatch.setattr(basic, "verify", counted)

    def header(credentials: str) -> str:
        return "Basic " + base64.b64encode(credentials.encode()).decode()

    async def attempts() -> list[str | Refusal]:
        return [await basic.user(header(c)) for c in [f"alice:{PASSWORD}"] * 3 + ["alice:wrong"] * 2]

    users = asyncio.run(attempts())
    assert users[:3] == ["alice"] * 3 and all(isinstance(u, Refusal) for u in users[3:])
    assert checked == [PASSWORD.encode(), b"wrong", b"wrong"]


def test_without_credentials_writes_are_refused_off_loopback(tmp_path: Path) -> None:
    with _client(tmp_path, Access(host="0.0.0.0")) as client:
        assert client.get("/-/healthy").status_code == 200
        assert client.get("/api/v1/silences").json() == []
        for reply in [
            client.post("/api/v1/silences", json=SILENCE),
            client.post("/api/v1/write", content=_write_body(), headers=HEADERS),
            client.delete("/api/v1/silences/abc"),
            client.post("/api/v1/alerts/abc/feedback", json={"verdict": "incident"}),
        ]:
            assert reply.status_code == 403
            assert reply.text.count("\n") == 1 and "--web.config.file" in reply.text, reply.text
            assert "basic_auth_users" in reply.text and "--web.unauthenticated-writes" in reply.text
        assert client.get("/api/v1/silences").json() == []
        assert _failures(client)["writes_refused"] == 4.0


def test_on_loopback_or_with_the_opt_out_writes_need_no_credentials(tmp_path: Path) -> None:
    for access in [Access(host="127.0.0.1"), Access(host="localhost"), Access(host="::1")]:
        assert access.writes_open and not access.warnings()
    opted_out = Access(host="0.0.0.0", unauthenticated_writes=True)
    assert "anyone who can reach it" in opted_out.warnings()[0]
    with _client(tmp_path, opted_out) as client:
        assert client.post("/api/v1/silences", json=SILENCE).status_code == 201
        [rule] = client.get("/api/v1/silences").json()
        assert rule["created_by"] == "anonymous@testclient"
    refusing = Access(host="0.0.0.0")
    [warning] = refusing.warnings()
    assert "refused" in warning and "--web.config.file" in warning


def test_required_client_certificates_count_as_credentials() -> None:
    tls = TLSServerConfig(
        cert_file=Path("s.pem"),
        key_file=Path("s.key"),
        client_ca_file=Path("ca.pem"),
        client_auth_type="RequireAndVerifyClientCert",
    )
    access = Access(WebConfig(tls_server_config=tls), host="0.0.0.0")
    assert asyncio.run(access.decide("POST", None, "10.0.0.7")) == "client-certificate@10.0.0.7"
    optional = tls.model_copy(update={"client_auth_type": "VerifyClientCertIfGiven"})
    refused = asyncio.run(Access(WebConfig(tls_server_config=optional), "0.0.0.0").decide("POST", None, None))
    assert not isinstance(refused, str) and refused.status == 403


@pytest.mark.live
def test_tls_serves_the_given_certificate_with_auth_and_client_certificates(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "tls")
    web = tmp_path / "web.yml"
    web.write_text(
        "tls_server_config:\n"
        f"  cert_file: tls/{pki.server_cert.name}\n"
        f"  key_file: tls/{pki.server_key.name}\n"
        f"  client_ca_file: tls/{pki.ca.name}\n"
        "  client_auth_type: RequireAndVerifyClientCert\n"
        "  min_version: TLS13\n"
        f"basic_auth_users:\n  alice: '{HASH}'\n"
    )
    config = tmp_path / "run.yaml"
    config.write_text(f"store: state.db\ndetectors: [{DETECTOR}]\n".replace("'", '"'))

    def client_context(maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=pki.ca)
        context.load_cert_chain(pki.client_cert, pki.client_key)
        context.maximum_version = maximum
        return context

    auth = ("alice", PASSWORD)
    service = ServiceProcess(
        config,
        tmp_path / "service.log",
        args=["--web.config.file", str(web)],
        scheme="https",
        verify=client_context(),
        auth=auth,
    )
    try:
        service.start()
        assert service.get("/-/healthy").text == "anomaly-detector is healthy.\n"
        url = service.url + "/api/v1/silences"
        assert httpx.get(url, verify=client_context()).status_code == 401
        assert httpx.post(url, json=SILENCE, verify=client_context(), auth=auth).status_code == 201
        without_client_certificate = ssl.create_default_context(cafile=pki.ca)
        for refused in [
            {"verify": without_client_certificate},  # the server asks for a client certificate
            {"verify": client_context(ssl.TLSVersion.TLSv1_2)},  # min_version: TLS13
            {"verify": ssl.create_default_context()},  # the service's certificate is not a public one
        ]:
            with pytest.raises(httpx.HTTPError):
                httpx.get(url, auth=auth, **refused).raise_for_status()  # type: ignore[arg-type]
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{service.port}/-/healthy", timeout=5.0).raise_for_status()
    finally:
        service.stop()
    log = (tmp_path / "service.log").read_text()
    assert f"web: {web}: TLS with" in log and "basic auth for alice" in log
    assert HASH not in log and PASSWORD not in log

"""``POST /api/v1/write`` over HTTP: bad bodies get 4xx with a message, never 5xx; good ones are scored."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import cramjam
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import ServiceSettings
from tests.support.remote_write import HEADERS, write_request

KEY = 'demo_latency_ms{job="api"}'


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = ServiceSettings.model_validate(
        {
            "store": str(tmp_path / "state.db"),
            "remote_write": {"max_bytes": 1 << 16},
            "detectors": [{"name": "rw", "source": "remote_write", "match": {"__name__": "demo_latency_ms"}}],
        }
    )
    with TestClient(create_app(settings)) as client:
        yield client


def _good_body(points: int = 3) -> bytes:
    return write_request([KEY] * points, 1.7e9 + 60.0 * np.arange(points), np.full(points, 5.0))


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"this is not snappy at all", 400, "snappy"),
        (gzip.compress(b"\x0a\x00" * 10), 400, "gzip"),
        (
            bytes(cramjam.snappy.compress_raw(bytes(cramjam.snappy.decompress_raw(_good_body()))[:-5])),
            400,
            "truncated",
        ),
        (bytes(cramjam.snappy.compress_raw(b"\x00" * (1 << 17))), 413, "limit"),
    ],
    ids=["garbage", "wrong-compression", "truncated-protobuf", "oversized"],
)
def test_malformed_bodies_get_4xx_with_a_message(
    client: TestClient, body: bytes, status: int, words: str
) -> None:
    response = client.post("/api/v1/write", content=body, headers=HEADERS)
    assert response.status_code == status, response.text
    assert words in response.text.lower()
    assert client.get("/api/v1/series").json() == [], "nothing from a bad request is scored"


def test_wrong_content_type_is_415(client: TestClient) -> None:
    response = client.post(
        "/api/v1/write", content=_good_body(), headers={**HEADERS, "Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    assert "application/x-protobuf" in response.text


def test_a_good_body_is_scored(client: TestClient) -> None:
    response = client.post("/api/v1/write", content=_good_body(), headers=HEADERS)
    assert response.status_code == 204
    [series] = client.get("/api/v1/series").json()
    assert series["key"] == KEY and series["value"] == 5.0 and series["warming"] is True
    one = client.get(f"/api/v1/series/{series['id']}").json()
    assert one["key"] == KEY and one["model"] == "auto"
    assert client.get("/api/v1/series/nonexistent").status_code == 404

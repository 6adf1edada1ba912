"""The on-call APIs over HTTP: feedback on an alert, and silences made through the API."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import ServiceSettings
from service.store import Store
from tests.support.remote_write import HEADERS, write_request

KEY = 'checkout_latency_ms{instance="web-1",job="shop"}'
STEP = 60.0


def _settings(tmp_path: Path) -> ServiceSettings:
    return ServiceSettings.model_validate(
        {
            "store": str(tmp_path / "state.db"),
            # The tests send one request at a time: waiting for more to batch with would only cost time.
            "remote_write": {"batch_wait": 0},
            "detectors": [
                {
                    "name": "rw",
                    "source": "remote_write",
                    "match": {"__name__": "checkout_latency_ms"},
                    "model": "ewma",
                    # Generous: a series 300 points old may alert on a ten-point spike.
                    "alerting": {"false_alerts_per_week": 20},
                }
            ],
        }
    )


@pytest.fixture
def alerted(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    """A service whose one series has just alerted on a spike; yields the client and the incident id."""
    rng = np.random.default_rng(5)
    with TestClient(create_app(_settings(tmp_path))) as client:
        for step in range(310):
            value = 200.0 + rng.normal(0, 5) + (300.0 if step >= 300 else 0.0)
            body = write_request([KEY], np.array([1.7e9 + step * STEP]), np.array([value]))
            assert client.post("/api/v1/write", content=body, headers=HEADERS).status_code == 204
        opened = [e for e in client.get("/api/v1/alerts").json()["events"] if e["change"] == "opened"]
        # The newest: a generous budget may also have paged on the noise before the spike.
        assert opened and opened[-1]["findings"][0]["key"] == KEY, opened
        assert opened[-1]["findings"][0]["direction"] == "high", opened
        yield client, opened[-1]["incident_id"]


def test_a_false_positive_halves_the_series_budget_in_that_direction(alerted: tuple[TestClient, str]) -> None:
    client, incident = alerted
    reply = client.post(f"/api/v1/alerts/{incident}/feedback", json={"verdict": "false_positive"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["budget_scale"][KEY] == {"high": 0.5, "low": 1.0}
    again = client.post(f"/api/v1/alerts/{incident}/feedback", json={"verdict": "false_positive"}).json()
    assert again["budget_scale"][KEY]["high"] == 0.25
    restored = client.post(f"/api/v1/alerts/{incident}/feedback", json={"verdict": "incident"}).json()
    assert restored["budget_scale"][KEY]["high"] == 0.5


def test_a_confirmed_incident_is_kept_out_of_learning(alerted: tuple[TestClient, str]) -> None:
    client, incident = alerted
    assert client.post(f"/api/v1/alerts/{incident}/feedback", json={"verdict": "incident"}).status_code == 200
    [rule] = client.get("/api/v1/silences").json()
    assert rule["maintenance"] is True and incident in rule["comment"]
    assert rule["created_by"] == "anonymous@testclient"  # who confirmed it


def test_feedback_errors(alerted: tuple[TestClient, str]) -> None:
    client, incident = alerted
    assert client.post("/api/v1/alerts/nope/feedback", json={"verdict": "incident"}).status_code == 404
    assert client.post(f"/api/v1/alerts/{incident}/feedback", json={"verdict": "meh"}).status_code == 422


def test_silences_api_round_trip_and_survive_a_restart(tmp_path: Path) -> None:
    silence = {
        "matchers": ['job="shop"'],
        "starts_at": "2026-01-01T00:00:00Z",
        "ends_at": "2099-01-01T00:00:00Z",
        "comment": "deploy",
    }
    with TestClient(create_app(_settings(tmp_path))) as client:
        created = client.post("/api/v1/silences", json=silence)
        assert created.status_code == 201, created.text
        rule_id = created.json()["id"]
        [listed] = client.get("/api/v1/silences").json()
        assert listed["created_by"] == "anonymous@testclient"
        bad = client.post("/api/v1/silences", json={**silence, "matchers": ['job=~".*"']})
        assert bad.status_code == 422 and "matches every series" in bad.text
    with TestClient(create_app(_settings(tmp_path))) as client:
        assert [r["id"] for r in client.get("/api/v1/silences").json()] == [rule_id]
        assert client.delete(f"/api/v1/silences/{rule_id}").status_code == 204
        assert client.get("/api/v1/silences").json() == []
        assert client.delete(f"/api/v1/silences/{rule_id}").status_code == 404


def test_a_new_normal_is_adopted_and_resolves_the_alert_saying_so(alerted: tuple[TestClient, str]) -> None:
    client, incident = alerted
    reply = client.post(f"/api/v1/alerts/{incident}/feedback", json={"verdict": "new_normal"})
    assert reply.status_code == 200, reply.text
    [resolved] = [e for e in client.get("/api/v1/alerts").json()["events"] if e["change"] == "resolved"]
    assert resolved["incident_id"] == incident
    assert resolved["resolution"] == "accepted as the new normal by anonymous@testclient"
    assert resolved["resolved_at"] == 1.7e9 + 309 * STEP  # the data's time, not the clock's
    [series] = client.get("/api/v1/series").json()
    assert series["alert"] is False
    # The spike's level (~500) is now what the series is expected at, and it no longer alerts.
    rng = np.random.default_rng(6)
    for step in range(310, 320):
        body = write_request([KEY], np.array([1.7e9 + step * STEP]), np.array([500.0 + rng.normal(0, 5)]))
        assert client.post("/api/v1/write", content=body, headers=HEADERS).status_code == 204
    [series] = client.get("/api/v1/series").json()
    assert abs(series["expected"] - 500.0) < 20.0 and series["alert"] is False, series
    changes = [
        e["change"] for e in client.get("/api/v1/alerts").json()["events"] if e["incident_id"] != incident
    ]
    assert "opened" not in changes[:1], changes


def test_feedback_records_who_gave_it_also_in_a_store_from_before(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as old:  # the table as it was before feedback named its author
        old.execute(
            "CREATE TABLE feedback (incident_id TEXT NOT NULL, verdict TEXT NOT NULL,"
            " at REAL NOT NULL, event TEXT NOT NULL)"
        )
        old.execute("INSERT INTO feedback VALUES ('i0', 'incident', 1.0, '{}')")
    old.close()
    store = Store(path)
    store.record_feedback("i1", "false_positive", 2.0, {}, "ana")
    rows = store.connection.execute("SELECT incident_id, made_by FROM feedback ORDER BY at").fetchall()
    store.close()
    assert rows == [("i0", ""), ("i1", "ana")]

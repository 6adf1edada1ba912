"""An HA pair of detectors and a two-peer Alertmanager cluster: one incident, one page, one all-clear.

Two service processes with the same configuration but their ``replica``
name get the same remote-written samples and send every alert to both
Alertmanagers, which gossip on 127.0.0.1 and notify a local webhook
receiver.  The samples are 15 s apart in data time, from four hours ago, and
one arrives each second: the data's clock runs fifteen times faster than the
processes', which alert times must not notice.  A p99 latency of
0.2 s goes to 1.4 s for a while and comes back.  The receiver must get
exactly one firing and one resolved notification for it:

(a) with both replicas up throughout;
(b) when one replica is SIGKILLed during the incident and stays down;
(c) when one replica is SIGKILLed during the incident and restarted from its
    checkpoint: it catches up on what it missed (re-sent, as Prometheus's
    remote_write queue re-sends) and speaks again at once, resolving the
    incident with its partner.

A :class:`Feed` thread plays Prometheus: it appends each second's sample to
one queue per replica and sends each queue whole, keeping what a replica did
not accept for the next try.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support import wait_until
from tests.support.alertmanager import AlertmanagerHandle, alertmanager_binary, start_alertmanager_cluster
from tests.support.net import Receiver
from tests.support.remote_write import HEADERS, write_request
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.live

NORMAL, OUTAGE = 0.20, 1.4
STEP = 15.0
HISTORY = 600  # samples sent before the live ones: the model's warm-up
OUTAGE_POINTS = 14
#: Alertmanager sends a changed group at most this often; replicas agree to within a sample.
GROUP_INTERVAL = 3.0
PEER_TIMEOUT = 2.0


def _key(job: str) -> str:
    return f'api_p99_latency_seconds{{instance="web-1",job="{job}"}}'


class Feed(threading.Thread):
    """A sample a second (``STEP`` later in data time) to every replica, each through a retrying queue."""

    def __init__(self, job: str, urls: dict[str, str]) -> None:
        super().__init__(daemon=True, name=f"feed-{job}")
        self.key = _key(job)
        self.urls = dict(urls)
        self.level = NORMAL
        self.rng = np.random.default_rng(7)
        start = float(int(time.time())) - 4 * 3600.0
        t = start + STEP * np.arange(HISTORY)
        x = self._values(HISTORY)
        history = [(float(moment), float(value)) for moment, value in zip(t, x, strict=True)]
        self.queues: dict[str, list[tuple[float, float]]] = {name: list(history) for name in urls}
        self.held: set[str] = set()
        #: When each replica last accepted a request (wall time).
        self.accepted_at: dict[str, float] = {}
        #: The data time of the next sample, and the wall time it is due.
        self.next_t = start + STEP * HISTORY
        self.due = time.time()
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def _values(self, n: int) -> np.ndarray:
        return self.level * np.exp(self.rng.normal(0.0, 0.05, n))

    def run(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            while not self.stopping.is_set():
                with self.lock:
                    if time.time() >= self.due:
                        value = float(self._values(1)[0])
                        for queue in self.queues.values():
                            queue.append((self.next_t, value))
                        self.next_t += STEP
                        self.due += 1.0
                    for name, queue in self.queues.items():
                        if queue and name not in self.held:
                            self._send(client, name, queue)
                self.stopping.wait(max(0.0, min(0.2, self.due - time.time())))

    def _send(self, client: httpx.Client, name: str, queue: list[tuple[float, float]]) -> None:
        t, x = np.array(queue).T
        body = write_request([self.key] * len(queue), t, x)
        try:
            response = client.post(self.urls[name] + "/api/v1/write", content=body, headers=HEADERS)
        except httpx.TransportError:
            return  # down: try again with what came since, as Prometheus does
        if response.status_code == 204:
            queue.clear()
            self.accepted_at[name] = time.time()

    def hold(self, name: str) -> None:
        with self.lock:
            self.held.add(name)

    def release(self, name: str) -> None:
        with self.lock:
            self.held.discard(name)

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


@dataclass
class Pair:
    job: str
    replicas: dict[str, ServiceProcess]
    feed: Feed
    alertmanagers: list[AlertmanagerHandle]
    receiver: Receiver
    started: float = field(default_factory=time.monotonic)

    def series(self, name: str) -> dict[str, Any] | None:
        response = self.replicas[name].get("/api/v1/series")
        response.raise_for_status()
        found = [s for s in response.json() if s["labels"].get("job") == self.job]
        return found[0] if found else None

    def speaking(self, name: str) -> bool:
        series = self.series(name)
        return bool(series and series["speaking"])

    def events(self, name: str) -> list[dict[str, Any]]:
        reply = self.replicas[name].get("/api/v1/alerts?limit=1000").json()
        return [e for e in reversed(reply["events"]) if e["group_labels"].get("job") == self.job]

    def deliveries(self, name: str, state: str) -> dict[str, int]:
        """Deliveries of the replica's outbox in ``state``, per sink."""
        reply = self.replicas[name].get("/api/v1/alerts").json()
        return {d["sink"]: d["count"] for d in reply["deliveries"] if d["state"] == state}

    def notifications(self, status: str) -> list[dict[str, Any]]:
        """Alerts of this job in the receiver's notifications with this status, one per notification."""
        return [
            alert
            for request in self.receiver.requests
            for alert in request.json()["alerts"]
            if alert["labels"].get("job") == self.job and alert["status"] == status
        ]

    def restart(self, name: str) -> None:
        old = self.replicas[name]
        self.replicas[name] = ServiceProcess(old.config, old.log_path, port=old.port).start()

    def settled(self) -> bool:
        """Every live replica delivered everything, and no Alertmanager still has the alert active."""
        for name, service in self.replicas.items():
            running = service.process is not None and service.process.poll() is None
            if running and any(self.deliveries(name, "pending").values()):
                return False
        return not any(
            alert["labels"].get("job") == self.job and alert["status"]["state"] == "active"
            for alertmanager in self.alertmanagers
            for alert in alertmanager.alerts()
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[AlertmanagerHandle], Receiver]]:
    if alertmanager_binary() is None:
        pytest.skip("Alertmanager is not installed; apt-get install prometheus-alertmanager")
    tmp_path = tmp_path_factory.mktemp("alertmanagers")
    with Receiver() as receiver:
        alertmanagers = start_alertmanager_cluster(
            tmp_path,
            receiver.url + "/notify",
            group_interval=f"{GROUP_INTERVAL:g}s",
            peer_timeout=f"{PEER_TIMEOUT:g}s",
        )
        try:
            yield alertmanagers, receiver
        finally:
            for alertmanager in alertmanagers:
                alertmanager.stop()


def _config(tmp_path: Path, name: str, job: str, alertmanagers: list[AlertmanagerHandle]) -> Path:
    detector = {
        "name": "latency",
        "source": "remote_write",
        "match": {"__name__": "api_p99_latency_seconds", "job": job},
        "model": "ewma",
        "model_params": {"warmup": 10},
        "calibration": {"warmup": 20},
        # A generous budget: these series are young, and young series err towards silence.
        "alerting": {
            "group_by": ["job"],
            "false_alerts_per_week": 20,
            "resolve_after": "45s",
            "refresh_interval": "2s",
        },
    }
    settings = {
        "replica": name,
        "store": str(tmp_path / f"{name}.db"),
        "checkpoint_interval": "1s",
        "remote_write": {"batch_wait": 0},
        "detectors": [detector],
        "sinks": [
            {
                "type": "alertmanager",
                "urls": [am.url for am in alertmanagers],
                "lease": "10s",
                "timeout": "2s",
            }
        ],
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(settings))
    return path


@pytest.fixture()
def pair(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    cluster: tuple[list[AlertmanagerHandle], Receiver],
) -> Iterator[Pair]:
    alertmanagers, receiver = cluster
    job = request.node.name.removeprefix("test_")[:40]
    replicas = {
        name: ServiceProcess(_config(tmp_path, name, job, alertmanagers), tmp_path / f"{name}.log")
        for name in ("a", "b")
    }
    try:
        for service in replicas.values():
            service.start()
        feed = Feed(job, {name: service.url for name, service in replicas.items()})
        feed.start()
        pair = Pair(job, replicas, feed, alertmanagers, receiver)
        try:
            wait_until(lambda: all(pair.speaking(name) for name in replicas), 30, "both replicas to be warm")
            yield pair
        finally:
            feed.stop()
    finally:
        for service in replicas.values():
            service.stop()


def _incident(pair: Pair, during: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the outage, with ``during(pair)`` once it has paged; return the firing and resolved alert."""
    pair.feed.level = OUTAGE
    outage_from = pair.feed.next_t
    [firing] = wait_until(lambda: pair.notifications("firing"), 30, "the page for the outage")
    if during is not None:
        during(pair)
    wait_until(lambda: pair.feed.next_t >= outage_from + STEP * OUTAGE_POINTS, 60, "the outage to last")
    pair.feed.level = NORMAL
    back = pair.feed.next_t
    [resolved] = wait_until(lambda: pair.notifications("resolved"), 30, "the all-clear")
    # Nothing more may come: wait until every delivery is made and the alert is gone everywhere, then
    # for longer than a peer waits before it notifies and a group waits between notifications.
    wait_until(pair.settled, 30, "deliveries done and the alert resolved at every Alertmanager")
    time.sleep(PEER_TIMEOUT + 2 * GROUP_INTERVAL)
    assert len(pair.notifications("firing")) == 1, pair.notifications("firing")
    assert len(pair.notifications("resolved")) == 1, pair.notifications("resolved")
    assert outage_from <= _seconds(firing["startsAt"]) <= outage_from + 5 * STEP
    assert back <= _seconds(resolved["endsAt"]) <= back + 10 * STEP
    assert firing["labels"] == resolved["labels"]
    assert "replica" not in firing["labels"]
    assert firing["annotations"]["replica"] in ("a", "b")
    return firing, resolved


def _seconds(rfc3339: str) -> float:
    return float(np.datetime64(rfc3339.replace("Z", "")).astype("datetime64[ms]").astype(float) / 1000)


def _opened_and_resolved(pair: Pair, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    events = [e for e in pair.events(name) if e["change"] in ("opened", "resolved")]
    assert [e["change"] for e in events] == ["opened", "resolved"], events
    return events[0], events[1]


def test_both_replicas_up(pair: Pair) -> None:
    firing, resolved = _incident(pair)
    (opened_a, resolved_a), (opened_b, resolved_b) = (_opened_and_resolved(pair, n) for n in "ab")
    # Both replicas saw the same incident, with the same start and end taken from the data.
    assert opened_a["incident_id"] == opened_b["incident_id"] == firing["annotations"]["incident_id"]
    assert opened_a["opened_at"] == opened_b["opened_at"] == _seconds(firing["startsAt"])
    assert resolved_a["resolved_at"] == resolved_b["resolved_at"] == _seconds(resolved["endsAt"])
    # ... and each told both Alertmanagers: the cluster, not silence, kept it to one page.
    for name in "ab":
        delivered = pair.deliveries(name, "delivered")
        assert delivered["alertmanager.1"] >= 2 and delivered["alertmanager.2"] >= 2, (name, delivered)


def test_one_replica_killed_during_the_incident(pair: Pair) -> None:
    def kill_a(pair: Pair) -> None:
        pair.replicas["a"].kill()

    _firing, resolved = _incident(pair, during=kill_a)
    _opened, resolved_b = _opened_and_resolved(pair, "b")
    assert resolved_b["resolved_at"] == _seconds(resolved["endsAt"])


def test_one_replica_restarted_during_the_incident(pair: Pair) -> None:
    restarted_at: list[float] = []

    def restart_b(pair: Pair) -> None:
        # Kill b right after a checkpoint that holds everything it accepted; what comes meanwhile
        # waits in its queue, as in Prometheus's, and reaches it once it is back.
        pair.feed.hold("b")
        accepted = pair.feed.accepted_at["b"]
        b = pair.replicas["b"]
        wait_until(
            lambda: (b.metric("anomaly_detector_last_checkpoint_timestamp_seconds") or 0) > accepted + 0.5,
            10,
            "a checkpoint after b's last accepted write",
        )
        opened = [e for e in pair.events("b") if e["change"] == "opened"]
        assert opened, "b paged before its restart"
        b.kill()
        time.sleep(1.0)  # down for a moment: samples pile up in b's queue
        pair.restart("b")
        restarted_at.append(time.monotonic())
        pair.feed.release("b")
        wait_until(lambda: pair.speaking("b"), 10, "b to speak again after catching up")
        restarted_at.append(time.monotonic())

    firing, resolved = _incident(pair, during=restart_b)
    assert restarted_at[1] - restarted_at[0] < 5.0, "a replica with a fresh checkpoint speaks again quickly"
    # The restarted replica carried the incident on, from its checkpoint, and resolved it itself.
    after_restart = pair.events("b")  # this process's events only
    assert [e["change"] for e in after_restart][-1] == "resolved", after_restart
    assert {e["incident_id"] for e in after_restart} == {firing["annotations"]["incident_id"]}
    assert after_restart[-1]["resolved_at"] == _seconds(resolved["endsAt"])

"""Two shards under a real Prometheus: its ``hashmod`` relabelling splits remote_write between them.

Prometheus scrapes the tests' own exporter (many series) every second and
remote-writes through two queues, each keeping the series whose ``hashmod``
is its shard's index, to two service processes configured as shard 0 and
shard 1 of 2.  Every series must be scored by exactly one shard, the two
together must cover them all, each shard's series must be exactly those
:func:`service.sharding.hashmod` gives it, and no shard may receive a series
of the other (``anomaly_detector_samples_dropped_total{reason="other_shard"}``
stays absent): both sides hash alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from detector.labels import series_key
from service.app import ShardReply
from service.settings import ShardSettings
from service.sharding import hashmod
from tests.support import wait_until
from tests.support.exporter import NoisyExporter
from tests.support.prometheus import scrape_config, start_prometheus
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.live

METRIC = "demo_requests"
SERIES = 64
SHARDS = 2
JOB = "shards"
#: ``path`` tells the exporter's series apart, so each shard gets some of one target's series.
LABELS = ["__name__", "instance", "job", "path"]


@pytest.fixture
def exporter() -> Iterator[NoisyExporter]:
    exporter = NoisyExporter(METRIC, level=100.0, port=0, series=SERIES)
    yield exporter
    exporter.stop()


def _queue(port: int, index: int) -> dict[str, Any]:
    """The remote_write queue of shard ``index``, with the rules ``GET /api/v1/shard`` gives it."""
    shard = ShardSettings(index=index, count=SHARDS, labels=LABELS)
    return {
        "url": f"http://127.0.0.1:{port}/api/v1/write",
        "name": f"shard-{index}",
        "queue_config": {"batch_send_deadline": "1s"},
        "write_relabel_configs": ShardReply.of(shard).write_relabel_configs,
    }


def _config(path: Path, index: int, prometheus_url: str) -> Path:
    config = {
        "prometheus": {"url": prometheus_url},
        "store": str(path.parent / f"shard-{index}.db"),
        "shard": {"index": index, "count": SHARDS, "labels": LABELS},
        "detectors": [{"name": "requests", "source": "remote_write", "match": {"__name__": METRIC}}],
    }
    path.write_text(json.dumps(config))
    return path


def _keys(service: ServiceProcess) -> list[str]:
    reply = service.get("/api/v1/series")
    reply.raise_for_status()
    return [item["key"] for item in reply.json()]


def test_two_shards_score_every_series_exactly_once_as_prometheus_routes_them(
    tmp_path: Path, exporter: NoisyExporter
) -> None:
    ports = [ServiceProcess(tmp_path / "unused", tmp_path / "unused.log").port for _ in range(SHARDS)]
    assert len(set(ports)) == SHARDS
    everything = {
        series_key({"__name__": METRIC, "instance": exporter.url, "job": JOB, "path": f"/api/{i}"}): {
            "__name__": METRIC,
            "instance": exporter.url,
            "job": JOB,
            "path": f"/api/{i}",
        }
        for i in range(SERIES)
    }
    owner = {key: hashmod(labels, LABELS, SHARDS) for key, labels in everything.items()}
    assert set(owner.values()) == set(range(SHARDS)), "the test's series reach every shard"
    with start_prometheus(
        tmp_path / "prometheus",
        scrape_configs=[scrape_config(JOB, [exporter.url], "1s")],
        remote_write=[_queue(port, index) for index, port in enumerate(ports)],
        remote_write_receiver=False,
    ) as prometheus:
        shards = [
            ServiceProcess(
                _config(tmp_path / f"shard-{index}.json", index, prometheus.url),
                tmp_path / f"shard-{index}.log",
                port=port,
            )
            for index, port in enumerate(ports)
        ]
        try:
            for shard in shards:
                shard.start()

            def all_there() -> list[list[str]]:
                keys = [_keys(shard) for shard in shards]
                return keys if sum(map(len, keys)) >= SERIES else []

            seen = wait_until(
                all_there,
                timeout=60,
                what=f"the shards to hold {SERIES} series between them",
            )
            for index, shard in enumerate(shards):
                assert shard.get("/api/v1/shard").json()["index"] == index
                assert shard.metric("anomaly_detector_samples_dropped_total", reason="other_shard") is None, (
                    f"shard {index} got another shard's series:\n{shard.log()}"
                )
                assert (shard.metric("anomaly_detector_samples_ingested_total") or 0) > 0
        finally:
            for shard in shards:
                shard.stop()
    assert all(len(keys) == len(set(keys)) for keys in seen)
    assert set(seen[0]).isdisjoint(seen[1]), "a series scored by both shards"
    assert set(seen[0]) | set(seen[1]) == set(everything), "the shards together cover every series"
    for index, keys in enumerate(seen):
        assert set(keys) == {key for key, shard in owner.items() if shard == index}

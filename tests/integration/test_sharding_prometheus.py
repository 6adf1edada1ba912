"""The shard a series belongs to is the one a real Prometheus's ``hashmod`` relabelling gives it."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from service.sharding import hashmod
from tests.support.prometheus import scrape_config, start_prometheus

pytestmark = pytest.mark.live

TARGETS = [
    f"127.0.0.{1 + i // 40}:{1000 + i}" for i in range(60)
]  # nothing listens: up = 0, labels all the same


def test_hashmod_agrees_with_prometheus_relabelling(tmp_path: Path) -> None:
    config = scrape_config("shards", TARGETS, interval="1s")
    config["relabel_configs"] = [
        # Two source labels: the separator (";") takes part in the hash.
        {"source_labels": ["job", "__address__"], "modulus": 5, "target_label": "shard", "action": "hashmod"}
    ]
    with start_prometheus(tmp_path, scrape_configs=[config]) as prometheus:
        deadline = time.monotonic() + 30
        while True:
            reply = httpx.get(
                f"{prometheus.url}/api/v1/query", params={"query": 'up{job="shards"}'}, timeout=5
            )
            result = reply.json()["data"]["result"]
            if len(result) == len(TARGETS) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert len(result) == len(TARGETS)
    theirs = {item["metric"]["instance"]: int(item["metric"]["shard"]) for item in result}
    ours = {
        target: hashmod({"job": "shards", "__address__": target}, ["job", "__address__"], 5)
        for target in TARGETS
    }
    assert ours == theirs
    assert len(set(ours.values())) == 5  # every shard gets some

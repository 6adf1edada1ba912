"""Shards: an instance scores exactly the series whose ``hashmod`` is its index, pulled or pushed.

Real decoder, engine and store; a stand-in Prometheus for pull mode.  The
live version, with a real Prometheus routing remote_write by ``hashmod``, is
``tests/integration/test_shards.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from detector.config import ConfigError, validate_settings
from detector.labels import series_key
from service.app import create_app
from service.detection import Detection
from service.prometheus import RangeSeries, Sample
from service.remote_write import STALE_NAN_BITS, SeriesCache, decode_write_request
from service.settings import ServiceSettings
from service.sharding import hashmod
from service.store import Store
from tests.support import FakeClock
from tests.support.remote_write import write_request

LABELS = ["instance", "job"]
SERIES = [
    {"__name__": "http_requests", "instance": f"10.0.{i // 10}.{i % 10}:9100", "job": "api"}
    for i in range(40)
]
OTHER_JOB = [{"__name__": "http_requests", "instance": f"10.1.0.{i}:9100", "job": "batch"} for i in range(5)]
STALE = np.array([STALE_NAN_BITS], dtype=np.uint64).view(np.float64)[0]


def _owner(labels: dict[str, str], count: int = 2) -> int:
    return hashmod(labels, LABELS, count)


def _settings(tmp_path: Path, index: int, count: int = 2, **detector: Any) -> ServiceSettings:
    return ServiceSettings.model_validate(
        {
            "store": str(tmp_path / f"shard-{index}-of-{count}.db"),
            "remote_write": {"batch_wait": 0},
            "shard": {"index": index, "count": count},
            "detectors": [detector],
        }
    )


def _tracked(detection: Detection, name: str) -> set[str]:
    return set(detection.runtimes[name].engine.series.active())


def _dropped(detection: Detection, reason: str) -> float:
    value = detection.metrics.registry.get_sample_value(
        "anomaly_detector_samples_dropped_total", {"reason": reason}
    )
    return value or 0.0


# --- configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shard", "message"),
    [
        ({"index": 2, "count": 2}, "shard: index 2 is not a shard of 2; indexes run from 0 to 1"),
        ({"index": -1, "count": 2}, "shard.index: Input should be greater than or equal to 0"),
        ({"count": 0}, "shard.count: Input should be greater than or equal to 1"),
        ({"labels": []}, "shard.labels: List should have at least 1 item"),
        ({"labels": ["job", "pod-name"]}, "shard.labels: 'pod-name': not a label name"),
    ],
)
def test_a_shard_that_cannot_be_is_refused_naming_the_key(shard: dict[str, Any], message: str) -> None:
    document = {"shard": shard, "detectors": [{"name": "d", "query": "up"}]}
    with pytest.raises(ConfigError, match="^run.yaml: " + message.replace("(", r"\(")):
        validate_settings(ServiceSettings, document, "run.yaml")


def test_without_a_shard_setting_one_shard_owns_every_series() -> None:
    settings = ServiceSettings.model_validate({"detectors": [{"name": "d", "query": "up"}]})
    assert (settings.shard.index, settings.shard.count, settings.shard.labels) == (0, 1, LABELS)
    assert all(settings.shard.owns(labels) for labels in SERIES)


# --- push -------------------------------------------------------------------------------------------


def _push(
    detection: Detection, labels: list[dict[str, str]], t: float, x: np.ndarray, cache: SeriesCache
) -> None:
    body = write_request([series_key(item) for item in labels], np.full(len(labels), t), x)
    asyncio.run(detection.write(decode_write_request(body, None, None, cache=cache)))


def test_remote_write_scores_only_its_own_series_and_counts_the_others(tmp_path: Path) -> None:
    clock = FakeClock(1.7e9)
    shards = [
        Detection(settings, Store(settings.store), clock=clock)
        for settings in (
            _settings(tmp_path, i, source="remote_write", name="rw", match={"job": "api"}) for i in (0, 1)
        )
    ]
    everything = SERIES + OTHER_JOB
    cache = SeriesCache()  # one decoder cache, as in one process
    values = np.arange(len(everything), dtype=float)
    for detection in shards:
        _push(detection, everything, clock(), values, cache)

    def decided_again(key: str, labels: dict[str, str]) -> bool:
        raise AssertionError(f"{key}: match and shard are decided once per series, then cached")

    for detection in shards:
        detection.runtimes["rw"].accepts = decided_again  # type: ignore[method-assign]
        _push(detection, everything, clock() + 15, values, cache)
    for index, detection in enumerate(shards):
        mine = {series_key(labels) for labels in SERIES if _owner(labels) == index}
        assert _tracked(detection, "rw") == mine
        assert _dropped(detection, "other_shard") == 2 * (len(SERIES) - len(mine))
        assert _dropped(detection, "unmatched") == 2 * len(OTHER_JOB), "another job is unmatched, any shard"
    assert _tracked(shards[0], "rw").isdisjoint(_tracked(shards[1], "rw"))
    assert _tracked(shards[0], "rw") | _tracked(shards[1], "rw") == {series_key(labels) for labels in SERIES}


def test_a_stale_marker_of_another_shards_series_is_counted_as_other_shard(tmp_path: Path) -> None:
    clock = FakeClock(1.7e9)
    settings = _settings(tmp_path, 0, source="remote_write", name="rw", match={"job": "api"})
    detection = Detection(settings, Store(settings.store), clock=clock)
    theirs = [labels for labels in SERIES if _owner(labels) == 1][:3]
    _push(detection, theirs, clock(), np.full(len(theirs), STALE), SeriesCache())
    assert _dropped(detection, "other_shard") == 3
    assert _dropped(detection, "stale_marker") == 0
    assert _tracked(detection, "rw") == set()


def test_the_api_shows_the_shard_and_the_rules_that_route_it(tmp_path: Path) -> None:
    settings = _settings(tmp_path, 1, 3, source="remote_write", name="rw")
    with TestClient(create_app(settings)) as client:
        reply = client.get("/api/v1/shard").json()
    assert reply == {
        "index": 1,
        "count": 3,
        "labels": LABELS,
        "separator": ";",
        "write_relabel_configs": [
            {"source_labels": LABELS, "modulus": 3, "target_label": "__tmp_shard", "action": "hashmod"},
            {"source_labels": ["__tmp_shard"], "regex": "1", "action": "keep"},
            {"regex": "__tmp_shard", "action": "labeldrop"},
        ],
    }


# --- pull -------------------------------------------------------------------------------------------


class StandInPrometheus:
    """Every series of ``SERIES`` scraped every 15 s; records which series each range query returned."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.ranged: list[set[str]] = []

    def instant(self, query: str, at: float | None = None) -> list[Sample]:
        return [Sample(dict(labels), self.clock(), 1.0 + i) for i, labels in enumerate(SERIES)]

    def range(self, query: str, start: float, end: float, step: float) -> list[RangeSeries]:
        t = np.arange(start, end + 1e-9, step)
        answer = [RangeSeries(dict(labels), t, 1.0 + i + np.sin(t)) for i, labels in enumerate(SERIES)]
        self.ranged.append({series_key(item.labels) for item in answer})
        return answer


def _pulling(tmp_path: Path, clock: FakeClock, index: int, count: int = 2) -> Detection:
    settings = _settings(
        tmp_path, index, count, name="pull", query="http_requests", interval="15s", lookback="10m"
    )
    return Detection(settings, Store(settings.store), reader=StandInPrometheus(clock), clock=clock)  # type: ignore[arg-type]


def _ingested(detection: Detection, source: str) -> float:
    value = detection.metrics.registry.get_sample_value(
        "anomaly_detector_samples_ingested_total", {"detector": "pull", "source": source}
    )
    return value or 0.0


def test_pull_keeps_its_share_of_the_query_and_of_the_warm_start(tmp_path: Path) -> None:
    clock = FakeClock(1.7e9)
    shards = [_pulling(tmp_path, clock, index) for index in (0, 1)]
    for detection in shards:
        asyncio.run(detection.evaluate(detection.runtimes["pull"]))
    for index, detection in enumerate(shards):
        mine = {series_key(labels) for labels in SERIES if _owner(labels) == index}
        assert 0 < len(mine) < len(SERIES)
        assert _tracked(detection, "pull") == mine
        assert _ingested(detection, "pull") == len(mine)
        points = 40  # 10 minutes of lookback at 15 s
        assert _ingested(detection, "history") == pytest.approx(len(mine) * points, abs=len(mine))
    assert _tracked(shards[0], "pull") | _tracked(shards[1], "pull") == {series_key(s) for s in SERIES}


def test_after_the_shard_count_changes_catch_up_replays_only_the_series_still_owned(tmp_path: Path) -> None:
    clock = FakeClock(1.7e9)
    alone = _pulling(tmp_path, clock, 0, count=1)
    alone.restore()
    asyncio.run(alone.evaluate(alone.runtimes["pull"]))
    assert _tracked(alone, "pull") == {series_key(labels) for labels in SERIES}
    asyncio.run(alone.checkpoint())

    # The same store, now as shard 1 of 2, after a minute down: its checkpoint still holds every series.
    settings = _settings(tmp_path, 1, 2, name="pull", query="http_requests", interval="15s", lookback="10m")
    settings.store = alone.settings.store
    clock.advance(60)
    shard = Detection(settings, Store(settings.store), reader=StandInPrometheus(clock), clock=clock)  # type: ignore[arg-type]
    shard.restore()
    asyncio.run(shard.evaluate(shard.runtimes["pull"]))
    mine = {series_key(labels) for labels in SERIES if _owner(labels) == 1}
    missed = 3  # evaluations at +15, +30 and +45 s
    assert _ingested(shard, "catch_up") == missed * len(mine), "only its own series are caught up"
    assert _ingested(shard, "pull") == len(mine)
    # The others are no longer fed; they expire after expire_after like any series that went away.
    latest = {state.key: state.t for state in shard.runtimes["pull"].all_series()}
    assert {key for key, t in latest.items() if t == clock()} == mine
    assert set(latest) == {series_key(labels) for labels in SERIES}

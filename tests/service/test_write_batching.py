"""Remote-write batching through the real service: concurrent requests, one scoring batch, answers after it.

The HTTP tests run the app under uvicorn on 127.0.0.1 and send real
remote-write bodies concurrently; what was batched is read back from the
service's own ``/metrics`` (``anomaly_detector_remote_write_batch_samples``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.detection import WriteBatcher, WriteFailed
from service.remote_write import DecodedWrite, SeriesCache, decode_write_request
from service.settings import ServiceSettings
from tests.support.remote_write import HEADERS, write_request
from tests.support.service import serve_in_thread

T0 = 1.7e9
BATCH = "anomaly_detector_remote_write_batch_samples"


def _settings(tmp_path: Path, batch_samples: int, batch_wait: float) -> ServiceSettings:
    return ServiceSettings.model_validate(
        {
            "store": str(tmp_path / "state.db"),
            "remote_write": {"batch_samples": batch_samples, "batch_wait": batch_wait},
            "detectors": [{"name": "rw", "source": "remote_write", "match": {"job": "api"}}],
        }
    )


@pytest.fixture
def batched(tmp_path: Path) -> Iterator[str]:
    """Batches of exactly 40 samples; a smaller queue would wait 5 s."""
    with serve_in_thread(_settings(tmp_path, batch_samples=40, batch_wait=5.0)) as url:
        yield url


@pytest.fixture
def slow_batches(tmp_path: Path) -> Iterator[str]:
    """A queue is scored only after its oldest request waited 3 s (time to look meanwhile when busy)."""
    with serve_in_thread(_settings(tmp_path, batch_samples=1_000_000, batch_wait=3.0)) as url:
        yield url


def _body(request: int, series: int = 4, value: float = 5.0) -> bytes:
    """``series`` series of this request, plus ``shared{job="api"}`` at time ``T0 + request``."""
    keys = [f'm{request}_{i}{{job="api"}}' for i in range(series)] + ['shared{job="api"}']
    return write_request(keys, np.full(len(keys), T0 + request), np.full(len(keys), value + request))


def _metric(url: str, name: str, **labels: str) -> float:
    """One sample of the service's ``/metrics`` (0 when absent)."""
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


async def _post_all(url: str, bodies: list[bytes], stagger: float = 0.0) -> list[httpx.Response]:
    """Post all bodies concurrently, the i-th after ``i * stagger`` seconds (to fix their arrival order)."""
    async with httpx.AsyncClient(base_url=url, timeout=20) as client:

        async def post(index: int, body: bytes) -> httpx.Response:
            await asyncio.sleep(index * stagger)
            return await client.post("/api/v1/write", content=body, headers=HEADERS)

        return await asyncio.gather(*(post(i, b) for i, b in enumerate(bodies)))


def _series(url: str) -> dict[str, dict[str, Any]]:
    return {state["key"]: state for state in httpx.get(f"{url}/api/v1/series").json()}


def test_concurrent_requests_are_scored_in_one_batch_in_order(batched: str) -> None:
    # Concurrent connections arrive in any order; 0.2 s apart they arrive in request order.
    responses = asyncio.run(_post_all(batched, [_body(request) for request in range(8)], stagger=0.2))
    assert [r.status_code for r in responses] == [204] * 8, [r.text for r in responses]
    assert _metric(batched, f"{BATCH}_count") == 1
    assert _metric(batched, f"{BATCH}_sum") == 40
    assert (
        _metric(batched, "anomaly_detector_samples_ingested_total", detector="rw", source="remote_write")
        == 40
    )
    series = _series(batched)
    assert len(series) == 8 * 4 + 1
    # The series sent by every request got its samples in request order: the last is the latest.
    assert series['shared{job="api"}']["t"] == T0 + 7 and series['shared{job="api"}']["value"] == 12.0


def test_a_bad_request_is_answered_at_once_and_does_not_touch_the_batch(batched: str) -> None:
    bodies = [_body(request, series=9) for request in range(4)]
    responses = asyncio.run(_post_all(batched, [*bodies[:2], b"not snappy", *bodies[2:]]))
    assert [r.status_code for r in responses] == [204, 204, 400, 204, 204]
    assert "snappy" in responses[2].text
    assert _metric(batched, f"{BATCH}_count") == 1 and _metric(batched, f"{BATCH}_sum") == 40
    assert _metric(batched, "anomaly_detector_samples_dropped_total", reason="bad_request") == 1
    assert len(_series(batched)) == 4 * 9 + 1


def test_the_answer_waits_until_the_samples_are_scored(slow_batches: str) -> None:
    async def write_and_look() -> tuple[httpx.Response, list[dict[str, Any]], float]:
        async with httpx.AsyncClient(base_url=slow_batches, timeout=20) as client:
            started = time.monotonic()
            write = asyncio.create_task(client.post("/api/v1/write", content=_body(0), headers=HEADERS))
            await asyncio.sleep(0.3)
            assert not write.done(), "answered before the batch was scored"
            meanwhile = (await client.get("/api/v1/series")).json()
            response = await write
            return response, meanwhile, time.monotonic() - started

    response, meanwhile, waited = asyncio.run(write_and_look())
    assert meanwhile == [], "nothing is scored while the batch waits; the service still answers"
    assert response.status_code == 204 and waited >= 2.9
    assert len(_series(slow_batches)) == 5, "a 2xx means the samples were scored"


def _decoded(n: int) -> DecodedWrite:
    keys = [f'up{{job="{i}"}}' for i in range(n)]
    return decode_write_request(
        write_request(keys, np.full(n, T0), np.ones(n)), None, None, cache=SeriesCache()
    )


def test_a_scoring_fault_fails_every_request_of_its_batch_and_no_other() -> None:
    batches: list[list[int]] = []

    def score(batch: list[DecodedWrite]) -> None:
        batches.append([len(decoded.t) for decoded in batch])
        if len(batches) == 1:
            raise FloatingPointError("the first batch cannot be scored")

    async def run() -> list[BaseException | None]:
        batcher = WriteBatcher(score, max_samples=6, max_wait=0.05)
        first = await asyncio.gather(*(batcher.submit(_decoded(2)) for _ in range(3)), return_exceptions=True)
        second = await asyncio.gather(batcher.submit(_decoded(2)), return_exceptions=True)
        return [*first, *second]

    outcomes = asyncio.run(run())
    assert batches == [[2, 2, 2], [2]]
    assert [getattr(o, "status", None) for o in outcomes] == [500, 500, 500, None]
    assert all(isinstance(o, WriteFailed) and "send again" in str(o) for o in outcomes[:3])


def test_a_batch_takes_whole_requests_up_to_max_samples() -> None:
    batches: list[list[int]] = []

    async def run() -> None:
        batcher = WriteBatcher(lambda b: batches.append([len(d.t) for d in b]), max_samples=5, max_wait=0.01)
        await asyncio.gather(*(batcher.submit(_decoded(n)) for n in (2, 2, 2, 7, 1)))

    asyncio.run(run())
    assert batches == [[2, 2], [2], [7], [1]]


def test_samples_older_than_late_after_are_scored_and_counted_as_late(slow_batches: str) -> None:
    now = time.time()
    keys = ['late{job="api"}', 'fresh{job="api"}', 'late{job="api"}']
    # Two samples of an hour ago (a backlog), one of now; the default late_after is 5 minutes.
    body = write_request(keys, np.array([now - 3600.0, now, now - 3540.0]), np.array([1.0, 2.0, 3.0]))
    assert httpx.post(f"{slow_batches}/api/v1/write", content=body, headers=HEADERS).status_code == 204
    assert _metric(slow_batches, "anomaly_detector_samples_late_total", detector="rw") == 2
    assert _series(slow_batches)['late{job="api"}']["value"] == 3.0  # scored, not dropped

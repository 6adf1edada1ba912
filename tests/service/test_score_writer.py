"""outputs.remote_write: what is sent, in which order, and what happens while the receiver is down."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest

from detector.labels import series_key
from service.detection import Detection
from service.remote_write import decode_write_request
from service.settings import ServiceSettings
from service.store import Store

KEYS = [series_key({"__name__": "up", "job": job, "Zone": "eu"}) for job in ("a", "b")]


def _detection(tmp_path: Path, **output: object) -> Detection:
    settings = ServiceSettings.model_validate(
        {
            "store": str(tmp_path / "state.db"),
            "detectors": [
                {
                    "name": "rw",
                    "source": "remote_write",
                    "model": "ewma",
                    "model_params": {"warmup": 3},
                    "calibration": {"warmup": 5},
                }
            ],
            "outputs": {
                "remote_write": {"url": "http://127.0.0.1:9/api/v1/write", "min_backoff": 0.01, **output}
            },
        }
    )
    return Detection(settings, Store(settings.store))


def _feed(detection: Detection, steps: range, live: bool = True) -> None:
    runtime = detection.runtimes["rw"]
    for step in steps:
        t = np.full(2, 1_700_000_000.0 + 15 * step)
        runtime.ingest(KEYS, t, np.array([1.0 + step % 3, 5.0]), live=live)


async def _send(detection: Detection, answers: list[int], seconds: float = 0.3) -> list[httpx.Request]:
    """Run the writer against answers given in turn (the last repeats); the requests it made."""
    requests: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(answers[min(len(requests), len(answers)) - 1])

    writer = detection.score_writer
    assert writer is not None
    writer._transport = httpx.MockTransport(answer)
    task = asyncio.create_task(writer.run())
    await asyncio.sleep(seconds)
    task.cancel()
    return requests


def _decoded(requests: list[httpx.Request]) -> list[tuple[str, float, float]]:
    out: list[tuple[str, float, float]] = []
    for request in requests:
        assert request.headers["content-encoding"] == "snappy"
        assert request.headers["x-prometheus-remote-write-version"] == "0.1.0"
        decoded = decode_write_request(request.content, request.headers["content-type"], "snappy")
        out.extend(zip(decoded.keys, decoded.t.tolist(), decoded.x.tolist(), strict=True))
    return out


def test_every_live_sample_leaves_with_its_series_labels_at_its_own_time(tmp_path: Path) -> None:
    detection = _detection(tmp_path, labels={"replica": "a"}, max_samples_per_send=7)
    _feed(detection, range(0, 5), live=False)  # history (a warm start) is not sent
    _feed(detection, range(5, 15))
    requests = asyncio.run(_send(detection, [204]))
    sent = _decoded(requests)
    assert all(len(_decoded([request])) <= 7 for request in requests)
    times = sorted({t for _, t, _ in sent})
    assert times[0] == 1_700_000_000.0 + 15 * 5 and len(times) == 10
    runtime = detection.runtimes["rw"]
    row = runtime.engine.series.get(KEYS[0])
    assert row is not None
    latest = runtime.latest.arrays
    exported = 'Zone="eu",detector="rw",job="a",metric="up",replica="a"'
    last = {key: value for key, t, value in sent if t == times[-1]}
    assert last[f"anomaly_score{{{exported}}}"] == pytest.approx(latest["score"][row])
    assert last[f"anomaly_expected_upper{{{exported}}}"] == pytest.approx(latest["upper"][row])
    assert last[f"anomaly_alert_firing{{{exported}}}"] == 0.0
    # Bands only once the series is warm, as on /metrics.
    early = {key.partition("{")[0] for key, t, _ in sent if t == times[0]}
    assert early == {"anomaly_score", "anomaly_alert_firing"}
    assert detection.metrics.output_sent._value.get() == len(sent)


def test_a_time_already_sent_is_not_sent_again(tmp_path: Path) -> None:
    detection = _detection(tmp_path, metrics=["anomaly_score"])
    _feed(detection, range(3))
    _feed(detection, range(2, 4))  # step 2 again (a resend), then step 3
    sent = _decoded(asyncio.run(_send(detection, [204])))
    assert sorted(t for key, t, _ in sent if 'job="a"' in key) == [1_700_000_000.0 + 15 * s for s in range(4)]


def test_a_receiver_that_fails_gets_the_same_samples_again_and_a_refusal_drops_them(tmp_path: Path) -> None:
    detection = _detection(tmp_path, metrics=["anomaly_score"], max_samples_per_send=2)
    _feed(detection, range(2))
    requests = asyncio.run(_send(detection, [503, 503, 204, 400]))
    assert requests[0].content == requests[1].content == requests[2].content
    assert len(requests) == 4  # then nothing left to send
    assert detection.metrics.output_failures._value.get() == 2
    assert detection.metrics.output_sent._value.get() == 2
    assert detection.metrics.output_dropped.labels("rejected")._value.get() == 2


def test_while_the_receiver_is_down_the_queue_keeps_the_newest_and_counts_the_rest(tmp_path: Path) -> None:
    detection = _detection(tmp_path, metrics=["anomaly_score"], queue_samples=6)
    _feed(detection, range(10))  # 20 samples, one chunk of 2 each
    writer = detection.score_writer
    assert writer is not None and writer.queued == 6
    assert detection.metrics.output_dropped.labels("queue_full")._value.get() == 14
    sent = _decoded(asyncio.run(_send(detection, [204])))
    assert sorted({t for _, t, _ in sent}) == [1_700_000_000.0 + 15 * s for s in (7, 8, 9)]

"""The remote-write row cache never sends a sample to another series' row.

Real decoder, real engine, real store: samples go through
:meth:`Detection.write` and each series' latest value is read back.  A row
cache that missed an invalidation would show up as a value landing on the
wrong series.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from service.detection import Detection
from service.remote_write import STALE_NAN_BITS, SeriesCache, decode_write_request
from service.runtime import SeriesState
from service.settings import ServiceSettings
from service.store import Store
from tests.support.remote_write import write_request

STALE = np.array([STALE_NAN_BITS], dtype=np.uint64).view(np.float64)[0]


class Clock:
    """Wall time the test moves."""

    def __init__(self) -> None:
        self.now = 1.7e9

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _detection(tmp_path: Path, clock: Clock) -> Detection:
    settings = ServiceSettings.model_validate(
        {
            "store": str(tmp_path / "state.db"),
            "remote_write": {"batch_wait": 0},
            "detectors": [
                {"name": "rw", "source": "remote_write", "match": {"job": "api"}, "expire_after": "60s"}
            ],
        }
    )
    return Detection(settings, Store(settings.store), clock=clock)


def _write(
    detection: Detection, values: dict[str, float], clock: Clock, cache: SeriesCache | None = None
) -> None:
    """One remote-write request, one sample per series, at the clock's time."""
    keys = list(values)
    body = write_request(keys, np.full(len(keys), clock.now), np.array(list(values.values())))
    asyncio.run(detection.write(decode_write_request(body, None, None, cache=cache)))


def _values(detection: Detection) -> dict[str, float]:
    return {state.key: state.value for state in detection.runtimes["rw"].all_series()}


def _state(detection: Detection, key: str) -> SeriesState:
    state = detection.runtimes["rw"].series_state(key)
    assert state is not None, f"{key} is not tracked"
    return state


A, B = 'a{job="api"}', 'b{job="api"}'


def test_a_forgotten_series_row_given_to_another_is_not_written_through_the_cache(
    tmp_path: Path, clock: Clock
) -> None:
    detection = _detection(tmp_path, clock)
    runtime = detection.runtimes["rw"]
    _write(detection, {A: 1.0}, clock)
    row_of_a = runtime.engine.series.get(A)
    clock.now += 120
    runtime.expire()
    assert _values(detection) == {}
    _write(detection, {B: 2.0}, clock)
    assert runtime.engine.series.get(B) == row_of_a, "the freed row went to the new series"
    _write(detection, {A: 3.0}, clock)  # the very bytes of the first request's series
    assert _values(detection) == {A: 3.0, B: 2.0}
    assert runtime.engine.series.get(A) != row_of_a


def test_restoring_a_checkpoint_with_other_rows_drops_the_cached_ones(tmp_path: Path, clock: Clock) -> None:
    earlier = _detection(tmp_path, clock)
    _write(earlier, {B: 1.0}, clock)
    _write(earlier, {A: 1.0}, clock)
    asyncio.run(earlier.checkpoint())
    detection = _detection(tmp_path, clock)
    _write(detection, {A: 5.0, B: 6.0}, clock)
    runtime = detection.runtimes["rw"]
    rows_before = (runtime.engine.series.get(A), runtime.engine.series.get(B))
    detection.restore()
    assert (runtime.engine.series.get(A), runtime.engine.series.get(B)) == rows_before[::-1]
    clock.now += 15
    _write(detection, {A: 7.0}, clock)
    assert _values(detection) == {A: 7.0, B: 1.0}


def test_series_evicted_from_a_small_decoder_cache_keep_their_rows(tmp_path: Path, clock: Clock) -> None:
    detection = _detection(tmp_path, clock)
    cache = SeriesCache(max_entries=4)  # slots are reused all the time
    numbers = {f'm{{job="api",n="{n}"}}': n for n in range(10)}
    keys = list(numbers)
    for step in range(4):
        clock.now += 15
        sent = {key: 100.0 * step + numbers[key] for key in keys[step:] + keys[:step]}
        _write(detection, sent, clock, cache)
        assert _values(detection) == sent
        assert len(cache) <= 4


def test_a_series_ends_when_its_last_sample_in_a_batch_is_a_stale_marker(
    tmp_path: Path, clock: Clock
) -> None:
    detection = _detection(tmp_path, clock)
    runtime = detection.runtimes["rw"]
    first = write_request([A, B], np.full(2, clock.now), np.array([1.0, 1.0]))
    then = write_request([A, B, 'c{job="api"}'], np.full(3, clock.now + 15), np.array([STALE, 2.0, STALE]))
    ended = write_request([B], np.full(1, clock.now + 30), np.array([STALE]))
    back = write_request([B], np.full(1, clock.now + 45), np.array([3.0]))
    batch = [decode_write_request(body, None, None) for body in (first, then, ended, back)]
    detection.score_remote_write(batch[:2])  # A: a value, then a stale marker; B: two values
    assert _state(detection, A).ended and not _state(detection, B).ended
    assert runtime.engine.series.get('c{job="api"}') is None, "a series seen only ending is not started"
    detection.score_remote_write(batch[2:])  # B: a stale marker, then a value
    assert not _state(detection, B).ended and _state(detection, B).value == 3.0

"""A sink down for ten minutes of (fake) time, with a restart in the middle.

While receiver ``hook`` answers 503 and then refuses connections, 20 events of
four incidents are enqueued and a second sink, ``mirror``, stays healthy.
Halfway through the outage the outbox is closed and reopened on the same
database file.  When ``hook`` comes back every delivery must arrive exactly
once, in order per incident; the waits between failed attempts must follow the
capped exponential backoff, and the backlog must drain as soon as the sink is back.
"""

from __future__ import annotations

import random
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from detector.alerts import AlertEvent
from service.outbox import Outbox, connect
from service.sinks import WebhookSink, example_event
from tests.support import FakeClock, MaxJitter
from tests.support.net import Receiver

SECRET = "outage-test-secret"
STEP = 5.0  # seconds of fake time between delivery passes
BASE, CAP = 2.0, 60.0
FAILING_UNTIL, DOWN_FROM, RESTART_AT, BACK_AT = 0.0, 300.0, 450.0, 600.0


def _events() -> list[tuple[float, AlertEvent]]:
    """(offset, event): one event every 30 s, incidents interleaved, five events each."""
    scheduled = []
    for i in range(20):
        incident, sequence = f"inc-{i % 4}", i // 4 + 1
        change = {1: "opened", 5: "resolved"}.get(sequence, "updated")
        status = "resolved" if change == "resolved" else "firing"
        event = example_event(incident_id=incident, sequence=sequence, change=change, status=status)
        scheduled.append((30.0 * i, event))
    return scheduled


class _Attempts:
    """Each delivery's attempts as the database records them: (attempted at, scheduled wait)."""

    def __init__(self) -> None:
        self.seen: dict[str, list[tuple[float, float]]] = {}
        self._counts: dict[str, int] = {}

    def observe(self, outbox: Outbox) -> None:
        for delivery in outbox.recent(limit=1000):
            if delivery.sink != "hook" or delivery.attempts == self._counts.get(delivery.delivery_id, 0):
                continue
            assert delivery.attempts == self._counts.get(delivery.delivery_id, 0) + 1, "one attempt per pass"
            self._counts[delivery.delivery_id] = delivery.attempts
            attempted = delivery.last_attempt_at
            assert attempted is not None
            wait = delivery.next_attempt_at - attempted if delivery.state == "pending" else 0.0
            self.seen.setdefault(delivery.delivery_id, []).append((attempted, wait))


def _sinks(hook: Receiver, mirror: Receiver) -> list[WebhookSink]:
    return [
        WebhookSink(hook.url + "/in", SECRET, name="hook", timeout=2.0),
        WebhookSink(mirror.url + "/in", SECRET, name="mirror", timeout=2.0),
    ]


def _accepted(receiver: Receiver) -> list[str]:
    return [r.header("X-Delivery-Id") or "" for r in receiver.requests if 200 <= r.status < 300]


def _run_outage(
    hook: Receiver, mirror: Receiver, database: Path, clock: FakeClock, rng: random.Random
) -> tuple[_Attempts, float]:
    """Play the outage; returns the attempts seen and the fake time at which ``hook`` was drained."""
    start = clock.now
    scheduled = _events()
    attempts = _Attempts()
    connection = connect(database)
    outbox = Outbox(
        connection, _sinks(hook, mirror), clock=clock, rng=rng, max_backoff=CAP, base_backoff=BASE
    )
    hook.respond_with(503)
    restarted = False
    while clock.now - start < BACK_AT + 20 * CAP:
        offset = clock.now - start
        if offset >= DOWN_FROM and hook.running and offset < BACK_AT:
            hook.down()
        if offset >= RESTART_AT and not restarted:
            outbox.close()
            connection.close()
            connection = connect(database)
            outbox = Outbox(
                connection, _sinks(hook, mirror), clock=clock, rng=rng, max_backoff=CAP, base_backoff=BASE
            )
            restarted = True
        if offset >= BACK_AT and not hook.running:
            hook.respond_with(200)
            hook.up()
        while scheduled and scheduled[0][0] <= offset:
            outbox.enqueue(scheduled.pop(0)[1])
        outbox.deliver_due()
        attempts.observe(outbox)
        if offset < BACK_AT:
            assert not _accepted(hook), "nothing can be accepted while the sink is down"
        if offset == BACK_AT - STEP:
            assert len(_accepted(mirror)) == 20, "a healthy sink is not held up by a dead one"
        if offset >= BACK_AT and outbox.pending() == 0:
            break
        clock.advance(STEP)
    drained = clock.now - start
    outbox.close()
    connection.close()
    return attempts, drained


def _check_exactly_once_in_order(hook: Receiver, mirror: Receiver) -> None:
    expected = {f"inc-{i % 4}/{i // 4 + 1}/{name}" for i in range(20) for name in ("hook", "mirror")}
    for receiver, name in ((hook, "hook"), (mirror, "mirror")):
        counts = Counter(_accepted(receiver))
        assert set(counts) == {key for key in expected if key.endswith(name)}
        assert set(counts.values()) == {1}, f"{name}: some delivery arrived twice: {counts}"
        for incident in range(4):
            sequences = [
                int(d.split("/")[1]) for d in _accepted(receiver) if d.startswith(f"inc-{incident}/")
            ]
            assert sequences == [1, 2, 3, 4, 5]


def _check_drained_soon(attempts: _Attempts, start: float, drained: float) -> None:
    """Once the sink accepts a request again, the backlog follows at once, not after its backoffs."""
    finals = {seen[-1][0] - start for seen in attempts.seen.values()}
    back = min(finals)
    # Found back by the next due retry: within one capped backoff (plus a pass) of its return ...
    assert BACK_AT <= back <= BACK_AT + CAP + STEP
    # ... and everything else goes in that pass or the next.
    assert finals <= {back, back + STEP}
    assert drained == max(finals)


def test_ten_minute_outage_with_a_restart_delivers_everything_once_in_order(
    receiver: Receiver, second_receiver: Receiver, database: Path, clock: FakeClock
) -> None:
    start = clock.now
    attempts, drained = _run_outage(receiver, second_receiver, database, clock, MaxJitter())
    _check_exactly_once_in_order(receiver, second_receiver)

    # The sink was really tried during the outage, and refused.
    assert sum(1 for r in receiver.requests if r.status == 503) > 0
    # With the jitter at its ceiling, each delivery's waits double from BASE and stay at CAP,
    # and the restart did not reset them (attempt counts are stored).
    for key, seen in attempts.seen.items():
        waits = [wait for _, wait in seen[:-1]]
        assert waits == [min(CAP, BASE * 2**k) for k in range(len(waits))], key
        times = [at for at, _ in seen]
        for (earlier, wait), later in zip(seen, times[1:], strict=False):
            if later - start < BACK_AT:  # afterwards the sink's return cuts the wait short
                assert later - earlier >= wait, f"{key}: retried before its backoff ran out"
    first = attempts.seen["inc-0/1/hook"]
    assert [wait for _, wait in first[:-1]][-3:] == [CAP, CAP, CAP]
    # Tried, and refused, both before and after the restart.
    failed_at = [at - start for at, _ in first[:-1]]
    assert min(failed_at) < RESTART_AT < max(failed_at) < BACK_AT
    _check_drained_soon(attempts, start, drained)


def test_outage_with_random_jitter_stays_within_the_capped_ceiling(
    receiver: Receiver, second_receiver: Receiver, database: Path, clock: FakeClock
) -> None:
    start = clock.now
    attempts, drained = _run_outage(receiver, second_receiver, database, clock, random.Random(20240601))
    _check_exactly_once_in_order(receiver, second_receiver)
    waits = []
    for seen in attempts.seen.values():
        for attempt, (_, wait) in enumerate(seen[:-1], start=1):
            assert 0.0 <= wait <= min(CAP, BASE * 2 ** (attempt - 1))
            waits.append(wait)
    assert max(waits) <= CAP
    assert len(set(waits)) > len(waits) // 2, "full jitter: waits are spread, not fixed"
    _check_drained_soon(attempts, start, drained)


def test_a_refusal_during_recovery_is_not_retried(
    receiver: Receiver, connection: sqlite3.Connection, clock: FakeClock
) -> None:
    outbox = Outbox(connection, _sinks(receiver, receiver)[:1], clock=clock, rng=MaxJitter())
    receiver.respond_with(503)
    outbox.enqueue(example_event(incident_id="inc-9", sequence=1))
    outbox.deliver_due()
    clock.advance(CAP)
    receiver.respond_once(422)
    receiver.respond_with(200)
    outbox.enqueue(example_event(incident_id="inc-9", sequence=2, change="updated"))
    for _ in range(5):
        outbox.deliver_due()
        clock.advance(CAP)
    assert [(r.header("X-Delivery-Id"), r.status) for r in receiver.requests] == [
        ("inc-9/1/hook", 503),
        ("inc-9/1/hook", 422),
        ("inc-9/2/hook", 200),
    ]
    assert outbox.stats()[("hook", "failed")] == 1


@pytest.fixture(autouse=True)
def _quiet_retries(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("ERROR", logger="service.outbox")

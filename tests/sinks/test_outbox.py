"""The outbox: stored before sent, retried on transient failure, never on a refusal, in order."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest

from detector.alerts import AlertEvent
from service.http_config import HTTPClientConfig
from service.outbox import Delivery, Outbox, connect
from service.sinks import OutgoingRequest, SlackSink, WebhookSink, example_event
from tests.support import FakeClock, MaxJitter
from tests.support.net import Receiver, RecordedRequest, Reply

SECRET = "outbox-test-secret"


def _hook(receiver: Receiver, name: str = "hook", **options: object) -> WebhookSink:
    return WebhookSink(receiver.url + "/in", SECRET, name=name, **options)  # type: ignore[arg-type]


def _event(incident: str = "inc-1", sequence: int = 1, change: str = "opened") -> AlertEvent:
    status = "resolved" if change == "resolved" else "firing"
    return example_event(incident_id=incident, sequence=sequence, change=change, status=status)


def _accepted(receiver: Receiver) -> list[str]:
    """Delivery ids the receiver answered with 2xx, in arrival order."""
    return [r.header("X-Delivery-Id") or "" for r in receiver.requests if 200 <= r.status < 300]


def _only(outbox: Outbox, delivery_id: str) -> Delivery:
    [delivery] = outbox.deliveries([delivery_id])
    return delivery


def test_enqueue_commits_before_any_network_call_and_once_per_event(
    receiver: Receiver, database: Path, connection: sqlite3.Connection
) -> None:
    slack_for_web = SlackSink(receiver.url + "/slack", name="slack", match={"job": "web"})
    outbox = Outbox(connection, [_hook(receiver), slack_for_web])
    assert outbox.enqueue(_event()) == ["inc-1/1/hook"]
    # Another connection sees the row at once: it is committed, and nothing was sent.
    with sqlite3.connect(database) as other:
        assert other.execute("SELECT delivery_id, state FROM outbox").fetchall() == [
            ("inc-1/1/hook", "pending")
        ]
    assert receiver.requests == []
    assert outbox.enqueue(_event()) == []
    assert outbox.pending() == 1
    outbox.close()


def test_2xx_is_delivered_once(receiver: Receiver, connection: sqlite3.Connection, clock: FakeClock) -> None:
    receiver.respond_with(202)
    outbox = Outbox(connection, [_hook(receiver)], clock=clock)
    outbox.enqueue(_event())
    report = outbox.deliver_due()
    assert (report.attempted, report.delivered, report.next_due) == (1, 1, None)
    clock.advance(3600)
    assert outbox.deliver_due().attempted == 0
    assert _accepted(receiver) == ["inc-1/1/hook"]
    delivery = _only(outbox, "inc-1/1/hook")
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("delivered", 1, 202)
    assert delivery.finished_at == clock.now - 3600
    assert outbox.stats() == {
        ("hook", "pending"): 0,
        ("hook", "delivered"): 1,
        ("hook", "failed"): 0,
        ("hook", "superseded"): 0,
    }
    assert outbox.recent(1) == [delivery]
    outbox.close()


def test_a_refusal_fails_for_good_is_logged_and_does_not_block_the_incident(
    receiver: Receiver, connection: sqlite3.Connection, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.respond_once(400, body=b"invalid payload")
    outbox = Outbox(connection, [_hook(receiver)], clock=clock)
    outbox.enqueue(_event(sequence=1))
    outbox.enqueue(_event(sequence=2, change="updated"))
    with caplog.at_level(logging.ERROR, logger="service.outbox"):
        report = outbox.deliver_due()
    assert (report.failed, report.delivered) == (1, 1)
    assert "inc-1/1/hook" in caplog.text
    assert "failed permanently (HTTP 400: invalid payload)" in caplog.text
    failed = _only(outbox, "inc-1/1/hook")
    assert (failed.state, failed.attempts, failed.last_status, failed.last_error) == (
        "failed",
        1,
        400,
        "invalid payload",
    )
    clock.advance(86400)
    assert outbox.deliver_due().attempted == 0
    assert [r.status for r in receiver.requests] == [400, 200]
    assert outbox.stats()[("hook", "failed")] == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
def test_server_errors_and_throttling_are_retried(
    status: int, receiver: Receiver, connection: sqlite3.Connection, clock: FakeClock
) -> None:
    receiver.respond_once(status)
    outbox = Outbox(connection, [_hook(receiver)], clock=clock, rng=MaxJitter(), base_backoff=2.0)
    outbox.enqueue(_event())
    report = outbox.deliver_due()
    assert (report.retrying, report.next_due) == (1, clock.now + 2.0)
    waiting = _only(outbox, "inc-1/1/hook")
    assert (waiting.state, waiting.attempts, waiting.last_status) == ("pending", 1, status)
    assert outbox.deliver_due().attempted == 0  # not due yet
    clock.advance(2.0)
    assert outbox.deliver_due().delivered == 1
    assert [r.status for r in receiver.requests] == [status, 200]


def test_retry_after_is_honoured(
    receiver: Receiver, connection: sqlite3.Connection, clock: FakeClock
) -> None:
    receiver.respond_once(429, headers={"Retry-After": "120"})
    outbox = Outbox(connection, [_hook(receiver)], clock=clock, rng=MaxJitter())
    outbox.enqueue(_event())
    outbox.deliver_due()
    waiting = _only(outbox, "inc-1/1/hook")
    assert waiting.next_attempt_at - (waiting.last_attempt_at or 0) == 120
    clock.advance(119)
    assert outbox.deliver_due().attempted == 0
    clock.advance(1)
    assert outbox.deliver_due().delivered == 1


def test_retry_after_as_a_date_and_beyond_the_cap(
    receiver: Receiver, connection: sqlite3.Connection, clock: FakeClock
) -> None:
    in_90s = format_datetime(datetime.fromtimestamp(clock.now + 90, UTC), usegmt=True)
    receiver.respond_once(503, headers={"Retry-After": in_90s})
    receiver.respond_once(503, headers={"Retry-After": "3600"})
    outbox = Outbox(connection, [_hook(receiver)], clock=clock, rng=MaxJitter(), max_backoff=300)
    outbox.enqueue(_event())
    outbox.deliver_due()
    assert _only(outbox, "inc-1/1/hook").next_attempt_at == clock.now + 90
    clock.advance(90)
    outbox.deliver_due()
    assert _only(outbox, "inc-1/1/hook").next_attempt_at == clock.now + 300  # capped at max_backoff


def test_connection_refused_and_timeouts_are_retried(
    receiver: Receiver, second_receiver: Receiver, connection: sqlite3.Connection, clock: FakeClock
) -> None:
    receiver.down()
    release = threading.Event()

    def slow(request: RecordedRequest) -> Reply | None:
        release.wait(5)
        return None

    second_receiver.respond_by(slow)
    refused, slow_sink = _hook(receiver, "refused"), _hook(second_receiver, "slow", timeout=0.2)
    outbox = Outbox(connection, [refused, slow_sink], clock=clock, rng=MaxJitter())
    outbox.enqueue(_event())
    assert outbox.deliver_due().retrying == 2
    assert (_only(outbox, "inc-1/1/refused").last_error or "").startswith("ConnectError")
    assert (_only(outbox, "inc-1/1/slow").last_error or "").startswith("ReadTimeout")
    release.set()
    second_receiver.respond_by(None)
    receiver.up()
    clock.advance(1.0)
    assert outbox.deliver_due().delivered == 2


def test_when_the_sink_is_back_what_waited_for_it_goes_at_once(
    receiver: Receiver, connection: sqlite3.Connection, clock: FakeClock
) -> None:
    receiver.respond_once(503, 500)
    outbox = Outbox(connection, [_hook(receiver)], clock=clock, rng=MaxJitter(), base_backoff=100)
    outbox.enqueue(_event("away"))
    outbox.enqueue(_event("bad"))
    outbox.deliver_due()  # away: 503
    clock.advance(1)
    outbox.deliver_due()  # bad: 500
    bad_retry = _only(outbox, "bad/1/hook").next_attempt_at
    outbox.enqueue(_event("new"))
    clock.advance(1)
    outbox.deliver_due()  # new: 200, the sink is back
    outbox.deliver_due()
    assert _accepted(receiver) == ["new/1/hook", "away/1/hook"]
    waiting = _only(outbox, "bad/1/hook")  # a 500 may be this request's fault: it keeps its backoff
    assert (waiting.state, waiting.next_attempt_at) == ("pending", bad_retry)


def test_an_unusable_url_fails_for_good(connection: sqlite3.Connection) -> None:
    outbox = Outbox(connection, [WebhookSink("ftp://127.0.0.1/in", SECRET)])
    outbox.enqueue(_event())
    assert outbox.deliver_due().failed == 1
    assert (_only(outbox, "inc-1/1/webhook").last_error or "").startswith("UnsupportedProtocol")


def test_a_later_event_waits_for_the_earlier_one_to_the_same_sink(
    receiver: Receiver, connection: sqlite3.Connection, clock: FakeClock
) -> None:
    receiver.respond_once(503)
    outbox = Outbox(connection, [_hook(receiver)], clock=clock, rng=MaxJitter(), base_backoff=10)
    outbox.enqueue(_event("inc-1", 1))
    outbox.enqueue(_event("inc-1", 2, "updated"))
    outbox.enqueue(_event("inc-2", 1))
    outbox.deliver_due()  # inc-1/1 fails; the sink gets nothing more this pass
    clock.advance(5)
    outbox.deliver_due()  # inc-1/1 backs off, so inc-1/2 waits; inc-2 is independent
    assert _accepted(receiver) == ["inc-2/1/hook"]
    clock.advance(5)
    outbox.deliver_due()
    assert _accepted(receiver) == ["inc-2/1/hook", "inc-1/1/hook", "inc-1/2/hook"]


def test_events_enqueued_out_of_order_go_out_in_sequence(
    receiver: Receiver, connection: sqlite3.Connection
) -> None:
    outbox = Outbox(connection, [_hook(receiver)])
    outbox.enqueue(_event(sequence=2, change="updated"))
    outbox.enqueue(_event(sequence=1))
    for _ in range(3):
        outbox.deliver_due()
    assert _accepted(receiver) == ["inc-1/1/hook", "inc-1/2/hook"]


def test_a_stale_refresh_is_superseded_by_a_later_event(
    receiver: Receiver, connection: sqlite3.Connection, clock: FakeClock
) -> None:
    receiver.respond_once(503)
    outbox = Outbox(connection, [_hook(receiver)], clock=clock, rng=MaxJitter())
    outbox.enqueue(_event(sequence=1))
    outbox.deliver_due()
    for sequence, change in ((2, "refreshed"), (3, "refreshed"), (4, "resolved")):
        outbox.enqueue(_event(sequence=sequence, change=change))
    clock.advance(60)
    report = outbox.deliver_due()
    assert (report.delivered, report.superseded) == (2, 2)
    assert _accepted(receiver) == ["inc-1/1/hook", "inc-1/4/hook"]
    assert [d.state for d in outbox.deliveries(["inc-1/2/hook", "inc-1/3/hook"])] == ["superseded"] * 2


def test_the_latest_refresh_is_still_sent(receiver: Receiver, connection: sqlite3.Connection) -> None:
    outbox = Outbox(connection, [_hook(receiver)])
    outbox.enqueue(_event(sequence=1))
    outbox.enqueue(_event(sequence=2, change="refreshed"))
    outbox.deliver_due()
    assert _accepted(receiver) == ["inc-1/1/hook", "inc-1/2/hook"]


def test_a_resolution_reaches_every_sink_that_saw_the_incident(
    receiver: Receiver, connection: sqlite3.Connection
) -> None:
    top = example_event().top
    on_b = replace(top, labels={**top.labels, "instance": "b"})
    sinks = [
        _hook(receiver, "for-a", match={"instance": "a"}),
        _hook(receiver, "for-c", match={"instance": "c"}),
    ]
    outbox = Outbox(connection, sinks)
    assert outbox.enqueue(_event()) == ["inc-1/1/for-a"]
    # The incident now only involves series b: by labels no sink wants it, but for-a must hear it ended.
    resolved = replace(_event(sequence=2, change="resolved"), findings=(on_b,))
    assert not any(sink.wants(resolved) for sink in sinks)
    assert outbox.enqueue(resolved) == ["inc-1/2/for-a"]


def test_rows_of_a_sink_no_longer_configured_wait_and_block_nothing(
    receiver: Receiver, database: Path
) -> None:
    with sqlite3.connect(database) as first:
        Outbox(first, [_hook(receiver, "old"), _hook(receiver, "new")]).enqueue(_event())
    with sqlite3.connect(database) as second:
        outbox = Outbox(second, [_hook(receiver, "new")])
        assert outbox.deliver_due().delivered == 1
        assert _accepted(receiver) == ["inc-1/1/new"]
        assert outbox.pending() == 1
        assert outbox.stats()[("old", "pending")] == 1


class _BrokenSink:
    """A sink whose formatting raises, as a bug would."""

    name = "broken"
    timeout = 1.0
    http = HTTPClientConfig()

    def wants(self, event: AlertEvent) -> bool:
        return True

    def request(self, event: AlertEvent, delivery_id: str) -> OutgoingRequest:
        raise KeyError("graph")


def test_a_sink_that_cannot_format_fails_only_its_delivery(
    receiver: Receiver, connection: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(connection, [_BrokenSink(), _hook(receiver)])
    outbox.enqueue(_event())
    with caplog.at_level(logging.ERROR, logger="service.outbox"):
        report = outbox.deliver_due()
    assert (report.failed, report.delivered) == (1, 1)
    assert "sink broken cannot build delivery inc-1/1/broken" in caplog.text
    assert _only(outbox, "inc-1/1/broken").last_error == "cannot build the request: KeyError('graph')"


def _run_until(outbox: Outbox, done: Callable[[], bool], **options: float) -> None:
    """Run ``outbox.run(**options)`` as an asyncio task until ``done()`` (at most 20 s), then cancel it.

    The loop must still be running when it is cancelled.
    """

    async def main() -> None:
        task = asyncio.create_task(outbox.run(**options))
        deadline = time.monotonic() + 20
        while not done() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_run_delivers_from_asyncio(receiver: Receiver, connection: sqlite3.Connection) -> None:
    outbox = Outbox(connection, [_hook(receiver)])
    outbox.enqueue(_event())
    _run_until(outbox, lambda: bool(_accepted(receiver)), interval=0.05)
    outbox.close()
    assert _accepted(receiver) == ["inc-1/1/hook"]


def test_threads_share_the_connection_and_every_event_arrives_once(
    receiver: Receiver, database: Path
) -> None:
    connection = connect(database)
    lock = threading.Lock()
    outbox = Outbox(connection, [_hook(receiver)], lock=lock)
    stop = threading.Event()

    def deliver() -> None:
        while not stop.is_set():
            outbox.deliver_due(limit=10)

    def produce(incident: str) -> None:
        for sequence in range(1, 11):
            outbox.enqueue(_event(incident, sequence, "updated"))

    worker = threading.Thread(target=deliver)
    worker.start()
    producers = [threading.Thread(target=produce, args=(f"inc-{i}",)) for i in range(4)]
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join()
    stop.set()
    worker.join()
    while outbox.pending():
        outbox.deliver_due()
    outbox.close()
    connection.close()

    accepted = _accepted(receiver)
    assert sorted(accepted) == sorted(f"inc-{i}/{s}/hook" for i in range(4) for s in range(1, 11))
    for i in range(4):
        mine = [int(d.split("/")[1]) for d in accepted if d.startswith(f"inc-{i}/")]
        assert mine == sorted(mine)


def test_prune_keeps_pending_deliveries(
    receiver: Receiver, connection: sqlite3.Connection, clock: FakeClock
) -> None:
    outbox = Outbox(connection, [_hook(receiver)], clock=clock)
    outbox.enqueue(_event("done"))
    outbox.deliver_due()
    receiver.down()
    outbox.enqueue(_event("waiting"))
    outbox.deliver_due()
    clock.advance(10)
    assert outbox.prune(before=clock.now) == 1
    assert [d.incident_id for d in outbox.recent()] == ["waiting"]


def test_sink_names_and_backoff_settings_are_checked(
    receiver: Receiver, connection: sqlite3.Connection
) -> None:
    with pytest.raises(ValueError, match=r"sink names \['hook'\] are used more than once"):
        Outbox(connection, [_hook(receiver), _hook(receiver)])
    with pytest.raises(ValueError, match="need 0 < base_backoff <= max_backoff"):
        Outbox(connection, [_hook(receiver)], max_backoff=1, base_backoff=5)


def test_run_deletes_finished_deliveries_after_the_retention(
    receiver: Receiver, connection: sqlite3.Connection, clock: FakeClock
) -> None:
    outbox = Outbox(connection, [_hook(receiver)], clock=clock)
    outbox.enqueue(_event("old"))
    outbox.deliver_due()
    clock.advance(8 * 86400)
    receiver.down()
    outbox.enqueue(_event("waiting"))

    _run_until(outbox, lambda: not outbox.deliveries(["old/1/hook"]), interval=0.02, keep_finished=7 * 86400)
    outbox.close()
    assert outbox.deliveries(["old/1/hook"]) == []
    assert [(d.incident_id, d.state) for d in outbox.recent()] == [("waiting", "pending")]


def test_run_survives_a_failing_pass(
    receiver: Receiver, database: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = connect(database)
    outbox = Outbox(broken, [_hook(receiver)])
    broken.close()  # every pass now fails to read the store

    with caplog.at_level(logging.ERROR, logger="service.outbox"):
        _run_until(outbox, lambda: caplog.text.count("alert delivery pass failed") >= 2, interval=0.02)
    outbox.close()
    assert caplog.text.count("alert delivery pass failed; retrying in 0 s") >= 2

"""Durable, at-least-once delivery of alert events to the sinks, through SQLite.

:meth:`Outbox.enqueue` writes one row per sink that wants the event and
commits before any network call, so an event accepted here survives a crash or
a restart.  :meth:`Outbox.deliver_due` sends the rows whose next attempt is due,
oldest first, and records the outcome:

=====================================  ==============================================
receiver answers                       the delivery
=====================================  ==============================================
2xx                                    is ``delivered``
5xx, 408, 429, connection error,       stays ``pending``; the next attempt waits a
timeout                                random time up to ``base_backoff × 2^(n-1)``
                                       after the n-th failure, at most
                                       ``max_backoff`` ("full jitter"); a
                                       ``Retry-After`` is honoured up to
                                       ``max_backoff``
any other status, an unusable URL      is ``failed``: logged, counted, not retried
=====================================  ==============================================

Per sink, the events of one incident go out in ``sequence`` order: a later
event waits while an earlier one is pending (a failed one does not block).  A
``refreshed`` event with a later event of its incident already waiting for the
same sink is ``superseded`` and not sent: a refresh only extends a lease, and a
stale one sent after an outage would carry an end time already past.  A
resolution also goes to every sink that took an earlier event of its incident,
so an incident opened somewhere is always closed there.

After a transient failure a sink gets no more requests in the same pass, so a
dead receiver costs one timeout per pass, not one per waiting delivery.  When
it accepts a request again, the deliveries that waited only because it was
away (no answer, 502, 503, 504) are due at once instead of sitting out their
backoff; those refused with 500, 408 or 429 keep theirs.

The delivery id ``"{incident_id}/{sequence}/{sink}"`` is stable across
retries and restarts: the sinks put it (or a key derived from the incident) in
the request, so a repeated delivery is a no-op at the receiver.

Threads: the connection may be shared with other parts of the service; every
use of it holds ``lock`` (give the same lock to everything sharing it).  The
network calls hold only a private lock that keeps two passes from running at
once.  From asyncio, run :meth:`Outbox.run` as a task, or call
``await asyncio.to_thread(outbox.deliver_due)`` on a timer.

>>> import sqlite3
>>> from service.sinks import WebhookSink, example_event
>>> outbox = Outbox(sqlite3.connect(":memory:"), [WebhookSink("http://127.0.0.1:9/", "k")])
>>> outbox.enqueue(example_event())
['latency-api-1/1/webhook']
>>> outbox.enqueue(example_event())
[]
>>> outbox.pending(), outbox.stats()[("webhook", "pending")]
(1, 1)
>>> outbox.close()
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import httpx

from detector.alerts import AlertEvent
from service.http_config import describe_error, http_client
from service.sinks import OutgoingRequest, Sink

logger = logging.getLogger(__name__)

State = Literal["pending", "delivered", "failed", "superseded"]
STATES: tuple[State, ...] = ("pending", "delivered", "failed", "superseded")
USER_AGENT = "incident-anomaly-detector"
_ERROR_TEXT = 500
#: Answers that say the receiver is away, not that this request is bad (``None``: no answer).
_UNAVAILABLE = frozenset({None, 502, 503, 504})

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY,
        delivery_id TEXT NOT NULL UNIQUE,
        sink TEXT NOT NULL,
        incident_id TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        change TEXT NOT NULL,
        event TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        enqueued_at REAL NOT NULL,
        next_attempt_at REAL NOT NULL,
        last_attempt_at REAL,
        finished_at REAL,
        last_status INTEGER,
        last_error TEXT
    )
    """,
    "CREATE INDEX IF NOT EXISTS outbox_state ON outbox (state, next_attempt_at)",
    "CREATE INDEX IF NOT EXISTS outbox_incident ON outbox (incident_id, sink, sequence)",
)
_COLUMNS = (
    "delivery_id, sink, incident_id, sequence, change, state, attempts, enqueued_at, "
    "next_attempt_at, last_attempt_at, finished_at, last_status, last_error"
)


def delivery_id(event: AlertEvent, sink: str) -> str:
    """The key of one event's delivery to one sink, stable across retries and restarts.

    >>> from service.sinks import example_event
    >>> delivery_id(example_event(sequence=3), "slack")
    'latency-api-1/3/slack'
    """
    return f"{event.incident_id}/{event.sequence}/{sink}"


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection suited to an outbox shared between threads (WAL journal, waits on locks).

    >>> import tempfile, pathlib
    >>> connection = connect(pathlib.Path(tempfile.mkdtemp()) / "outbox.db")
    >>> connection.execute("PRAGMA journal_mode").fetchone()[0]
    'wal'
    >>> connection.close()
    """
    connection = sqlite3.connect(path, check_same_thread=False, timeout=30.0)
    connection.execute("PRAGMA journal_mode=WAL")
    return connection


@dataclass(frozen=True)
class Delivery:
    """One event's delivery to one sink, as stored.

    Examples
    --------
    >>> Delivery("i/1/slack", "slack", "i", 1, "opened", "pending", 0, 10.0, 10.0,
    ...          None, None, None, None).state
    'pending'
    """

    delivery_id: str
    sink: str
    incident_id: str
    sequence: int
    change: str
    state: str
    attempts: int
    enqueued_at: float
    next_attempt_at: float
    last_attempt_at: float | None
    finished_at: float | None
    last_status: int | None
    last_error: str | None


@dataclass(frozen=True)
class DeliveryReport:
    """What one :meth:`Outbox.deliver_due` pass did.

    ``next_due`` is the earliest next attempt still pending (``None`` when
    nothing is); ``limited`` says the pass stopped at its limit with more due.

    Examples
    --------
    >>> DeliveryReport(attempted=2, delivered=1, retrying=1)
    DeliveryReport(attempted=2, delivered=1, retrying=1, failed=0, superseded=0, next_due=None, limited=False)
    """

    attempted: int = 0
    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    superseded: int = 0
    next_due: float | None = None
    limited: bool = False


@dataclass
class _Outcome:
    state: State
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None


@dataclass(frozen=True)
class _Row:
    id: int
    delivery_id: str
    sink: str
    incident_id: str
    sequence: int
    change: str
    attempts: int
    next_attempt_at: float
    last_status: int | None

    @property
    def sink_was_unavailable(self) -> bool:
        """Its last attempt found the receiver away (no answer, 502, 503, 504), not the request bad."""
        return self.attempts > 0 and self.last_status in _UNAVAILABLE


class Outbox:
    """Stores alert events per sink and delivers them at least once, in order per incident.

    Parameters
    ----------
    connection
        SQLite connection; the ``outbox`` table is created if missing.  If
        several threads use it, open it with ``check_same_thread=False``
        (:func:`connect` does).
    sinks
        The configured sinks, names unique.
    client
        HTTP client for every sink's requests; by default the outbox makes one
        per sink, with that sink's credentials and TLS settings (its ``http``),
        and closes them.
    clock
        Unix time, for due times and backoff.
    rng
        Source of the backoff jitter.
    max_backoff
        Longest wait, in seconds, between two attempts of one delivery.
    base_backoff
        Longest wait after the first failure; doubles with each further failure.
    lock
        Held around every use of ``connection``; pass the lock of whoever else uses it.

    Examples
    --------
    >>> import sqlite3
    >>> from service.sinks import SlackSink, example_event
    >>> outbox = Outbox(sqlite3.connect(":memory:"), [SlackSink("http://127.0.0.1:9/hook")])
    >>> outbox.enqueue(example_event(change="refreshed"))  # Slack skips refreshes
    []
    >>> outbox.deliver_due()
    DeliveryReport(attempted=0, delivered=0, retrying=0, failed=0, superseded=0, next_due=None, limited=False)
    >>> outbox.close()
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        sinks: Sequence[Sink],
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        max_backoff: float = 300.0,
        *,
        base_backoff: float = 1.0,
        lock: threading.Lock | None = None,
    ) -> None:
        names = [sink.name for sink in sinks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"sink names {duplicates} are used more than once; give each sink its own name")
        if not 0 < base_backoff <= max_backoff:
            raise ValueError(
                f"base_backoff {base_backoff!r} and max_backoff {max_backoff!r}: "
                "need 0 < base_backoff <= max_backoff"
            )
        self.connection = connection
        self.sinks = list(sinks)
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.max_backoff = float(max_backoff)
        self.base_backoff = float(base_backoff)
        self.lock = lock if lock is not None else threading.Lock()
        self._by_name = {sink.name: sink for sink in self.sinks}
        self._owns_client = client is None
        if client is None:
            # One client per sink: credentials and TLS settings belong to a client, not a request.
            agent = {"User-Agent": USER_AGENT}
            self._clients = {sink.name: http_client(sink.http, headers=agent) for sink in self.sinks}
        else:
            self._clients = dict.fromkeys(self._by_name, client)
        # Held for a whole delivery pass, network included: one pass at a time.
        self._pass = threading.Lock()
        with self.lock, self.connection:
            for statement in _SCHEMA:
                self.connection.execute(statement)

    # --- writing -----------------------------------------------------------------------------------

    def enqueue(self, event: AlertEvent) -> list[str]:
        """Store ``event`` for every sink that takes it; returns the delivery ids newly written.

        Committed before returning.  Enqueueing an event again writes nothing.
        """
        data = json.dumps(event.to_dict())
        now = self.clock()
        with self.lock, self.connection:
            earlier: set[str] = set()
            if event.status == "resolved":
                rows = self.connection.execute(
                    "SELECT DISTINCT sink FROM outbox WHERE incident_id = ?", (event.incident_id,)
                )
                earlier = {name for (name,) in rows}
            written = []
            for sink in self.sinks:
                if not (sink.wants(event) or sink.name in earlier):
                    continue
                key = delivery_id(event, sink.name)
                cursor = self.connection.execute(
                    "INSERT OR IGNORE INTO outbox (delivery_id, sink, incident_id, sequence, change, event, "
                    "enqueued_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, sink.name, event.incident_id, event.sequence, event.change, data, now, now),
                )
                if cursor.rowcount:
                    written.append(key)
        return written

    # --- delivering --------------------------------------------------------------------------------

    def deliver_due(self, limit: int = 100) -> DeliveryReport:
        """Attempt up to ``limit`` due deliveries, oldest first; blocks while another pass runs."""
        with self._pass:
            return self._deliver(limit)

    def _deliver(self, limit: int) -> DeliveryReport:
        now = self.clock()
        pending = self._pending_rows()
        # Sequences still pending per (sink, incident): only the lowest may go.
        waiting: dict[tuple[str, str], list[int]] = {}
        for row in pending:
            waiting.setdefault((row.sink, row.incident_id), []).append(row.sequence)
        for sequences in waiting.values():
            sequences.sort()
        counts = dict.fromkeys(STATES, 0)
        attempted, limited = 0, False
        troubled: set[str] = set()
        recovered: set[str] = set()
        for row in pending:
            due = row.next_attempt_at <= now or (row.sink in recovered and row.sink_was_unavailable)
            if not due or row.sink in troubled:
                continue
            sequences = waiting[(row.sink, row.incident_id)]
            if sequences[0] != row.sequence:
                continue
            if attempted >= limit:
                limited = True
                break
            if row.change == "refreshed" and sequences[-1] > row.sequence:
                self._supersede(row, self.clock())
                counts["superseded"] += 1
                sequences.pop(0)
                continue
            attempted += 1
            outcome = self._attempt(row)
            counts[outcome.state] += 1
            if outcome.state == "pending":
                troubled.add(row.sink)
                continue
            sequences.pop(0)
            if outcome.state == "delivered" and row.sink not in recovered:
                recovered.add(row.sink)
                self._recovered(row.sink, now)
        return DeliveryReport(
            attempted=attempted,
            delivered=counts["delivered"],
            retrying=counts["pending"],
            failed=counts["failed"],
            superseded=counts["superseded"],
            next_due=self._next_due(),
            limited=limited,
        )

    def _pending_rows(self) -> list[_Row]:
        names = list(self._by_name)
        marks = ",".join("?" * len(names))
        with self.lock:
            rows = self.connection.execute(
                "SELECT id, delivery_id, sink, incident_id, sequence, change, attempts, next_attempt_at, "
                "last_status "
                f"FROM outbox WHERE state = 'pending' AND sink IN ({marks}) ORDER BY id",
                names,
            ).fetchall()
        return [_Row(*row) for row in rows]

    def _next_due(self) -> float | None:
        names = list(self._by_name)
        marks = ",".join("?" * len(names))
        with self.lock:
            (due,) = self.connection.execute(
                f"SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending' AND sink IN ({marks})",
                names,
            ).fetchone()
        return None if due is None else float(due)

    def _attempt(self, row: _Row) -> _Outcome:
        sink = self._by_name[row.sink]
        with self.lock:
            (data,) = self.connection.execute("SELECT event FROM outbox WHERE id = ?", (row.id,)).fetchone()
        try:
            request = sink.request(AlertEvent.from_dict(json.loads(data)), row.delivery_id)
        except Exception as error:  # A sink that cannot format an event must not stop the others.
            logger.exception("sink %s cannot build delivery %s; giving up on it", row.sink, row.delivery_id)
            outcome = _Outcome("failed", error=f"cannot build the request: {error!r}")
        else:
            outcome = self._send(sink, request)
        attempted_at = self.clock()
        self._finish(row, outcome, attempted_at)
        self._log(row, outcome)
        return outcome

    def _send(self, sink: Sink, request: OutgoingRequest) -> _Outcome:
        try:
            response = self._clients[sink.name].request(
                request.method,
                request.url,
                headers=dict(request.headers),
                content=request.body,
                timeout=sink.timeout,
            )
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL) as error:
            # Sending the same request again cannot help; the configuration must change.
            return _Outcome("failed", error=describe_error(error))
        except httpx.TransportError as error:
            return _Outcome("pending", error=describe_error(error)[:_ERROR_TEXT])
        status = response.status_code
        if 200 <= status < 300:
            return _Outcome("delivered", status=status)
        text = response.text[:_ERROR_TEXT]
        if status in (408, 429) or status >= 500:
            return _Outcome("pending", status, text, _retry_after(response, self.clock()))
        return _Outcome("failed", status, text)

    def _supersede(self, row: _Row, at: float) -> None:
        with self.lock, self.connection:
            self.connection.execute(
                "UPDATE outbox SET state = 'superseded', finished_at = ? WHERE id = ?", (at, row.id)
            )

    def _finish(self, row: _Row, outcome: _Outcome, at: float) -> None:
        attempts = row.attempts + 1
        next_at = at + self._backoff(attempts, outcome.retry_after) if outcome.state == "pending" else at
        finished = None if outcome.state == "pending" else at
        with self.lock, self.connection:
            self.connection.execute(
                "UPDATE outbox SET state = ?, attempts = ?, next_attempt_at = ?, last_attempt_at = ?, "
                "finished_at = ?, last_status = ?, last_error = ? WHERE id = ?",
                (outcome.state, attempts, next_at, at, finished, outcome.status, outcome.error, row.id),
            )

    def _recovered(self, sink: str, now: float) -> None:
        """The sink answered again: what waits only because it was away need not wait any longer."""
        statuses = sorted(status for status in _UNAVAILABLE if status is not None)
        with self.lock, self.connection:
            self.connection.execute(
                "UPDATE outbox SET next_attempt_at = ? WHERE sink = ? AND state = 'pending' "
                "AND next_attempt_at > ? AND attempts > 0 "
                f"AND (last_status IS NULL OR last_status IN ({','.join('?' * len(statuses))}))",
                (now, sink, now, *statuses),
            )

    def _backoff(self, attempts: int, retry_after: float | None) -> float:
        """Full jitter: uniform up to base × 2^(attempts-1), capped; Retry-After raises it, up to the cap."""
        ceiling = min(self.max_backoff, self.base_backoff * 2.0 ** min(attempts - 1, 64))
        delay = self.rng.uniform(0.0, ceiling)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.max_backoff)

    @staticmethod
    def _log(row: _Row, outcome: _Outcome) -> None:
        what = f"HTTP {outcome.status}" if outcome.status is not None else "no response"
        detail = f": {outcome.error}" if outcome.error else ""
        if outcome.state == "failed":
            logger.error(
                "delivery %s to sink %s failed permanently (%s%s); not retrying",
                row.delivery_id,
                row.sink,
                what,
                detail,
            )
        elif outcome.state == "pending":
            # One warning per delivery; further retries of it would flood the log during an outage.
            level = logging.WARNING if row.attempts == 0 else logging.INFO
            logger.log(
                level,
                "delivery %s to sink %s failed (%s%s), attempt %d; will retry",
                row.delivery_id,
                row.sink,
                what,
                detail,
                row.attempts + 1,
            )

    async def run(
        self,
        interval: float = 1.0,
        limit: int = 100,
        keep_finished: float | None = None,
        prune_every: float = 3600.0,
    ) -> None:
        """Deliver forever from asyncio, each pass in a worker thread; cancel the task to stop.

        Sleeps ``interval`` between passes, less when a delivery falls due
        sooner, none when a pass stopped at ``limit`` with more waiting.  A pass
        that fails (the store cannot be read, say) is logged and retried after
        ``interval``: the loop itself never dies.  With ``keep_finished`` (in
        seconds), deliveries that finished longer ago than that are deleted,
        at most once per ``prune_every`` seconds, so the store does not grow
        without end; pending deliveries are never deleted.
        """
        pruned_at = -math.inf
        while True:
            delay = interval
            try:
                if keep_finished is not None and self.clock() - pruned_at >= prune_every:
                    pruned_at = self.clock()
                    removed = await asyncio.to_thread(self.prune, pruned_at - keep_finished)
                    if removed:
                        logger.info(
                            "outbox: deleted %d deliveries finished over %.0f s ago", removed, keep_finished
                        )
                report = await asyncio.to_thread(self.deliver_due, limit)
                if report.limited:
                    delay = 0.0
                elif report.next_due is not None and report.next_due > self.clock():
                    delay = min(interval, report.next_due - self.clock())
            except Exception:
                logger.exception("alert delivery pass failed; retrying in %.0f s", interval)
            await asyncio.sleep(delay)

    # --- reading -----------------------------------------------------------------------------------

    def pending(self) -> int:
        """How many deliveries wait to be sent (to any sink, configured or not)."""
        with self.lock:
            (count,) = self.connection.execute(
                "SELECT COUNT(*) FROM outbox WHERE state = 'pending'"
            ).fetchone()
        return int(count)

    def last_sequences(self, incident_ids: Iterable[str]) -> dict[str, int]:
        """The highest event sequence stored for each of these incidents (those with any).

        >>> import sqlite3
        >>> from service.sinks import WebhookSink, example_event
        >>> outbox = Outbox(sqlite3.connect(":memory:"), [WebhookSink("http://127.0.0.1:9/", "k")])
        >>> _ = outbox.enqueue(example_event(sequence=4))
        >>> outbox.last_sequences(["latency-api-1", "other"])
        {'latency-api-1': 4}
        >>> outbox.close()
        """
        wanted = list(dict.fromkeys(incident_ids))
        found: dict[str, int] = {}
        with self.lock:
            for start in range(0, len(wanted), 500):
                part = wanted[start : start + 500]
                rows = self.connection.execute(
                    "SELECT incident_id, MAX(sequence) FROM outbox "
                    f"WHERE incident_id IN ({', '.join('?' * len(part))}) GROUP BY incident_id",
                    part,
                )
                found.update({incident: int(sequence) for incident, sequence in rows})
        return found

    def stats(self) -> dict[tuple[str, str], int]:
        """Deliveries per ``(sink, state)``, zero included for every configured sink, for metrics."""
        counts: dict[tuple[str, str], int] = {
            (sink.name, state): 0 for sink in self.sinks for state in STATES
        }
        with self.lock:
            rows = self.connection.execute("SELECT sink, state, COUNT(*) FROM outbox GROUP BY sink, state")
            for sink, state, count in rows:
                counts[(sink, state)] = int(count)
        return counts

    def recent(self, limit: int = 50) -> list[Delivery]:
        """The deliveries most recently enqueued or attempted, newest first."""
        with self.lock:
            rows = self.connection.execute(
                f"SELECT {_COLUMNS} FROM outbox "
                "ORDER BY COALESCE(last_attempt_at, enqueued_at) DESC, id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [Delivery(*row) for row in rows]

    def deliveries(self, ids: Iterable[str]) -> list[Delivery]:
        """The stored state of the given delivery ids (unknown ids are left out)."""
        keys = list(ids)
        marks = ",".join("?" * len(keys))
        with self.lock:
            rows = self.connection.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE delivery_id IN ({marks}) ORDER BY id", keys
            ).fetchall()
        return [Delivery(*row) for row in rows]

    def prune(self, before: float) -> int:
        """Delete finished deliveries (delivered, failed, superseded) that finished before ``before``."""
        with self.lock, self.connection:
            cursor = self.connection.execute(
                "DELETE FROM outbox WHERE state != 'pending' AND finished_at < ?", (before,)
            )
        return cursor.rowcount

    # --- lifetime ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Wait for a running pass, then close the HTTP clients the outbox made.

        The connection belongs to the caller and stays open.
        """
        with self._pass:
            if self._owns_client:
                for client in self._clients.values():
                    client.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Outbox(sinks={[sink.name for sink in self.sinks]!r}, max_backoff={self.max_backoff!r})"


def _retry_after(response: httpx.Response, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date), if any."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None

"""The live service's work, independent of HTTP: pull loops, remote_write ingest, checkpoints.

:class:`Detection` owns one :class:`~service.runtime.DetectorRuntime` per
configured detector, the Prometheus reader, the store and the self-metrics.
The FastAPI app (``service.app``) only routes requests to it and runs its
loops in the lifespan.  All engine work happens on the event-loop thread;
Prometheus queries and store writes run in worker threads.

Remote write
------------
Prometheus pushes from many shards at once, ~500–2000 samples a request, and
an engine call costs a fixed overhead plus a small cost per sample, so each
request is decoded as it arrives and queued; a :class:`WriteBatcher` scores
what is queued together, one engine call per detector, and only then answers
the requests (a 2xx still means "scored").  A detector's
:class:`~service.remote_write.RowCache` maps the decoder's series entries to
engine rows, so steady-state batches skip the per-sample series-table look-ups.

Shards
------
With ``shard.count`` above 1 an instance owns the series whose ``hashmod`` is
its ``shard.index`` (:mod:`service.sharding`): a pull detector keeps only
those of every query's result, warm starts and catch-ups included; a push
detector scores only those and counts the others as dropped, reason
``other_shard`` (the row cache remembers the verdict per series).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

import numpy as np

from detector.alerts import AlertEvent, SeriesFinding
from detector.labels import series_key
from detector.silences import MaintenanceWindow, Matcher
from service.exposition import SelfMetrics
from service.outbox import Outbox, connect
from service.prometheus import PrometheusError, PrometheusReader, RangeSeries, Sample
from service.remote_write import DecodedWrite, RowCache
from service.runtime import DetectorRuntime, last_positions, series_id
from service.score_writer import ScoreWriter
from service.settings import DetectorSpec, ServiceSettings
from service.silence_book import SilenceBook
from service.sinks import build_sinks
from service.store import Store, StoreError

log = logging.getLogger(__name__)

#: The row of a sample whose series a detector takes but has no state for: only
#: stale markers of it arrived, and an ending series is not started.
_UNTRACKED = -2
#: The row of a sample whose series a detector would take but another shard owns.
_OTHER_SHARD = -3


def _give_back_free_memory() -> None:
    """Return the C heap's free pages to the system (glibc only; elsewhere nothing).

    Registering many series at once, a checkpoint or a large scrape leaves
    freed memory inside the heap, where it still counts as the process's RSS
    until something reuses it; at a million series that is a gigabyte or more.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _flatten(series: list[RangeSeries]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Range results as one batch in time order (each series' points stay in order)."""
    keys: list[str] = []
    for item in series:
        keys.extend([series_key(item.labels)] * len(item.t))
    if not keys:
        return [], np.zeros(0), np.zeros(0)
    t = np.concatenate([item.t for item in series])
    x = np.concatenate([item.x for item in series])
    order = np.argsort(t, kind="stable")
    return [keys[i] for i in order], t[order], x[order]


def _without_repeats(series: list[RangeSeries]) -> list[RangeSeries]:
    """Each series without the points that repeat the value before them.

    For a catch-up: while Prometheus itself is down nothing is scraped, yet a
    range query over the outage answers every step with the last value scraped
    before it (for up to the lookback delta, 5 minutes).  That is one sample seen
    again, not data; replayed as live, a few hundred copies shrink the model's
    scale until the first ordinary noise after the outage alerts.

    >>> flat = RangeSeries({}, np.arange(5.0), np.array([1.0, 3.0, 3.0, 3.0, 2.0]))
    >>> _without_repeats([flat])[0].x.tolist()
    [1.0, 3.0, 2.0]
    """
    kept = []
    for item in series:
        new = np.ones(len(item), dtype=bool)
        new[1:] = item.x[1:] != item.x[:-1]
        kept.append(RangeSeries(item.labels, item.t[new], item.x[new]))
    return kept


class WriteFailed(RuntimeError):
    """Queued remote-write samples were not scored; the HTTP layer answers with :attr:`status`.

    500 when scoring raised (the log has the traceback), 503 when the service
    stopped before scoring them.  Prometheus retries both.
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class _Queued:
    decoded: DecodedWrite
    scored: asyncio.Future[None]
    since: float  # event-loop time it was queued


class WriteBatcher:
    """Scores queued remote-write requests together; each submitter waits for its batch.

    While requests are queued a flush task runs: it waits until they hold
    ``max_samples`` samples or the oldest has waited ``max_wait`` seconds,
    hands whole requests, up to ``max_samples`` samples (at least one
    request), to ``score`` in one call, and then resolves their submitters:
    all succeed, or all get :class:`WriteFailed` if ``score`` raised.
    ``score`` runs on the event loop, like all engine work.  A request whose
    client went away while queued is still scored.

    Examples
    --------
    >>> calls = []
    >>> batcher = WriteBatcher(lambda batch: calls.append([len(d.t) for d in batch]), 10, max_wait=0.01)
    >>> four = np.zeros(4, dtype=np.int64)
    >>> request = DecodedWrite(["up{}"] * 4, {}, t=four, x=four, stale=four > 0, slots=four, stamps=four)
    >>> async def three_at_once() -> None:
    ...     await asyncio.gather(*(batcher.submit(request) for _ in range(3)))
    >>> asyncio.run(three_at_once())
    >>> calls
    [[4, 4], [4]]
    """

    def __init__(
        self, score: Callable[[list[DecodedWrite]], None], max_samples: int, max_wait: float
    ) -> None:
        self._score = score
        self.max_samples = max_samples
        self.max_wait = max_wait
        self._queue: deque[_Queued] = deque()
        self._queued_samples = 0
        self._grown = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, decoded: DecodedWrite) -> None:
        """Queue ``decoded`` and return once it is scored; raises :class:`WriteFailed` if it was not."""
        loop = asyncio.get_running_loop()
        queued = _Queued(decoded, loop.create_future(), loop.time())
        self._queue.append(queued)
        self._queued_samples += len(decoded.t)
        if self._flusher is None or self._flusher.done():
            self._grown = asyncio.Event()  # of this event loop, like the task
            self._flusher = asyncio.create_task(self._flush_while_queued())
        else:
            self._grown.set()
        await queued.scored

    async def _flush_while_queued(self) -> None:
        try:
            while self._queue:
                await self._until_due()
                self._flush(self._take())
        finally:
            # Only when cancelled (the service is stopping): nothing queued waits forever.
            self._settle(list(self._queue), WriteFailed("the service is stopping; send again", 503))
            self._queue.clear()
            self._queued_samples = 0

    async def _until_due(self) -> None:
        """Wait until ``max_samples`` samples are queued or the oldest request waited ``max_wait``."""
        loop = asyncio.get_running_loop()
        deadline = self._queue[0].since + self.max_wait
        while self._queued_samples < self.max_samples and deadline > loop.time():
            self._grown.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._grown.wait()
            except TimeoutError:
                return

    def _take(self) -> list[_Queued]:
        """The oldest queued requests, as many as fit in ``max_samples`` samples (at least one)."""
        batch = [self._queue.popleft()]
        samples = len(batch[0].decoded.t)
        while self._queue and samples + len(self._queue[0].decoded.t) <= self.max_samples:
            batch.append(self._queue.popleft())
            samples += len(batch[-1].decoded.t)
        self._queued_samples -= samples
        return batch

    def _flush(self, batch: list[_Queued]) -> None:
        try:
            self._score([queued.decoded for queued in batch])
        except Exception:
            log.exception("scoring %d remote-write request(s) failed; answering 500", len(batch))
            self._settle(batch, WriteFailed("scoring failed (see the service log); send again", 500))
        else:
            self._settle(batch, None)

    @staticmethod
    def _settle(batch: list[_Queued], error: WriteFailed | None) -> None:
        for queued in batch:
            if queued.scored.done():  # its request was cancelled (client gone)
                continue
            if error is None:
                queued.scored.set_result(None)
            else:
                queued.scored.set_exception(error)


class Detection:
    """Runs every configured detector; see the module docstring.

    ``reader`` is built from the settings unless given; ``clock`` is wall time.
    """

    def __init__(
        self,
        settings: ServiceSettings,
        store: Store,
        reader: PrometheusReader | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        prometheus = settings.prometheus
        self.reader = reader or PrometheusReader(
            prometheus.url, prometheus.headers, prometheus.timeout, http=prometheus
        )
        self.runtimes = {
            spec.name: DetectorRuntime(
                spec,
                clock,
                self._links_for(spec),
                settings.history_points,
                settings.history_series,
                checkpoint_interval=settings.checkpoint_interval,
            )
            for spec in settings.detectors
        }
        self.metrics = SelfMetrics(lambda: self.runtimes.values(), settings.outputs.metrics)
        #: Scores and bands by remote_write (outputs.remote_write); its ``run`` is a service task.
        self.score_writer: ScoreWriter | None = None
        if settings.outputs.remote_write is not None:
            self.score_writer = ScoreWriter(settings.outputs.remote_write, self.metrics)
            for runtime in self.runtimes.values():
                runtime.outputs.append(self.score_writer.add)
        self.evaluated: set[str] = set()
        self.restored = False
        self.silences = SilenceBook(store, [rule.rule() for rule in settings.silences])
        self.outbox = Outbox(
            connect(settings.store), build_sinks(settings.sinks, replica=settings.replica), clock=clock
        )
        self._recent: deque[AlertEvent] = deque(maxlen=500)
        self._writes = WriteBatcher(
            self.score_remote_write, settings.remote_write.batch_samples, settings.remote_write.batch_wait
        )
        self._warned_other_shard = False

    def _links_for(self, spec: DetectorSpec) -> Callable[[Sequence[SeriesFinding]], dict[str, str]]:
        """Links back for an alert: a Prometheus graph of the top series, and its page here."""
        prometheus = self.settings.prometheus.url.rstrip("/")
        service = self.settings.external_url.rstrip("/")

        def links(findings: Sequence[SeriesFinding]) -> dict[str, str]:
            top = findings[0]
            # A series key is a valid PromQL selector when it has a metric name.
            expr = top.key if top.labels.get("__name__") else (spec.query or top.key)
            graph = urlencode({"g0.expr": expr, "g0.tab": "0", "g0.range_input": "1h"})
            return {
                "graph": f"{prometheus}/graph?{graph}",
                "series": f"{service}/series/{series_id(spec.name, top.key)}",
            }

        return links

    # --- alerts ----------------------------------------------------------------------------

    def publish(self, events: list[AlertEvent]) -> None:
        """Write events to the outbox (durably, before any delivery) and keep them for the page."""
        for event in events:
            try:
                self.outbox.enqueue(event)
            except Exception:
                self.metrics.store_errors.labels("outbox").inc()
                log.exception("could not store alert event %s/%d", event.incident_id, event.sequence)
            self._recent.appendleft(event)
            self.metrics.alerts.labels(event.detector, event.change).inc()
            log.info("alert %s %s: %s", event.change, event.incident_id, event.summary)

    def recent_alerts(self, limit: int) -> list[AlertEvent]:
        """The newest ``limit`` alert events, newest first."""
        return list(itertools.islice(self._recent, limit))

    def find_incident(self, incident_id: str) -> AlertEvent | None:
        """The latest event of an incident still in memory."""
        return next((e for e in self._recent if e.incident_id == incident_id), None)

    def feedback(self, incident_id: str, verdict: str, by: str) -> AlertEvent:
        """Mark an incident a false positive, a real incident or a new normal; ``by`` is who said so.

        See :meth:`Engine.mark_false_positive` and :meth:`Engine.mark_incident`.
        A confirmed incident also becomes a maintenance window over its series
        from its start until an hour from now, so it is not learned as normal.
        A new normal is adopted at once and the incident resolves, saying so.
        """
        event = self.find_incident(incident_id)
        if event is None:
            raise KeyError(incident_id)
        runtime = self.runtimes[event.detector]
        if verdict == "new_normal":
            self.publish(runtime.accept_new_normal(incident_id, f"accepted as the new normal by {by}"))
        for finding in event.findings:
            row = runtime.engine.series.get(finding.key)
            if row is None:
                continue
            if verdict == "false_positive":
                runtime.engine.mark_false_positive(np.array([row]), finding.direction)
            elif verdict == "incident":
                runtime.engine.mark_incident(np.array([row]), finding.direction)
        if verdict == "incident":
            matchers = [Matcher(name, "=", value) for name, value in event.top.labels.items()]
            self.silences.add(
                MaintenanceWindow(
                    matchers,
                    event.opened_at,
                    self.clock() + 3600.0,
                    comment=f"confirmed incident {incident_id}",
                    created_by=by,
                )
            )
        self.store.record_feedback(incident_id, verdict, self.clock(), event.to_dict(), by)
        return event

    @property
    def pull_detectors(self) -> list[DetectorRuntime]:
        return [r for r in self.runtimes.values() if r.spec.source == "pull"]

    @property
    def push_detectors(self) -> list[DetectorRuntime]:
        return [r for r in self.runtimes.values() if r.spec.source == "remote_write"]

    @property
    def ready(self) -> bool:
        """State restored and every pull detector evaluated at least once."""
        return self.restored and all(r.name in self.evaluated for r in self.pull_detectors)

    # --- state -----------------------------------------------------------------------------

    def restore(self) -> None:
        """Load each detector's checkpoint (a detector whose settings changed starts cold)."""
        for runtime in self.runtimes.values():
            try:
                checkpoint = self.store.load_checkpoint(runtime.name)
            except (StoreError, OSError, ValueError) as error:
                self.metrics.store_errors.labels("restore").inc()
                log.error("detector %s: cannot read its checkpoint (%s); starting cold", runtime.name, error)
                continue
            if checkpoint is not None and runtime.restore(checkpoint):
                # Events sent after the checkpoint keep their sequence numbers; new ones follow them.
                tracker = runtime.tracker
                tracker.continue_sequences(self.outbox.last_sequences(tracker.open_incidents))
                log.info("detector %s: restored %d series", runtime.name, len(runtime.engine.series.active()))
        self.restored = True

    async def checkpoint(self) -> None:
        """Save every detector's state in one transaction (arrays copied on this thread)."""
        started = time.perf_counter()
        checkpoints = [runtime.checkpoint() for runtime in self.runtimes.values()]
        try:
            size = await asyncio.to_thread(self.store.save_checkpoints, checkpoints)
        except Exception:
            self.metrics.store_errors.labels("checkpoint").inc()
            log.exception("checkpoint failed; will retry at the next interval")
            return
        self.metrics.checkpoint_time.set(self.clock())
        self.metrics.checkpoint_seconds.set(time.perf_counter() - started)
        self.metrics.checkpoint_bytes.set(size)

    async def checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.checkpoint_interval)
            await self.checkpoint()
            for runtime in self.runtimes.values():
                self.publish(runtime.expire())
            self.metrics.observe_series(self.runtimes.values())
            _give_back_free_memory()

    # --- pull ------------------------------------------------------------------------------

    async def evaluate(self, runtime: DetectorRuntime) -> None:
        """One evaluation: catch up a gap, warm-start new series, then score the instant query."""
        query = runtime.spec.query
        assert query is not None  # a pull detector always has one (settings validation)
        step = runtime.spec.interval
        started = time.perf_counter()
        samples: list[Sample] = await asyncio.to_thread(self.reader.instant, query)
        now = samples[0].t if samples else self.clock()
        shard = self.settings.shard
        samples = [sample for sample in samples if shard.owns(sample.labels)]
        if runtime.last_eval is not None and now - runtime.last_eval > 1.5 * step:
            await self._replay(runtime, runtime.last_eval + step, now - step / 2, live=True, only_known=True)
        keys = [series_key(sample.labels) for sample in samples]
        if runtime.spec.lookback > 0 and any(not runtime.known(key) for key in keys):
            new = {key for key in keys if not runtime.known(key)}
            await self._replay(runtime, now - runtime.spec.lookback, now - step / 2, live=False, restrict=new)
        t = np.array([sample.t for sample in samples])
        x = np.array([sample.value for sample in samples])
        self.publish(runtime.ingest(keys, t, x, rules=self.silences.rules))
        runtime.last_eval = now
        self.evaluated.add(runtime.name)
        self._count(runtime, "pull", t)
        self.metrics.evaluation.labels(runtime.name).observe(time.perf_counter() - started)
        if len(t):
            self.metrics.lag.labels(runtime.name).set(self.clock() - float(t.max()))

    async def _replay(
        self,
        runtime: DetectorRuntime,
        start: float,
        end: float,
        live: bool,
        only_known: bool = False,
        restrict: set[str] | None = None,
    ) -> None:
        """Range-query [start, end] and feed it, for known series only or for ``restrict``."""
        if end <= start:
            return
        query = runtime.spec.query
        assert query is not None
        series = await asyncio.to_thread(self.reader.range, query, start, end, runtime.spec.interval)
        series = [item for item in series if self.settings.shard.owns(item.labels)]
        keys, t, x = _flatten(_without_repeats(series) if live else series)
        keep = [
            i
            for i, key in enumerate(keys)
            if (not only_known or runtime.known(key)) and (restrict is None or key in restrict)
        ]
        if keep:
            index = np.array(keep)
            events = runtime.ingest(
                [keys[i] for i in keep], t[index], x[index], live=live, rules=self.silences.rules
            )
            self.publish(events)
            self._count(runtime, "catch_up" if live else "history", t[index])
            log.info(
                "detector %s: replayed %d points (%s)",
                runtime.name,
                len(keep),
                "catch-up" if live else "warm start",
            )

    async def pull_loop(self, runtime: DetectorRuntime) -> None:
        """Evaluate every ``interval`` forever; a failed query is logged, counted and retried.

        While Prometheus is unreachable nothing is scored (a gap is no decision) and
        ``anomaly_detector_source_up`` is 0; the first evaluation after it returns
        replays the missed interval (see :meth:`evaluate`).
        """
        while True:
            started = self.clock()
            await self.pull_once(runtime)
            delay = runtime.spec.interval - (self.clock() - started)
            await asyncio.sleep(max(delay, 0.0))

    async def pull_once(self, runtime: DetectorRuntime) -> bool:
        """One turn of :meth:`pull_loop`: evaluate, or log and count the failed query; True if it read."""
        up = self.metrics.source_up.labels(runtime.name)
        try:
            await self.evaluate(runtime)
        except PrometheusError as error:
            up.set(0)
            self.metrics.source_errors.labels(runtime.name).inc()
            log.warning("detector %s: %s", runtime.name, error)
            return False
        up.set(1)
        return True

    # --- push ------------------------------------------------------------------------------

    async def write(self, decoded: DecodedWrite) -> None:
        """Score one remote-write request, with those queued beside it; returns once it is scored.

        Raises :class:`WriteFailed` if it was not (scoring raised, or the service stopped).
        """
        if len(decoded.t):
            await self._writes.submit(decoded)

    def score_remote_write(self, batch: Sequence[DecodedWrite]) -> None:
        """Score decoded requests with every detector whose match selects their series: one call each."""
        decoded = DecodedWrite.concat(batch)
        self.metrics.write_batches.observe(len(decoded.t))
        matched = np.zeros(len(decoded.t), dtype=bool)
        elsewhere = np.zeros(len(decoded.t), dtype=bool)
        for runtime in self.push_detectors:
            rows = self._rows(runtime, decoded)
            matched |= (rows != RowCache.NOT_ACCEPTED) & (rows != _OTHER_SHARD)
            elsewhere |= rows == _OTHER_SHARD
            self._score_rows(runtime, decoded, rows)
        reasons: dict[str, int] = defaultdict(int)
        reasons["unmatched"] = int((~matched & ~elsewhere).sum())
        reasons["other_shard"] = int((~matched & elsewhere).sum())
        reasons["stale_marker"] = int((matched & decoded.stale).sum())
        if reasons["other_shard"] and not self._warned_other_shard:
            self._warned_other_shard = True
            shard = self.settings.shard
            log.warning(
                "received series of other shards (counted in anomaly_detector_samples_dropped_total"
                '{reason="other_shard"}): Prometheus\'s write_relabel_configs should keep only '
                "hashmod(%s) modulo %d == %d for this queue",
                ", ".join(shard.labels),
                shard.count,
                shard.index,
            )
        for reason, count in reasons.items():
            if count:
                self.metrics.dropped.labels(reason).inc(count)

    def _score_rows(self, runtime: DetectorRuntime, decoded: DecodedWrite, rows: np.ndarray) -> None:
        """Score the samples with a row; then end the series whose last sample is a stale marker."""
        use = np.nonzero((rows >= 0) & ~decoded.stale)[0]
        if len(use):
            t = decoded.t[use]
            self.publish(runtime.ingest_rows(rows[use], t, decoded.x[use], rules=self.silences.rules))
            self._count(runtime, "remote_write", t)
            self.metrics.lag.labels(runtime.name).set(self.clock() - float(t.max()))
        if (decoded.stale & (rows >= 0)).any():
            tracked = np.nonzero(rows >= 0)[0]
            last = tracked[last_positions(rows[tracked])]
            runtime.end(decoded.keys[i] for i in last[decoded.stale[last]].tolist())

    def _count(self, runtime: DetectorRuntime, source: str, t: np.ndarray) -> None:
        """Count scored samples, and those that came later than the detector's ``late_after`` (live only)."""
        self.metrics.ingested.labels(runtime.name, source).inc(len(t))
        if source != "history":
            late = int(np.count_nonzero(t < self.clock() - runtime.tracker.late_after))
            if late:
                self.metrics.late.labels(runtime.name).inc(late)

    def _rows(self, runtime: DetectorRuntime, decoded: DecodedWrite) -> np.ndarray:
        """Each sample's engine row in ``runtime``: from its row cache, else looked up and cached.

        ``RowCache.NOT_ACCEPTED`` where the detector does not take the series,
        ``_OTHER_SHARD`` where it would but another shard owns the series,
        ``_UNTRACKED`` where it does but only stale markers of it ever came.
        New series with a value get their rows here.  The shard is decided
        once per series, on a cache miss, like the detector's match.
        """
        rows, known = runtime.rows.lookup(decoded.slots, decoded.stamps)
        if known.all():
            return rows
        miss = np.nonzero(~known)[0]
        keys = [decoded.keys[i] for i in miss.tolist()]
        shard = self.settings.shard
        accepted = {key: runtime.accepts(key, decoded.labels[key]) for key in dict.fromkeys(keys)}
        ours = {key: ok and shard.owns(decoded.labels[key]) for key, ok in accepted.items()}
        stale = decoded.stale[miss].tolist()
        starting = [key for key, ended in zip(keys, stale, strict=True) if ours[key] and not ended]
        if starting:
            runtime.register(list(dict.fromkeys(starting)))
        table = runtime.engine.series
        found = {
            key: table.get(key) if ours[key] else _OTHER_SHARD if ok else RowCache.NOT_ACCEPTED
            for key, ok in accepted.items()
        }
        rows[miss] = [_UNTRACKED if found[key] is None else found[key] for key in keys]
        cached = miss[rows[miss] != _UNTRACKED]
        runtime.rows.store(decoded.slots[cached], decoded.stamps[cached], rows[cached])
        return rows

"""Scores, bands and alert state leave by Prometheus remote_write (``outputs.remote_write``).

``/metrics`` builds every series' lines at each scrape; at a million series a
scrape would be ~500 MB and outlast the interval.  Pushing instead scales with
the samples scored: every live scored sample becomes up to five samples, the
:data:`~service.settings.SCORE_METRICS`, with the series' labels as
``/metrics`` writes them (:func:`~service.exposition.exported_labels`) plus the
output's own ``labels``, at the scored sample's own timestamp.  That is the
decoder of :mod:`service.remote_write` in reverse, remote write 1.0
(``prometheus.WriteRequest``, snappy block format).

The path, top to bottom::

    DetectorRuntime.ingest_rows (live samples only)
      → ScoreWriter.add         on the event loop: label bytes by row, values; queued
      → queue                   at most ``queue_samples``; full: the oldest dropped, counted
      → ScoreWriter.run         up to ``max_samples_per_send`` encoded in a worker thread,
                                POSTed; 5xx / 429 / network error: retried with backoff,
                                other 4xx: dropped, counted

Replayed history (a warm start) is not sent: Prometheus refuses samples older
than its head block, and one refused sample fails its whole request.  For the
same reason a series' samples are sent in time order, each timestamp once.

How it stays cheap
------------------
Each series' label set is serialised once, as the protobuf ``Label`` fields
of everything but ``__name__`` (:class:`LabelBytes`, about 100 bytes a
series, built on first send and rebuilt when an engine row is reused).  A
request is then joined from byte strings: per output sample a length header,
the label fields with the metric's ``__name__`` field spliced in where it sorts,
and an 18-byte sample made for the whole batch by numpy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cramjam
import httpx
import numpy as np

from detector.engine import ScoredBatch
from service.http_config import httpx_arguments
from service.settings import SCORE_METRICS, RemoteWriteOutputSettings

if TYPE_CHECKING:
    from service.exposition import SelfMetrics
    from service.runtime import DetectorRuntime

log = logging.getLogger(__name__)

HEADERS = {
    "Content-Type": "application/x-protobuf",
    "Content-Encoding": "snappy",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
    "User-Agent": "incident-anomaly-detector",
}

#: Which latest-result column each output metric carries, and whether it is a band
#: (left out while the series warms up, as on /metrics).
_COLUMNS = {
    "anomaly_score": ("anomaly_score", False),
    "anomaly_expected": ("expected", True),
    "anomaly_expected_lower": ("lower", True),
    "anomaly_expected_upper": ("upper", True),
    "anomaly_alert_firing": ("alert", False),
}
assert tuple(_COLUMNS) == SCORE_METRICS


def varint(n: int) -> bytes:
    """Protobuf's base-128 varint.

    >>> varint(1).hex(), varint(300).hex()
    ('01', 'ac02')
    """
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def label_field(name: str, value: str) -> bytes:
    """One ``Label`` as a field of ``TimeSeries`` (field 1): name is field 1, value field 2."""
    name_bytes, value_bytes = name.encode(), value.encode()
    inner = b"\x0a" + varint(len(name_bytes)) + name_bytes + b"\x12" + varint(len(value_bytes)) + value_bytes
    return b"\x0a" + varint(len(inner)) + inner


def label_bytes(labels: dict[str, str]) -> tuple[bytes, int]:
    """A label set (without ``__name__``) as ``Label`` fields sorted by name, and where
    ``__name__`` sorts among them (a byte offset)."""
    before = b"".join(label_field(n, labels[n]) for n in sorted(labels) if n < "__name__")
    after = b"".join(label_field(n, labels[n]) for n in sorted(labels) if n > "__name__")
    return before + after, len(before)


def _samples(t_ms: np.ndarray, values: np.ndarray) -> tuple[bytes, int] | None:
    """Each sample as a ``samples`` field of ``TimeSeries``, all the same width: the bytes and width.

    None when the timestamps' varints differ in length (never for times between 1971 and 2109).
    """
    widths = {len(varint(int(t_ms.min()))), len(varint(int(t_ms.max())))}
    if len(widths) != 1:
        return None
    width = widths.pop()
    stamp = t_ms.astype(np.uint64)
    varints = np.empty((len(t_ms), width), dtype=np.uint8)
    for i in range(width):
        byte = (stamp >> np.uint64(7 * i)) & np.uint64(0x7F)
        varints[:, i] = byte | (np.uint64(0x80) if i < width - 1 else np.uint64(0))
    size = 1 + 8 + 1 + width
    out = np.empty((len(t_ms), 2 + size), dtype=np.uint8)
    out[:, 0] = 0x12  # TimeSeries.samples, length-delimited
    out[:, 1] = size
    out[:, 2] = 0x09  # Sample.value, fixed64
    out[:, 3:11] = values.astype("<f8").view(np.uint8).reshape(-1, 8)
    out[:, 11] = 0x10  # Sample.timestamp, varint
    out[:, 12:] = varints
    return out.tobytes(), 2 + size


@dataclass(frozen=True)
class Chunk:
    """Scored samples of one detector, ready to encode: one column per sample, one row per metric.

    ``labels[i]`` and ``splits[i]`` are sample ``i``'s series' :func:`label_bytes`;
    ``values`` is NaN where a metric is not sent for that sample.
    """

    labels: list[bytes]
    splits: list[int]
    t_ms: np.ndarray
    values: np.ndarray  # (metrics, samples)
    metrics: tuple[str, ...]

    @property
    def size(self) -> int:
        return int(np.count_nonzero(~np.isnan(self.values)))

    def split(self, samples: int) -> tuple[Chunk, Chunk | None]:
        """The first columns holding at most ``samples`` output samples (at least one), and the rest."""
        per_column = np.count_nonzero(~np.isnan(self.values), axis=0)
        cut = max(1, int(np.searchsorted(np.cumsum(per_column), samples, side="right")))
        if cut >= len(self.t_ms):
            return self, None

        def part(s: slice) -> Chunk:
            return Chunk(self.labels[s], self.splits[s], self.t_ms[s], self.values[:, s], self.metrics)

        return part(slice(0, cut)), part(slice(cut, None))

    def encode(self) -> bytes:
        """The chunk as a snappy-compressed ``WriteRequest``."""
        names = [label_field("__name__", metric) for metric in self.metrics]
        count = len(self.metrics)
        fixed = _samples(np.repeat(self.t_ms, count), np.nan_to_num(self.values.T).ravel())
        pieces: list[bytes] = []
        headers: dict[int, bytes] = {}
        for i, (labels, split) in enumerate(zip(self.labels, self.splits, strict=True)):
            for m, name in enumerate(names):
                value = self.values[m, i]
                if value != value:  # NaN: not sent
                    continue
                if fixed is None:
                    sample = _samples(self.t_ms[i : i + 1], np.array([value]))
                    assert sample is not None
                    blob, width = sample
                else:
                    blob, width = fixed
                    start = (i * count + m) * width
                    blob = blob[start : start + width]
                size = len(labels) + len(name) + width
                header = headers.get(size)
                if header is None:
                    header = headers[size] = b"\x0a" + varint(size)
                if split:
                    pieces += (header, labels[:split], name, labels[split:], blob)
                else:
                    pieces += (header, name, labels, blob)
        return bytes(cramjam.snappy.compress_raw(b"".join(pieces)))


class LabelBytes:
    """One detector's output label sets, serialised, by engine row (see the module docstring)."""

    def __init__(self, extra: dict[str, str]) -> None:
        self._extra = extra
        self._bytes: list[bytes] = []
        self._splits = np.zeros(0, dtype=np.int32)
        self._stamps = np.zeros(0, dtype=np.uint64)  # the series id each row's entry was built for
        #: Newest timestamp sent per row: a series' samples go out in order, each time once.
        self.sent = np.zeros(0, dtype=np.float64)

    def lookup(self, runtime: DetectorRuntime, rows: np.ndarray) -> tuple[list[bytes], list[int]]:
        from service.exposition import exported_labels

        if len(rows) and int(rows.max()) >= len(self._bytes):
            more = max(int(rows.max()) + 1, len(self._bytes) + len(self._bytes) // 4) - len(self._bytes)
            self._bytes.extend([b""] * more)
            self._splits = np.concatenate([self._splits, np.zeros(more, dtype=np.int32)])
            self._stamps = np.concatenate([self._stamps, np.zeros(more, dtype=np.uint64)])
            self.sent = np.concatenate([self.sent, np.full(more, -np.inf)])
        stamps = runtime.ids.of_rows(rows)
        stale = np.unique(rows[self._stamps[rows] != stamps])
        if len(stale):
            keys = runtime.engine.series.keys
            for row in stale.tolist():
                labels = {**self._extra, **exported_labels(runtime.name, runtime.labels[keys[row]])}
                self._bytes[row], self._splits[row] = label_bytes(labels)
            self._stamps[stale] = runtime.ids.of_rows(stale)
            self.sent[stale] = -np.inf
        found = [self._bytes[row] for row in rows.tolist()]
        return found, self._splits[rows].tolist()


class ScoreWriter:
    """The ``outputs.remote_write`` sender: see the module docstring.

    ``add`` runs on the event loop (it reads the runtime); ``run`` is the
    service's sending task.  ``transport`` replaces the network in tests.
    """

    def __init__(
        self,
        config: RemoteWriteOutputSettings,
        metrics: SelfMetrics,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._names = tuple(config.metrics)
        self._labels: dict[str, LabelBytes] = {}
        self._queue: deque[Chunk] = deque()
        self.queued = 0
        self._grown = asyncio.Event()
        self._transport = transport
        self._last_warning = 0.0

    def add(self, runtime: DetectorRuntime, rows: np.ndarray, t: np.ndarray, scored: ScoredBatch) -> None:
        """Queue the output samples of these scored samples (a detector's live batch)."""
        table = self._labels.setdefault(runtime.name, LabelBytes(self.config.labels))
        labels, splits = table.lookup(runtime, rows)
        # Each series' samples in time order, each time once: newer than what was sent.
        newer = t > table.sent[rows]
        if not newer.all():
            keep = np.flatnonzero(newer)
            rows, t, scored = rows[keep], t[keep], scored.take(keep)
            labels, splits = [labels[i] for i in keep.tolist()], [splits[i] for i in keep.tolist()]
        if not len(rows):
            return
        np.maximum.at(table.sent, rows, t)
        values = np.empty((len(self._names), len(rows)))
        warming = np.asarray(scored.warming, dtype=bool)
        for m, name in enumerate(self._names):
            column, is_band = _COLUMNS[name]
            values[m] = np.asarray(getattr(scored, column), dtype=np.float64)
            if is_band:
                values[m, warming] = np.nan
        chunk = Chunk(labels, splits, np.round(t * 1000.0).astype(np.int64), values, self._names)
        self._queue.append(chunk)
        self.queued += chunk.size
        while self.queued > self.config.queue_samples and len(self._queue) > 1:
            dropped = self._queue.popleft().size
            self.queued -= dropped
            self.metrics.output_dropped.labels("queue_full").inc(dropped)
        self.metrics.output_queue.set(self.queued)
        self._grown.set()

    def _take(self) -> Chunk | None:
        """The oldest queued output samples, up to ``max_samples_per_send``."""
        if not self._queue:
            return None
        first, rest = self._queue.popleft().split(self.config.max_samples_per_send)
        if rest is not None:
            self._queue.appendleft(rest)
        self.queued -= first.size
        self.metrics.output_queue.set(self.queued)
        return first

    async def run(self) -> None:
        """Send forever: one request at a time, each retried until it is accepted or refused."""
        arguments = httpx_arguments(self.config)
        headers = {**self.config.headers, **HEADERS, **arguments.pop("headers")}
        async with httpx.AsyncClient(
            headers=headers, timeout=self.config.timeout, transport=self._transport, **arguments
        ) as client:
            while True:
                chunk = self._take()
                if chunk is None:
                    self._grown.clear()
                    await self._grown.wait()
                    continue
                body = await asyncio.to_thread(chunk.encode)
                await self._send(client, body, chunk.size)

    async def _send(self, client: httpx.AsyncClient, body: bytes, samples: int) -> None:
        backoff = self.config.min_backoff
        while True:
            try:
                response = await client.post(self.config.url, content=body)
            except httpx.HTTPError as error:
                problem = f"{type(error).__name__}: {error}"
            else:
                if response.is_success:
                    self.metrics.output_sent.inc(samples)
                    return
                problem = f"{response.status_code} {response.text[:300].strip()}"
                if response.status_code != 429 and response.status_code < 500:
                    self.metrics.output_dropped.labels("rejected").inc(samples)
                    self._warn(f"the receiver refused {samples} samples ({problem}); they are dropped")
                    return
            self.metrics.output_failures.inc()
            self._warn(f"sending {samples} samples failed ({problem}); retrying in {backoff:g}s")
            await asyncio.sleep(backoff)
            backoff = min(2 * backoff, self.config.max_backoff)

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 60.0:  # the counters have every case; the log a sample
            self._last_warning = now
            log.warning("outputs.remote_write %s: %s", self.config.url, message)


__all__ = ["HEADERS", "Chunk", "LabelBytes", "ScoreWriter", "label_bytes", "label_field", "varint"]

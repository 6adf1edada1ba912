"""Decode Prometheus remote-write requests into columns of samples.

Prometheus pushes snappy-compressed (block format) protobuf: remote write 1.0
(``prometheus.WriteRequest``) or 2.0 (``io.prometheus.write.v2.Request``).
:func:`decode_write_request` turns one request body into a :class:`DecodedWrite`
(a series key per sample, and timestamp, value and stale-marker columns) ready for
``engine.process(engine.register(decoded.keys), decoded.t, decoded.x)``, after
:func:`read_body` has read the body no further than the size limit.  A
:class:`RowCache` per detector remembers the engine row of each series the
decoder's :class:`SeriesCache` knows, so steady-state requests map samples to
rows with two numpy look-ups instead of a dict look-up per sample.

Errors
------
::

    ValueError
    └── RemoteWriteError    .status: 400 bad body · 413 too large · 415 unsupported type or encoding

A series whose labels take more than :data:`MAX_SERIES_LABEL_CHARS` characters
in all is a bad body: the service keeps every series' labels for as long as it
watches it, in memory, in checkpoints and on ``/metrics``.

How it stays fast
-----------------
From Python, each access to a field of a protobuf sub-message costs 0.2–0.5 µs.
A loop over series and samples, with series keys cached by label tuple,
decodes ~0.26 M samples/s on one core of the development machine; this module
~0.8 M/s (``benchmarks/remote_write.py``).  The bytes are read through
wire-compatible *views* (:mod:`service.proto`) that protobuf parses in C:

1. **Identity.**  A view keeps each series' labels as raw bytes and turns its
   samples and histograms into empty markers.  Re-serialised and split per
   series, that gives one short byte string per series that is the same from
   request to request as long as the series and its number of samples are.  A
   bounded :class:`SeriesCache` maps it to the series key, labels and counts,
   so labels are decoded and checked only when a series is new.  (In 2.0 labels
   are indices into a per-request symbol table, so the cache is keyed on the
   label strings instead, read one series at a time.)
2. **Columns.**  Another view declares ``timeseries`` and ``samples`` as single
   messages; protobuf merges repeated occurrences of a single message, so all
   samples of all series land in one message whose repeated ``value`` and
   ``timestamp`` fields are the columns, in wire order.
3. **Zeros.**  proto3 leaves out fields equal to zero (a value of 0.0, a
   timestamp of 0), so a column can be shorter than the number of samples.  The
   samples are re-serialised canonically first, where a sample's size tells
   which fields it carries (16 bytes: both, 9: value, 7: timestamp, 0: neither,
   for timestamps from 1971 to 2109), checked against the column lengths.
   Anything else is read one Sample message at a time.
"""

from __future__ import annotations

import itertools
import operator
import re
import sys
from collections.abc import AsyncIterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, NamedTuple

import cramjam
import numpy as np
from google.protobuf.message import DecodeError

from detector.labels import parse_series_key, series_key
from service.proto import Field, build_messages

#: The bits of Prometheus's stale marker: a NaN meaning "this series ended".
STALE_NAN_BITS = 0x7FF0000000000002
MEDIA_TYPE = "application/x-protobuf"
V1_MESSAGE = "prometheus.WriteRequest"
V2_MESSAGE = "io.prometheus.write.v2.Request"
SUPPORTED_CONTENT_TYPES = (
    f"{MEDIA_TYPE} or {MEDIA_TYPE};proto={V1_MESSAGE} (remote write 1.0), "
    f"{MEDIA_TYPE};proto={V2_MESSAGE} (remote write 2.0)"
)

#: The labels of one series, names and values together, may take this many characters
#: (a node-exporter series takes about 100; Mimir's default limit is 2,048 per value).
MAX_SERIES_LABEL_CHARS = 16_384
#: Samples of one series one request may hold: a series' samples are scored one after another
#: (about 0.2 ms each here, on the event loop), so a deeper request would stall the service.
#: Prometheus never sends more: its ``max_samples_per_send`` defaults to 2,000 for all series.
MAX_SAMPLES_PER_SERIES = 2_000

# series_key writes ``name{label="value",...}``; parse_series_key reads back only these.
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_COMPRESSED_MAGIC = {
    b"\x1f\x8b": "gzip-compressed",
    b"\x28\xb5\x2f\xfd": "zstd-compressed",
    b"\xff\x06\x00\x00sNaPpY": "in the snappy framed (stream) format",
}


class RemoteWriteError(ValueError):
    """Bad input from the client; the HTTP layer answers with :attr:`status` and the message.

    ``status`` is 400 for a body that cannot be decoded or breaks the protocol,
    413 for one larger than allowed and 415 for an unsupported Content-Type or
    Content-Encoding.

    Examples
    --------
    >>> error = RemoteWriteError("body is empty", 400)
    >>> error.status, str(error), isinstance(error, ValueError)
    (400, 'body is empty', True)
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class DecodedWrite:
    """The float samples of one remote-write request, as columns in the order sent.

    Attributes
    ----------
    keys
        One per sample: the series key, :func:`detector.labels.series_key` of its labels.
    labels
        Series key to its labels, for the series of the request.  Parsed from
        the key when asked for (the decoder keeps no labels per series: only
        new series are looked at by label).
    t
        Timestamps in float64 seconds (Prometheus sends int64 milliseconds).
    x
        Values as float64; stale markers are NaN here.
    stale
        True where the sample is Prometheus's stale marker (the NaN with bits
        ``0x7ff0000000000002``): the series ended, this is not a value.
    slots, stamps
        Per sample, its series' entry in the decoder's :class:`SeriesCache`:
        the entry's slot (reused after the entry is evicted) and its stamp
        (never reused), the look-up a :class:`RowCache` takes.
    histograms_skipped
        Native histogram samples in the request; this decoder does not read them.

    Examples
    --------
    >>> one = np.array([0])
    >>> decoded = DecodedWrite(["up{}"], {"up{}": {"__name__": "up"}}, np.array([1.5]), np.array([1.0]),
    ...                        np.array([False]), slots=one, stamps=one)
    >>> len(decoded.keys), decoded.histograms_skipped
    (1, 0)
    >>> both = DecodedWrite.concat([decoded, decoded])
    >>> both.keys, both.t.tolist(), both.histograms_skipped
    (['up{}', 'up{}'], [1.5, 1.5], 0)
    """

    keys: list[str]
    labels: Mapping[str, dict[str, str]]
    t: np.ndarray
    x: np.ndarray
    stale: np.ndarray
    slots: np.ndarray
    stamps: np.ndarray
    histograms_skipped: int = 0

    @classmethod
    def concat(cls, parts: Sequence[DecodedWrite]) -> DecodedWrite:
        """Several decoded requests as one, in order."""
        if len(parts) == 1:
            return parts[0]

        def joined(column: str) -> np.ndarray:
            return np.concatenate([getattr(part, column) for part in parts])

        keys = list(itertools.chain.from_iterable(part.keys for part in parts))
        return cls(
            keys=keys,
            labels=_KeyLabels(keys),
            t=joined("t"),
            x=joined("x"),
            stale=joined("stale"),
            slots=joined("slots"),
            stamps=joined("stamps"),
            histograms_skipped=sum(part.histograms_skipped for part in parts),
        )


class _KeyLabels(Mapping[str, dict[str, str]]):
    """The labels of a request's series, parsed from their keys when asked for.

    >>> labels = _KeyLabels(['up{job="a"}', 'up{job="a"}'])
    >>> labels['up{job="a"}'], len(labels), 'up{}' in labels
    ({'__name__': 'up', 'job': 'a'}, 1, False)
    """

    def __init__(self, keys: list[str]) -> None:
        self._keys = keys
        self._known: set[str] | None = None

    def __getitem__(self, key: str) -> dict[str, str]:
        if key not in self:
            raise KeyError(key)
        return parse_series_key(key)

    def __contains__(self, key: object) -> bool:
        if self._known is None:
            self._known = set(self._keys)
        return key in self._known

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(self._keys))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _Series(NamedTuple):
    key: str
    samples: int
    histograms: int
    slot: int = -1  # set by SeriesCache.put
    stamp: int = -1


# Per-series work runs 500 times a request: C-level getters over the cached tuples.
_KEY, _SAMPLES, _HISTOGRAMS, _SLOT, _STAMP = (operator.itemgetter(i) for i in range(5))
#: Stamps of SeriesCache entries: unique in the process, so a RowCache can't mistake
#: a new entry for an evicted one in the same slot, whichever cache it came from.
_STAMPS = itertools.count()


class SeriesCache:
    """Remembers series seen in earlier requests, so their labels are decoded once.

    Maps a series' identity as sent (its label bytes in 1.0, label strings in
    2.0, and its number of samples and histograms) to its key and labels.  Each
    entry also gets a slot, a small integer below ``max_entries`` for a
    :class:`RowCache` to index, and a stamp that tells it from earlier holders
    of the slot.  When full, the oldest eighth of the entries is dropped and
    their slots are handed to new entries.  An entry of a
    node-exporter series (5–6 labels) takes about 300 bytes besides its key
    (which the engine's series table shares), so 100,000 entries hold about
    30 MB; the service sizes its cache with ``remote_write.series_cache``.
    Safe to share between threads under the GIL.

    Parameters
    ----------
    max_entries
        How many series to remember: more than the number of series pushed,
        or the older ones keep being decoded again.

    Examples
    --------
    >>> import cramjam
    >>> from service.proto import Label, Sample, TimeSeries, WriteRequest
    >>> request = WriteRequest(timeseries=[TimeSeries(labels=[Label(name="__name__", value="up")],
    ...                                               samples=[Sample(value=1.0, timestamp=1000)])])
    >>> body = bytes(cramjam.snappy.compress_raw(request.SerializeToString()))
    >>> cache = SeriesCache(max_entries=1000)
    >>> _ = decode_write_request(body, MEDIA_TYPE, "snappy", cache=cache)
    >>> len(cache)
    1
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self.max_entries = max_entries
        self._entries: dict[object, _Series] = {}
        self._free_slots: list[int] = []
        self.get = self._entries.get

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every series."""
        self._entries.clear()
        self._free_slots.clear()

    def put(self, identity: object, series: _Series) -> _Series:
        """Remember ``series`` under ``identity`` with a slot and stamp; return the entry.

        An identity already remembered (a series sent twice in one request)
        keeps its entry.
        """
        known = self._entries.get(identity)
        if known is not None:
            return known
        if len(self._entries) >= self.max_entries:
            for old in list(islice(self._entries, max(1, self.max_entries // 8))):
                self._free_slots.append(self._entries.pop(old).slot)
        slot = self._free_slots.pop() if self._free_slots else len(self._entries)
        entry = series._replace(slot=slot, stamp=next(_STAMPS))
        self._entries[identity] = entry
        return entry


_SHARED_CACHE = SeriesCache()


class RowCache:
    """One detector's engine row for each :class:`SeriesCache` entry, by slot.

    Holds, per slot, the stamp of the entry it was filled for and that entry's
    row in the detector's engine, or :attr:`NOT_ACCEPTED` when the detector
    does not take the series.  A look-up is a hit only where the stamps match,
    so an entry evicted from the series cache, whose slot went to another
    series, is a miss, never a wrong row.  The owner must call :meth:`forget`
    with rows its engine released (a released row may go to another series)
    and :meth:`clear` when it replaces or reloads its engine.

    Examples
    --------
    >>> rows = RowCache()
    >>> rows.store(np.array([0, 2]), np.array([10, 11]), np.array([7, RowCache.NOT_ACCEPTED]))
    >>> found, hit = rows.lookup(np.array([2, 0, 1]), np.array([11, 10, 12]))
    >>> found[hit].tolist(), hit.tolist()
    ([-1, 7], [True, True, False])
    >>> rows.forget(np.array([7]))
    >>> rows.lookup(np.array([0]), np.array([10]))[1].tolist()
    [False]
    """

    #: The row of a series the detector does not take.
    NOT_ACCEPTED = -1

    def __init__(self) -> None:
        self._rows = np.zeros(0, dtype=np.int64)
        self._stamps = np.zeros(0, dtype=np.int64)

    def lookup(self, slots: np.ndarray, stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows of these samples' series, and where they were known (elsewhere the row is garbage)."""
        self._fit(slots)
        return self._rows[slots], self._stamps[slots] == stamps

    def store(self, slots: np.ndarray, stamps: np.ndarray, rows: np.ndarray) -> None:
        """Remember the rows (or :attr:`NOT_ACCEPTED`) of these entries."""
        self._fit(slots)
        self._rows[slots] = rows
        self._stamps[slots] = stamps

    def forget(self, rows: np.ndarray) -> None:
        """The engine released these rows: entries pointing at them are no longer known."""
        if len(rows):
            self._stamps[np.isin(self._rows, rows)] = -1

    def clear(self) -> None:
        """Know nothing (the engine was replaced or reloaded)."""
        self._stamps[:] = -1

    def _fit(self, slots: np.ndarray) -> None:
        needed = int(slots.max()) + 1 if len(slots) else 0
        if needed > len(self._rows):
            more = max(needed, 2 * len(self._rows)) - len(self._rows)
            self._rows = np.concatenate([self._rows, np.full(more, self.NOT_ACCEPTED)])
            self._stamps = np.concatenate([self._stamps, np.full(more, -1)])


@dataclass(frozen=True)
class _Views:
    """Wire-compatible views of one protocol's request message (see the module docstring)."""

    message: str
    identity: Any  # 1.0: labels as sent; both: samples and histograms as empty markers
    identity_series: Any
    series_bytes: Any  # each series as bytes
    samples: Any  # only the samples, parsed
    columns: Any  # all samples merged into value and timestamp columns
    sample_bytes: Any  # all samples, each as bytes
    all_samples: Any  # all samples, as messages in one list
    label: Any = None  # 1.0: Label with bytes fields, so bad UTF-8 gets a message naming the series
    references: Any = None  # 2.0: the symbols and each series' label references


def _views(
    message: str,
    version: str,
    series: int,
    histograms: int,
    labels: list[Field],
    extra: dict[str, list[Field]],
) -> _Views:
    sample = [Field("value", 1, "double"), Field("timestamp", 2, "int64")]
    classes = build_messages(
        f"service/remote_write_{version}.proto",
        f"service.remote_write.{version}",
        {
            "Empty": [],
            "Sample": sample,
            "IdentitySeries": [
                *labels,
                Field("samples", 2, "Empty", repeated=True),
                Field("histograms", histograms, "Empty", repeated=True),
            ],
            "IdentityRequest": [Field("timeseries", series, "IdentitySeries", repeated=True)],
            "SeriesBytes": [Field("timeseries", series, "bytes", repeated=True)],
            "SampleSeries": [Field("samples", 2, "Sample", repeated=True)],
            "SampleRequest": [Field("timeseries", series, "SampleSeries", repeated=True)],
            # Single (not repeated) fields: protobuf merges every occurrence into one message.
            "Columns": [Field(f.name, f.number, f.type, repeated=True) for f in sample],
            "ColumnSeries": [Field("samples", 2, "Columns")],
            "AllColumns": [Field("timeseries", series, "ColumnSeries")],
            "SampleBytesSeries": [Field("samples", 2, "bytes", repeated=True)],
            "AllSampleBytes": [Field("timeseries", series, "SampleBytesSeries")],
            "AllSamples": [Field("timeseries", series, "SampleSeries")],
            **extra,
        },
    )
    return _Views(
        message=message,
        identity=classes["IdentityRequest"],
        identity_series=classes["IdentitySeries"],
        series_bytes=classes["SeriesBytes"],
        samples=classes["SampleRequest"],
        columns=classes["AllColumns"],
        sample_bytes=classes["AllSampleBytes"],
        all_samples=classes["AllSamples"],
        label=classes.get("Label"),
        references=classes.get("ReferenceRequest"),
    )


_V1 = _views(
    V1_MESSAGE,
    "v1",
    series=1,
    histograms=4,
    labels=[Field("labels", 1, "bytes", repeated=True)],
    extra={"Label": [Field("name", 1, "bytes"), Field("value", 2, "bytes")]},
)
_V2 = _views(
    V2_MESSAGE,
    "v2",
    series=5,
    histograms=3,
    labels=[],
    extra={
        "ReferenceSeries": [Field("labels_refs", 1, "uint32", repeated=True)],
        "ReferenceRequest": [
            Field("symbols", 4, "string", repeated=True),
            Field("timeseries", 5, "ReferenceSeries", repeated=True),
        ],
    },
)


def decode_write_request(
    body: bytes,
    content_type: str | None,
    content_encoding: str | None,
    max_bytes: int = 32 << 20,
    cache: SeriesCache | None = None,
) -> DecodedWrite:
    """Decode a remote-write request body; raise :class:`RemoteWriteError` for bad input.

    Parameters
    ----------
    body
        The request body as received.
    content_type, content_encoding
        The request's headers (None when absent).  A missing Content-Type means
        remote write 1.0 and a missing Content-Encoding means snappy, as in
        Prometheus's own receiver.
    max_bytes
        Largest body accepted, compressed and uncompressed (the snappy header
        declares the uncompressed size, checked before decompressing).
    cache
        Where series seen before are remembered; by default one shared by the
        process (its entries depend on nothing but the bytes received).

    Examples
    --------
    >>> import cramjam
    >>> from service.proto import Label, Sample, TimeSeries, WriteRequest
    >>> request = WriteRequest(timeseries=[TimeSeries(
    ...     labels=[Label(name="__name__", value="up"), Label(name="job", value="node")],
    ...     samples=[Sample(value=1.0, timestamp=1_700_000_000_000)])])
    >>> body = bytes(cramjam.snappy.compress_raw(request.SerializeToString()))
    >>> decoded = decode_write_request(body, "application/x-protobuf", "snappy")
    >>> decoded.keys, decoded.t.tolist(), decoded.x.tolist(), decoded.stale.tolist()
    (['up{job="node"}'], [1700000000.0], [1.0], [False])
    >>> try:
    ...     decode_write_request(body, "application/json", "snappy")
    ... except RemoteWriteError as error:
    ...     print(error.status, str(error).split(";")[0])
    415 Content-Type 'application/json' is not supported
    """
    views = _protocol(content_type)
    raw = _decompress(body, content_encoding, max_bytes)
    cache = _SHARED_CACHE if cache is None else cache
    series = _series_v1(raw, cache) if views is _V1 else _series_v2(raw, cache)
    keys = list(map(_KEY, series))
    counts = list(map(_SAMPLES, series))
    n_samples = sum(counts)
    slots = np.fromiter(map(_SLOT, series), np.int64, len(series))
    stamps = np.fromiter(map(_STAMP, series), np.int64, len(series))
    if n_samples != len(series) or 0 in counts:
        _check_depth(keys, counts)
        keys = [key for key, count in zip(keys, counts, strict=True) for _ in range(count)]
        slots, stamps = np.repeat(slots, counts), np.repeat(stamps, counts)
    milliseconds, x = _columns(views, raw, n_samples)
    if len(x) != n_samples:
        raise RemoteWriteError(
            f"{n_samples} samples announced but {len(x)} could be read; the body is damaged"
        )
    return DecodedWrite(
        keys=keys,
        labels=_KeyLabels(keys),
        t=milliseconds / 1000.0,
        x=x,
        stale=x.view(np.uint64) == STALE_NAN_BITS,
        slots=slots,
        stamps=stamps,
        histograms_skipped=sum(map(_HISTOGRAMS, series)),
    )


def _check_depth(keys: list[str], counts: list[int]) -> None:
    """Refuse a request holding more than :data:`MAX_SAMPLES_PER_SERIES` samples of one series.

    >>> _check_depth(["up{}", "up{}"], [1_500, 1_000])
    Traceback (most recent call last):
    ...
    service.remote_write.RemoteWriteError: series up{} has 2,500 samples in one request; ...
    """
    depth: dict[str, int] = {}
    for key, count in zip(keys, counts, strict=True):
        depth[key] = depth.get(key, 0) + count
    key, deepest = max(depth.items(), key=lambda item: item[1])
    if deepest > MAX_SAMPLES_PER_SERIES:
        raise RemoteWriteError(
            f"series {key:.300} has {deepest:,} samples in one request; at most "
            f"{MAX_SAMPLES_PER_SERIES:,} of one series are taken (they are scored one after another): "
            "send them in smaller requests"
        )


async def read_body(chunks: AsyncIterable[bytes], content_length: str | None, max_bytes: int) -> bytes:
    """A request body as it arrives, refused (413) once it is past ``max_bytes`` rather than kept.

    A Content-Length above the limit is refused before reading anything.  Give
    it the same ``max_bytes`` as :func:`decode_write_request`: the limit holds
    for the body as sent, so memory does too, whatever a client sends.

    Examples
    --------
    >>> import asyncio
    >>> async def chunks():
    ...     for _ in range(3):
    ...         yield b"1234"
    >>> asyncio.run(read_body(chunks(), None, max_bytes=16))
    b'123412341234'
    >>> try:
    ...     asyncio.run(read_body(chunks(), None, max_bytes=10))
    ... except RemoteWriteError as error:
    ...     print(error.status, str(error).split(";")[0])
    413 body is more than 10 bytes, above the limit of 10
    """
    if content_length is not None and content_length.strip().isdigit() and int(content_length) > max_bytes:
        raise _too_large(f"body is {int(content_length)} bytes", max_bytes)
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(f"body is more than {max_bytes} bytes", max_bytes)
        parts.append(chunk)
    return b"".join(parts)


def _protocol(content_type: str | None) -> _Views:
    if content_type is None or not content_type.strip():
        return _V1
    media, *parameters = content_type.split(";")
    message = V1_MESSAGE
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "proto":
            message = value.strip().strip('"')
    if media.strip().lower() == MEDIA_TYPE:
        if message == V1_MESSAGE:
            return _V1
        if message == V2_MESSAGE:
            return _V2
    raise RemoteWriteError(
        f"Content-Type {content_type!r} is not supported; send {SUPPORTED_CONTENT_TYPES}", 415
    )


def _decompress(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    encoding = (content_encoding or "").strip().lower()
    if encoding not in ("", "snappy"):
        raise RemoteWriteError(
            f"Content-Encoding {content_encoding!r} is not supported; remote write bodies are "
            "snappy-compressed (block format) with Content-Encoding: snappy",
            415,
        )
    if len(body) > max_bytes:
        raise _too_large(f"body is {len(body)} bytes", max_bytes)
    if not body:
        raise RemoteWriteError("body is empty; expected a snappy-compressed protobuf write request")
    try:
        size = cramjam.snappy.decompress_raw_len(body)
    except cramjam.DecompressionError as error:
        raise _not_snappy(body, error) from None
    if size > max_bytes:
        raise _too_large(f"body declares {size} bytes uncompressed", max_bytes)
    try:
        return bytes(cramjam.snappy.decompress_raw(body))
    except cramjam.DecompressionError as error:
        raise _not_snappy(body, error) from None


def _too_large(what: str, max_bytes: int) -> RemoteWriteError:
    return RemoteWriteError(
        f"{what}, above the limit of {max_bytes}; "
        "send fewer samples per request (Prometheus: queue_config.max_samples_per_send)",
        413,
    )


def _not_snappy(body: bytes, error: Exception) -> RemoteWriteError:
    looks = next((what for magic, what in _COMPRESSED_MAGIC.items() if body.startswith(magic)), None)
    found = f"body is {looks}" if looks else f"body is not valid snappy data ({error})"
    return RemoteWriteError(f"{found}; remote write bodies are snappy-compressed in the block (raw) format")


def _parse(view: Any, data: bytes, message: str) -> Any:
    try:
        return view.FromString(data)
    except DecodeError as error:
        # upb names the view it parsed with; the client knows the message it meant to send.
        reason = str(error).rpartition(": ")[2]
        raise RemoteWriteError(
            f"body is not a valid {message} ({reason}); it may be truncated or not a remote write request"
        ) from None


def _identities(views: _Views, raw: bytes) -> Any:
    """Per series, in order: (1.0) its labels as sent, then an empty marker per sample and per histogram."""
    request = _parse(views.identity, raw, views.message)
    request.DiscardUnknownFields()
    return views.series_bytes.FromString(request.SerializeToString()).timeseries


def _series_v1(raw: bytes, cache: SeriesCache) -> list[_Series]:
    identities = list(_identities(_V1, raw))
    found: list[Any] = list(map(cache.get, identities))
    if not all(found):
        for position, identity in enumerate(identities):
            if found[position] is None:
                found[position] = cache.put(identity, _identify_v1(identity))
    return found


def _identify_v1(identity: bytes) -> _Series:
    series = _V1.identity_series.FromString(identity)
    pairs = []
    for entry in series.labels:
        label = _parse(_V1.label, entry, V1_MESSAGE)
        pairs.append((label.name, label.value))
    labels = _checked_labels([(_text(name, pairs), _text(value, pairs)) for name, value in pairs])
    return _Series(series_key(labels), len(series.samples), len(series.histograms))


def _text(raw: bytes, pairs: list[tuple[bytes, bytes]]) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        shown = ", ".join(f"{n.decode(errors='replace')}={v.decode(errors='replace')!r}" for n, v in pairs)
        raise RemoteWriteError(
            f"series {{{shown[:300]}}}: label {raw!r} is not valid UTF-8; names and values must be UTF-8"
        ) from None


def _series_v2(raw: bytes, cache: SeriesCache) -> list[_Series]:
    # Label references index a symbol table built per request, so the cache key is the strings.
    request = _parse(_V2.references, raw, V2_MESSAGE)
    symbols = request.symbols[:]
    get, put = cache.get, cache.put
    found = []
    for series, markers in zip(request.timeseries, _identities(_V2, raw), strict=True):
        refs = series.labels_refs[:]
        if len(refs) % 2 or not refs:
            raise RemoteWriteError(
                f"a series has {len(refs)} label references; they come in name/value pairs and "
                "must include __name__"
            )
        try:
            strings = operator.itemgetter(*refs)(symbols)
        except IndexError:
            raise RemoteWriteError(
                f"a series refers to symbol {max(refs)} but the request has {len(symbols)} symbols"
            ) from None
        identity = (strings, markers)
        found.append(get(identity) or put(identity, _identify_v2(strings, markers)))
    return found


def _identify_v2(strings: tuple[str, ...], markers: bytes) -> _Series:
    labels = _checked_labels(list(zip(strings[0::2], strings[1::2], strict=True)))
    counts = _V2.identity_series.FromString(markers)
    return _Series(series_key(labels), len(counts.samples), len(counts.histograms))


def _checked_labels(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """The labels of a series, sorted by name; raises RemoteWriteError if they cannot be a series."""

    def series() -> str:
        return "series {" + ", ".join(f"{name}={value!r:.300}" for name, value in pairs)[:300] + "}"

    size = sum(len(name) + len(value) for name, value in pairs)
    if size > MAX_SERIES_LABEL_CHARS:
        raise RemoteWriteError(
            f"{series()}: its labels take {size:,} characters, above the limit of "
            f"{MAX_SERIES_LABEL_CHARS:,}; drop or shorten long labels before they are sent "
            "(Prometheus: write_relabel_configs with action: labeldrop)"
        )
    labels: dict[str, str] = {}
    for name, value in pairs:
        if not name:
            raise RemoteWriteError(f"{series()} has a label with an empty name; every label needs a name")
        if name in labels:
            raise RemoteWriteError(f"{series()} has label {name!r} twice; each name may appear once")
        if name != "__name__" and not _LABEL_NAME.match(name):
            raise RemoteWriteError(
                f"{series()}: label name {name!r} is not supported; use letters, digits and _ "
                "(not starting with a digit), the classic Prometheus name rules"
            )
        labels[name] = value
    metric = labels.get("__name__", "")
    if not metric:
        raise RemoteWriteError(f"{series()} has no metric name; every series needs a __name__ label")
    if not _METRIC_NAME.match(metric):
        raise RemoteWriteError(
            f"{series()}: metric name {metric!r} is not supported; use letters, digits, _ and : "
            "(not starting with a digit), the classic Prometheus name rules"
        )
    # In Prometheus a label with an empty value is the same as no label.  Names repeat
    # across series: one copy of each keeps the cache smaller.
    return {sys.intern(name): labels[name] for name in sorted(labels) if labels[name]}


def _columns(views: _Views, raw: bytes, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps (int64 ms) and values of every sample, in the order sent."""
    request = _parse(views.samples, raw, views.message)
    request.DiscardUnknownFields()
    canonical = request.SerializeToString()
    columns = views.columns.FromString(canonical).timeseries.samples
    values = np.fromiter(columns.value, np.float64, len(columns.value))
    stamps = np.fromiter(columns.timestamp, np.int64, len(columns.timestamp))
    if len(values) == len(stamps) == n_samples:
        return stamps, values
    sizes = np.fromiter(map(len, views.sample_bytes.FromString(canonical).timeseries.samples), np.int64)
    has_value = (sizes == 9) | (sizes == 16)
    has_time = (sizes == 7) | (sizes == 16)
    if (
        len(sizes) == n_samples
        and (has_value | has_time | (sizes == 0)).all()
        and has_value.sum() == len(values)
        and has_time.sum() == len(stamps)
    ):
        x = np.zeros(n_samples)
        x[has_value] = values
        t = np.zeros(n_samples, dtype=np.int64)
        t[has_time] = stamps
        return t, x
    samples = views.all_samples.FromString(canonical).timeseries.samples
    t = np.fromiter((sample.timestamp for sample in samples), np.int64, len(samples))
    x = np.fromiter((sample.value for sample in samples), np.float64, len(samples))
    return t, x


__all__ = [
    "MAX_SAMPLES_PER_SERIES",
    "MAX_SERIES_LABEL_CHARS",
    "MEDIA_TYPE",
    "STALE_NAN_BITS",
    "SUPPORTED_CONTENT_TYPES",
    "V1_MESSAGE",
    "V2_MESSAGE",
    "DecodedWrite",
    "RemoteWriteError",
    "RowCache",
    "SeriesCache",
    "decode_write_request",
    "read_body",
]

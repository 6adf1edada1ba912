"""Remote-write decoding: real protobuf requests, real snappy, real malformed bodies."""

from __future__ import annotations

import gzip
import math
import re
import struct
from pathlib import Path

import cramjam
import numpy as np
import pytest

import service.proto
import service.remote_write
from detector.config import DetectorConfig, build_engine
from detector.labels import series_key
from service.proto import (
    V1_SCHEMA,
    V2_SCHEMA,
    Label,
    RequestV2,
    Sample,
    SampleV2,
    TimeSeries,
    TimeSeriesV2,
    WriteRequest,
)
from service.remote_write import (
    MAX_SAMPLES_PER_SERIES,
    MAX_SERIES_LABEL_CHARS,
    MEDIA_TYPE,
    STALE_NAN_BITS,
    V2_MESSAGE,
    DecodedWrite,
    RemoteWriteError,
    SeriesCache,
    decode_write_request,
)

PROTO_DIR = Path(service.proto.__file__).parent
V2_TYPE = f"{MEDIA_TYPE};proto={V2_MESSAGE}"
NOW_MS = 1_760_000_000_000
STALE = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]
OTHER_NAN = struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000001))[0]

Series = tuple[dict[str, str], list[tuple[float, int]]]


def _snappy(payload: bytes) -> bytes:
    return bytes(cramjam.snappy.compress_raw(payload))


def _v1(series: list[Series]) -> bytes:
    request = WriteRequest()
    for labels, samples in series:
        timeseries = request.timeseries.add()
        for name, value in labels.items():
            timeseries.labels.add(name=name, value=value)
        for value, timestamp in samples:
            timeseries.samples.add(value=value, timestamp=timestamp)
    return request.SerializeToString()


def _v2(series: list[Series]) -> bytes:
    symbols = [""]
    index: dict[str, int] = {"": 0}

    def ref(text: str) -> int:
        if text not in index:
            index[text] = len(symbols)
            symbols.append(text)
        return index[text]

    request = RequestV2()
    for labels, samples in series:
        refs = [ref(text) for name in sorted(labels) for text in (name, labels[name])]
        request.timeseries.append(
            TimeSeriesV2(labels_refs=refs, samples=[SampleV2(value=v, timestamp=t) for v, t in samples])
        )
    request.symbols.extend(symbols)
    return request.SerializeToString()


def _expected(series: list[Series]) -> tuple[list[str], list[float], np.ndarray]:
    """What the decoder must return, worked out the plain way."""
    keys, t, x = [], [], []
    for labels, samples in series:
        key = series_key({name: value for name, value in labels.items() if value})
        for value, timestamp in samples:
            keys.append(key)
            t.append(timestamp / 1000)
            x.append(value)
    return keys, t, np.array(x, dtype=np.float64)


def _assert_decodes_to(decoded: DecodedWrite, series: list[Series]) -> None:
    keys, t, x = _expected(series)
    assert decoded.keys == keys
    assert decoded.t.dtype == np.float64 and decoded.t.tolist() == t
    # Bit for bit: -0.0, NaN payloads and stale markers must survive.
    assert decoded.x.dtype == np.float64 and decoded.x.view(np.uint64).tolist() == x.view(np.uint64).tolist()
    assert decoded.stale.tolist() == (x.view(np.uint64) == STALE_NAN_BITS).tolist()


def _node_series(n: int, samples: int = 1, start: int = 0) -> list[Series]:
    return [
        (
            {
                "__name__": "node_cpu_seconds_total",
                "cpu": str(i % 8),
                "instance": f"host-{i // 8}:9100",
                "job": "node",
                "mode": ("user", "system", "idle", "iowait")[i % 4],
            },
            [(1000.0 * i + 0.25 * k, NOW_MS + 15_000 * (start + k)) for k in range(samples)],
        )
        for i in range(n)
    ]


def _length_delimited(field: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field, for bytes the message classes cannot express."""
    size, length = len(payload), b""
    while size >= 0x80:
        length += bytes([size & 0x7F | 0x80])
        size >>= 7
    return bytes([field << 3 | 2]) + length + bytes([size]) + payload


def _error(
    body: bytes, content_type: str | None = MEDIA_TYPE, encoding: str | None = "snappy", **kw
) -> RemoteWriteError:
    with pytest.raises(RemoteWriteError) as caught:
        decode_write_request(body, content_type, encoding, **kw)
    return caught.value


# --- round trips -------------------------------------------------------------------------------


def test_v1_round_trip_keys_labels_seconds_and_values():
    series = _node_series(20, samples=3)
    series[0] = ({"mode": "user", "__name__": "node_cpu_seconds_total", "job": "node"}, series[0][1])
    decoded = decode_write_request(_snappy(_v1(series)), MEDIA_TYPE, "snappy", cache=SeriesCache())
    _assert_decodes_to(decoded, series)
    assert decoded.keys[0] == 'node_cpu_seconds_total{job="node",mode="user"}'
    assert decoded.t[0] == NOW_MS / 1000 and decoded.t[1] - decoded.t[0] == 15.0
    assert decoded.labels[decoded.keys[0]] == {
        "__name__": "node_cpu_seconds_total",
        "job": "node",
        "mode": "user",
    }
    assert list(decoded.labels) == list(dict.fromkeys(decoded.keys))
    assert decoded.histograms_skipped == 0


def test_v2_round_trip_matches_v1():
    series = _node_series(30, samples=2)
    decoded = decode_write_request(_snappy(_v2(series)), V2_TYPE, "snappy", cache=SeriesCache())
    _assert_decodes_to(decoded, series)
    v1 = decode_write_request(_snappy(_v1(series)), MEDIA_TYPE, "snappy", cache=SeriesCache())
    assert decoded.keys == v1.keys and decoded.labels == v1.labels


def test_stale_markers_are_stale_and_other_nans_are_plain_nan():
    series: list[Series] = [
        ({"__name__": "up", "job": "a"}, [(1.0, NOW_MS), (STALE, NOW_MS + 15_000)]),
        ({"__name__": "up", "job": "b"}, [(math.nan, NOW_MS)]),
        ({"__name__": "up", "job": "c"}, [(OTHER_NAN, NOW_MS), (math.inf, NOW_MS + 1)]),
    ]
    for payload, content_type in ((_v1(series), MEDIA_TYPE), (_v2(series), V2_TYPE)):
        decoded = decode_write_request(_snappy(payload), content_type, "snappy", cache=SeriesCache())
        _assert_decodes_to(decoded, series)
        assert decoded.stale.tolist() == [False, True, False, False, False]
        assert np.isnan(decoded.x).tolist() == [False, True, True, True, False]


def test_zero_values_and_zero_timestamps_which_protobuf_leaves_out():
    values = [0.0, -0.0, 1.5, 0.0, 2.5]
    stamps = [NOW_MS, NOW_MS, 0, 0, NOW_MS + 1]
    series = [
        ({"__name__": "m", "i": str(i)}, [(v, t)])
        for i, (v, t) in enumerate(zip(values, stamps, strict=True))
    ]
    for payload, content_type in ((_v1(series), MEDIA_TYPE), (_v2(series), V2_TYPE)):
        _assert_decodes_to(decode_write_request(_snappy(payload), content_type, None), series)


@pytest.mark.parametrize("stamp", [-1, 1, 2**40, 2**50, 2**62])
def test_unusual_timestamps(stamp):
    series: list[Series] = [
        ({"__name__": "m"}, [(0.0, stamp), (3.0, stamp), (3.0, NOW_MS)]),
        ({"__name__": "n"}, []),
    ]
    _assert_decodes_to(decode_write_request(_snappy(_v1(series)), None, None), series)


@pytest.mark.parametrize("content_type", [MEDIA_TYPE, V2_TYPE])
def test_random_requests_decode_exactly(content_type):
    rng = np.random.default_rng(7)
    values = [0.0, -0.0, math.nan, STALE, math.inf, -1e300, 5e-324, 42.0, 0.1]
    stamps = [0, -5, 1, 127, NOW_MS, NOW_MS + 15_000, 2**45]
    encode = _v1 if content_type == MEDIA_TYPE else _v2
    cache = SeriesCache(max_entries=8)
    for _ in range(60):
        series: list[Series] = []
        for _ in range(int(rng.integers(0, 12))):
            labels = {"__name__": f"metric_{rng.integers(3)}", "job": str(rng.integers(3))}
            if rng.random() < 0.5:
                labels["path"] = '/a"b\\c\n' if rng.random() < 0.3 else "/"
            n = int(rng.integers(0, 4))
            typical = rng.random() < 0.5
            series.append(
                (
                    labels,
                    [
                        (
                            float(rng.normal()) if typical else values[rng.integers(len(values))],
                            NOW_MS + 1000 * k if typical else stamps[rng.integers(len(stamps))],
                        )
                        for k in range(n)
                    ],
                )
            )
        decoded = decode_write_request(_snappy(encode(series)), content_type, "snappy", cache=cache)
        _assert_decodes_to(decoded, series)
        assert len(cache) <= 8


def test_histograms_are_skipped_and_counted_exemplars_and_metadata_ignored():
    series = TimeSeries(
        labels=[Label(name="__name__", value="rpc_seconds")], samples=[Sample(value=2.0, timestamp=NOW_MS)]
    )
    histogram = b"\x08\x05\x19" + struct.pack("<d", 1.5)  # count_int 5, sum 1.5
    exemplar = _length_delimited(1, _length_delimited(1, b"trace_id") + _length_delimited(2, b"abc"))
    with_extras = (
        series.SerializeToString() + _length_delimited(3, exemplar) + _length_delimited(4, histogram)
    )
    only_histograms = (
        TimeSeries(labels=[Label(name="__name__", value="rpc_hist")]).SerializeToString()
        + _length_delimited(4, histogram) * 2
    )
    metadata = _length_delimited(3, b"\x08\x01\x12\x0brpc_seconds")
    payload = _length_delimited(1, with_extras) + _length_delimited(1, only_histograms) + metadata
    decoded = decode_write_request(_snappy(payload), MEDIA_TYPE, "snappy", cache=SeriesCache())
    assert decoded.keys == ["rpc_seconds{}"] and decoded.x.tolist() == [2.0]
    assert decoded.histograms_skipped == 3
    assert list(decoded.labels) == ["rpc_seconds{}"]


def test_labels_with_empty_values_are_absent_as_in_prometheus():
    series: list[Series] = [({"__name__": "up", "job": "a", "zone": ""}, [(1.0, NOW_MS)])]
    decoded = decode_write_request(_snappy(_v1(series)), MEDIA_TYPE, "snappy", cache=SeriesCache())
    assert decoded.keys == ['up{job="a"}'] and decoded.labels['up{job="a"}'] == {"__name__": "up", "job": "a"}


def test_empty_request_gives_empty_columns():
    decoded = decode_write_request(_snappy(b""), MEDIA_TYPE, "snappy")
    assert (
        decoded.keys == []
        and decoded.labels == {}
        and len(decoded.t) == len(decoded.x) == len(decoded.stale) == 0
    )


def test_cache_is_reused_bounded_and_does_not_change_results():
    first, later = _node_series(50), _node_series(50, start=1)
    cache = SeriesCache(max_entries=1000)
    decode_write_request(_snappy(_v1(first)), MEDIA_TYPE, "snappy", cache=cache)
    assert len(cache) == 50
    _assert_decodes_to(decode_write_request(_snappy(_v1(later)), MEDIA_TYPE, "snappy", cache=cache), later)
    assert len(cache) == 50
    small = SeriesCache(max_entries=16)
    for batch in (first, later, first):
        _assert_decodes_to(
            decode_write_request(_snappy(_v1(batch)), MEDIA_TYPE, "snappy", cache=small), batch
        )
        assert len(small) <= 16
    with pytest.raises(ValueError, match="at least 1"):
        SeriesCache(max_entries=0)


def test_cache_slots_stay_below_max_entries_and_stamps_are_never_reused():
    cache = SeriesCache(max_entries=16)
    seen: dict[int, str] = {}
    for start in range(0, 100, 10):
        series = _node_series(100)[start : start + 10]
        decoded = decode_write_request(_snappy(_v1(series + series[:1])), MEDIA_TYPE, "snappy", cache=cache)
        assert decoded.slots.max() < 16 and len(decoded.slots) == len(decoded.stamps) == 11
        assert (decoded.slots[0], decoded.stamps[0]) == (decoded.slots[-1], decoded.stamps[-1]), (
            "a series sent twice in one request is one entry"
        )
        for key, stamp in zip(decoded.keys, decoded.stamps.tolist(), strict=True):
            assert seen.setdefault(stamp, key) == key
    assert len(cache) <= 16


def test_decoded_requests_concatenate_in_order():
    parts = [
        decode_write_request(_snappy(_v1(_node_series(n, samples=2))), MEDIA_TYPE, "snappy") for n in (3, 5)
    ]
    both = DecodedWrite.concat(parts)
    assert both.keys == parts[0].keys + parts[1].keys and len(both.keys) == 16
    for column in ("t", "x", "stale", "slots", "stamps"):
        joined = np.concatenate([getattr(part, column) for part in parts])
        assert getattr(both, column).tolist() == joined.tolist()
    assert {key: both.labels[key] for key in both.keys} == {**parts[0].labels, **parts[1].labels}
    assert DecodedWrite.concat(parts[:1]) is parts[0]


def test_decoded_write_feeds_the_engine():
    engine = build_engine(DetectorConfig())
    for step in range(3):
        decoded = decode_write_request(_snappy(_v1(_node_series(40, start=step))), MEDIA_TYPE, "snappy")
        scored = engine.process(engine.register(decoded.keys), decoded.t, decoded.x)
        assert len(scored.anomaly_score) == 40
    assert len(engine.series) == 40


# --- headers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [None, "", MEDIA_TYPE, "Application/X-Protobuf", f"{MEDIA_TYPE}; proto=prometheus.WriteRequest"],
)
def test_accepted_v1_content_types(content_type):
    series = _node_series(2)
    _assert_decodes_to(decode_write_request(_snappy(_v1(series)), content_type, "snappy"), series)


@pytest.mark.parametrize("encoding", [None, "", "snappy", " Snappy "])
def test_accepted_encodings(encoding):
    series = _node_series(2)
    _assert_decodes_to(decode_write_request(_snappy(_v1(series)), MEDIA_TYPE, encoding), series)


@pytest.mark.parametrize(
    "content_type", ["application/json", "text/plain", f"{MEDIA_TYPE};proto=prometheus.ReadRequest"]
)
def test_unsupported_content_type_is_415_naming_what_is_supported(content_type):
    error = _error(_snappy(_v1(_node_series(1))), content_type)
    assert error.status == 415
    assert repr(content_type) in str(error) and MEDIA_TYPE in str(error) and V2_MESSAGE in str(error)


@pytest.mark.parametrize("encoding", ["gzip", "zstd", "identity"])
def test_other_content_encoding_is_415(encoding):
    error = _error(_snappy(_v1(_node_series(1))), encoding=encoding)
    assert error.status == 415 and encoding in str(error) and "Content-Encoding: snappy" in str(error)


# --- malformed bodies ---------------------------------------------------------------------------


def test_garbage_bytes():
    error = _error(bytes(range(7, 200)))
    assert error.status == 400 and "not valid snappy" in str(error) and "block" in str(error)


def test_gzip_body_sent_as_snappy():
    error = _error(gzip.compress(_v1(_node_series(3))))
    assert error.status == 400 and "gzip" in str(error) and "snappy" in str(error)


def test_framed_snappy_instead_of_block_format():
    error = _error(bytes(cramjam.snappy.compress(_v1(_node_series(3)))))
    assert error.status == 400 and "framed" in str(error)


def test_uncompressed_body():
    error = _error(_v1(_node_series(3)))
    assert error.status == 400 and "snappy" in str(error)


def test_truncated_snappy():
    error = _error(_snappy(_v1(_node_series(20)))[:-10])
    assert error.status == 400 and "snappy" in str(error)


@pytest.mark.parametrize("content_type", [MEDIA_TYPE, V2_TYPE])
def test_truncated_protobuf(content_type):
    payload = (_v1 if content_type == MEDIA_TYPE else _v2)(_node_series(5))
    error = _error(_snappy(payload[:-7]), content_type)
    assert error.status == 400
    assert "not a valid" in str(error) and "truncated" in str(error)
    assert (V2_MESSAGE if content_type == V2_TYPE else "prometheus.WriteRequest") in str(error)


def test_empty_body():
    error = _error(b"")
    assert error.status == 400 and "empty" in str(error)


def test_oversized_compressed_body_is_413():
    body = _snappy(_v1(_node_series(50)))
    error = _error(body, max_bytes=len(body) - 1)
    assert error.status == 413 and str(len(body)) in str(error)


def test_oversized_declared_length_is_413_before_decompressing():
    payload = bytes(1 << 20)
    body = _snappy(payload)  # a few KB that expand to 1 MiB
    assert len(body) < 64 << 10
    error = _error(body, max_bytes=64 << 10)
    assert error.status == 413 and "declares 1048576 bytes uncompressed" in str(error)
    # A header claiming far more than the body holds: refused on the header alone.
    error = _error(b"\xff\xff\xff\xff\x0f" + body[3:], max_bytes=64 << 10)
    assert error.status == 413


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"job": "node"}, "no metric name"),
        ({"__name__": "", "job": "node"}, "no metric name"),
        ({"__name__": "up", "": "x"}, "empty name"),
        ({"__name__": "up", "bad.name": "x"}, "label name 'bad.name' is not supported"),
        ({"__name__": "http.requests"}, "metric name 'http.requests' is not supported"),
        (
            {"__name__": "up", "x": "y" * MAX_SERIES_LABEL_CHARS},
            "labels take 16,395 characters, above the limit of 16,384",
        ),
    ],
)
def test_series_that_cannot_be_a_series(labels, message):
    series: list[Series] = [({"__name__": "fine"}, [(1.0, NOW_MS)]), (labels, [(1.0, NOW_MS)])]
    for payload, content_type in ((_v1(series), MEDIA_TYPE), (_v2(series), V2_TYPE)):
        error = _error(_snappy(payload), content_type, cache=SeriesCache())
        assert error.status == 400 and message in str(error)


def test_labels_up_to_the_size_limit_are_accepted():
    labels = {"__name__": "up", "x": "y" * (MAX_SERIES_LABEL_CHARS - len("__name__up") - 1)}
    decoded = decode_write_request(_snappy(_v1([(labels, [(1.0, NOW_MS)])])), MEDIA_TYPE, None)
    assert decoded.labels[decoded.keys[0]] == labels


def test_a_request_deeper_than_the_per_series_limit_is_refused():
    deep = [1.0] * (MAX_SAMPLES_PER_SERIES // 2 + 1)
    # The same series twice in one request: its samples add up.
    series: list[Series] = [({"__name__": "up"}, [(v, NOW_MS + i) for i, v in enumerate(deep)])] * 2
    error = _error(_snappy(_v1(series)), MEDIA_TYPE, cache=SeriesCache())
    assert error.status == 400 and "series up{} has 2,002 samples in one request; at most 2,000" in str(error)
    fine = [({"__name__": "up"}, [(1.0, NOW_MS + i) for i in range(MAX_SAMPLES_PER_SERIES)])]
    assert len(decode_write_request(_snappy(_v1(fine)), MEDIA_TYPE, None).t) == MAX_SAMPLES_PER_SERIES


def test_duplicate_label_name():
    request = WriteRequest(
        timeseries=[
            TimeSeries(
                labels=[
                    Label(name="__name__", value="up"),
                    Label(name="job", value="a"),
                    Label(name="job", value="b"),
                ],
                samples=[Sample(value=1, timestamp=NOW_MS)],
            )
        ]
    )
    error = _error(_snappy(request.SerializeToString()), cache=SeriesCache())
    assert error.status == 400 and "'job' twice" in str(error)


def test_label_value_that_is_not_utf8():
    label = _length_delimited(1, b"__name__") + _length_delimited(2, b"up")
    bad = _length_delimited(1, b"job") + _length_delimited(2, b"caf\xe9")
    payload = _length_delimited(1, _length_delimited(1, label) + _length_delimited(1, bad))
    error = _error(_snappy(payload), cache=SeriesCache())
    assert error.status == 400 and "UTF-8" in str(error) and "__name__='up'" in str(error)


def test_v2_symbol_that_is_not_utf8():
    payload = _length_delimited(4, b"") + _length_delimited(4, b"__name__") + _length_delimited(4, b"\xff")
    payload += _length_delimited(5, _length_delimited(1, b"\x01\x02"))
    error = _error(_snappy(payload), V2_TYPE, cache=SeriesCache())
    assert error.status == 400 and "UTF-8" in str(error)


@pytest.mark.parametrize(
    ("refs", "message"), [([1, 9], "symbol 9"), ([1], "1 label references"), ([], "0 label")]
)
def test_v2_bad_label_references(refs, message):
    request = RequestV2(symbols=["", "__name__", "up"], timeseries=[TimeSeriesV2(labels_refs=refs)])
    error = _error(_snappy(request.SerializeToString()), V2_TYPE, cache=SeriesCache())
    assert error.status == 400 and message in str(error)


def test_damaged_requests_raise_only_remote_write_errors():
    rng = np.random.default_rng(3)
    originals = [
        (_v1(_node_series(6, samples=2)), MEDIA_TYPE),
        (_v2(_node_series(6, samples=2)), V2_TYPE),
    ]
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(400):
        payload, content_type = originals[rng.integers(2)]
        damaged = bytearray(payload)
        for _ in range(int(rng.integers(1, 4))):
            damaged[rng.integers(len(damaged))] = int(rng.integers(256))
        damaged = damaged[: int(rng.integers(len(damaged) // 2, len(damaged) + 1))]
        body = _snappy(bytes(damaged)) if rng.random() < 0.8 else bytes(damaged)
        try:
            decoded = decode_write_request(body, content_type, "snappy", cache=SeriesCache())
        except RemoteWriteError as error:
            assert 400 <= error.status < 500 and str(error)
            outcomes["refused"] += 1
        else:
            assert len(decoded.keys) == len(decoded.t) == len(decoded.x) == len(decoded.stale)
            outcomes["decoded"] += 1
    assert outcomes["decoded"] > 0 and outcomes["refused"] > 0


# --- schema and surface -------------------------------------------------------------------------

_PROTO_TYPES = {"string", "bytes", "double", "int64", "uint32"}


def _proto_messages(text: str) -> dict[str, list[service.proto.Field]]:
    """Message name -> fields of a .proto file (the flat subset these files use)."""
    text = re.sub(r"//[^\n]*", "", text)
    messages = {}
    for name, body in re.findall(r"message\s+(\w+)\s*\{([^}]*)\}", text):
        messages[name] = [
            service.proto.Field(field, int(number), kind, repeated=bool(repeated))
            for repeated, kind, field, number in re.findall(
                r"(repeated\s+)?(\w+)\s+(\w+)\s*=\s*(\d+)\s*;", body
            )
        ]
    return messages


@pytest.mark.parametrize(("file", "schema"), [("remote_v1.proto", V1_SCHEMA), ("remote_v2.proto", V2_SCHEMA)])
def test_proto_files_and_python_schema_agree(file, schema):
    assert _proto_messages((PROTO_DIR / file).read_text()) == schema
    assert {field.type for fields in schema.values() for field in fields} <= _PROTO_TYPES | set(schema)


def test_public_surface():
    assert service.remote_write.__all__ == [
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
    assert set(service.proto.__all__) == {
        "POOL",
        "V1_SCHEMA",
        "V2_SCHEMA",
        "Field",
        "Label",
        "RequestV2",
        "Sample",
        "SampleV2",
        "TimeSeries",
        "TimeSeriesV2",
        "WriteRequest",
        "build_messages",
    }

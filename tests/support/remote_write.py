"""Build real remote_write 1.0 bodies (snappy-compressed protobuf) as Prometheus sends them."""

from __future__ import annotations

import cramjam
import numpy as np

from detector.labels import parse_series_key
from service.proto import Label, Sample, TimeSeries, WriteRequest

HEADERS = {
    "Content-Type": "application/x-protobuf",
    "Content-Encoding": "snappy",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}


def write_request(keys: list[str], t: np.ndarray, x: np.ndarray) -> bytes:
    """A remote write 1.0 body, one TimeSeries per series (``t`` in seconds)."""
    series: dict[str, list[tuple[float, int]]] = {}
    for key, moment, value in zip(keys, t, x, strict=True):
        series.setdefault(key, []).append((float(value), round(moment * 1000)))
    request = WriteRequest(
        timeseries=[
            TimeSeries(
                labels=[Label(name=k, value=v) for k, v in sorted(parse_series_key(key).items())],
                samples=[Sample(value=value, timestamp=ms) for value, ms in samples],
            )
            for key, samples in series.items()
        ]
    )
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))

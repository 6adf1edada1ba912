"""Remote-write decoding throughput, alone and followed by scoring with the default engine.

Builds the requests Prometheus would push for ``--series`` node-exporter-like
series (4–6 labels each, about a quarter of the values exactly 0, as counters
that never move are): every scrape round sends one sample per series, shuffled
into requests of ``--per-request`` samples (Prometheus's default is 500).  One
warm-up round fills the decoder's series cache and the engine's series table;
the figures are over the rounds after it, steady state:

- decode only: remote write 1.0, 2.0, and 1.0 with an empty cache for every request;
- decode + score, one engine call per request:
  ``engine.process(engine.register(decoded.keys), decoded.t, decoded.x)``, with
  the time split between decoding and scoring;
- decode + score, ``--batch-requests`` requests decoded and then scored in one call;
- the service's own path, :meth:`service.detection.Detection.write`: each round's
  requests handled concurrently on one event loop, each decoded as it comes and
  queued, the queue scored in batches of ``remote_write.batch_samples`` samples
  (the default, and ``--service-batches``) with the detector's row cache, latest
  results, plot history and alert tracking, as ``POST /api/v1/write`` does minus
  HTTP parsing.  Its split puts the row look-ups and bookkeeping under "score".

Times are CPU seconds of this process (``time.process_time``), so other work on
a shared machine does not count against it; the bar is per core, so pin the
process to one as well::

    taskset -c 0 .venv/bin/python benchmarks/remote_write.py [--series 10000] [--rounds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# One core: the bar is per core, and BLAS threads would blur it.
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

import cramjam  # noqa: E402
import google.protobuf  # noqa: E402
import numpy as np  # noqa: E402
from google.protobuf.internal import api_implementation  # noqa: E402

from detector.config import DetectorConfig, build_engine  # noqa: E402
from service.detection import Detection  # noqa: E402
from service.proto import RequestV2, TimeSeriesV2, WriteRequest  # noqa: E402
from service.remote_write import MEDIA_TYPE, V2_MESSAGE, SeriesCache, decode_write_request  # noqa: E402
from service.settings import RemoteWriteSettings, ServiceSettings  # noqa: E402
from service.store import Store  # noqa: E402

SCRAPE_MS = 15_000
START_MS = 1_760_000_000_000


def node_exporter_series(n_series: int) -> list[dict[str, str]]:
    """``n_series`` label sets shaped like one node exporter's per host (about 50 per host)."""
    out: list[dict[str, str]] = []
    host = 0
    while len(out) < n_series:
        base = {"instance": f"node-{host:04d}.prod.example.net:9100", "job": "node"}
        for cpu in range(8):
            for mode in ("idle", "iowait", "system", "user"):
                out.append({"__name__": "node_cpu_seconds_total", "cpu": str(cpu), "mode": mode, **base})
        for device, mount in (("sda1", "/"), ("sda2", "/var"), ("sdb1", "/data"), ("tmpfs", "/run")):
            fstype = "tmpfs" if device == "tmpfs" else "ext4"
            labels = {"device": device, "fstype": fstype, "mountpoint": mount, **base}
            out.append({"__name__": "node_filesystem_avail_bytes", **labels})
        for device in ("eth0", "eth1", "lo"):
            for metric in ("receive_bytes", "transmit_bytes", "receive_errs", "transmit_drop"):
                out.append({"__name__": f"node_network_{metric}_total", "device": device, **base})
        for device in ("sda", "sdb"):
            out.append({"__name__": "node_disk_io_time_seconds_total", "device": device, **base})
        host += 1
    return out[:n_series]


def scrape_values(n_series: int, rounds: int, rng: np.random.Generator) -> np.ndarray:
    """Counter-like values, shape (rounds, n_series); about a quarter stay exactly 0."""
    rate = rng.lognormal(3, 2, n_series) * (rng.random(n_series) > 0.25)
    return np.cumsum(rate * rng.uniform(0.5, 1.5, (rounds, n_series)), axis=0).round(3)


def v1_body(labels: list[dict[str, str]], values: np.ndarray, stamp_ms: int) -> bytes:
    request = WriteRequest()
    for series_labels, value in zip(labels, values.tolist(), strict=True):
        series = request.timeseries.add()
        for name in sorted(series_labels):
            series.labels.add(name=name, value=series_labels[name])
        series.samples.add(value=value, timestamp=stamp_ms)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


def v2_body(labels: list[dict[str, str]], values: np.ndarray, stamp_ms: int) -> bytes:
    symbols: dict[str, int] = {"": 0}
    request = RequestV2()
    for series_labels, value in zip(labels, values.tolist(), strict=True):
        refs = [
            symbols.setdefault(text, len(symbols))
            for name in sorted(series_labels)
            for text in (name, series_labels[name])
        ]
        request.timeseries.append(
            TimeSeriesV2(labels_refs=refs, samples=[{"value": value, "timestamp": stamp_ms}])
        )
    request.symbols.extend(symbols)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


def build_rounds(
    encode: Callable[[list[dict[str, str]], np.ndarray, int], bytes],
    n_series: int,
    per_request: int,
    rounds: int,
) -> list[list[bytes]]:
    """Request bodies per scrape round; each series once per round, in a fixed shuffled order."""
    rng = np.random.default_rng(0)
    labels = node_exporter_series(n_series)
    order = rng.permutation(n_series)
    values = scrape_values(n_series, rounds, rng)
    out = []
    for step in range(rounds):
        stamp = START_MS + SCRAPE_MS * step
        out.append(
            [
                encode([labels[i] for i in chunk], values[step, chunk], stamp)
                for chunk in np.array_split(order, max(1, n_series // per_request))
            ]
        )
    return out


def chunks(items: list[bytes], size: int) -> Iterator[list[bytes]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def machine() -> str:
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{model}; {cores} core(s) available to this process; Python {platform.python_version()}, "
        f"numpy {np.__version__}, protobuf {google.protobuf.__version__} ({api_implementation.Type()})"
    )


def rate(samples: int, seconds: list[float]) -> str:
    """Samples/s from the median round (and the best round)."""
    return f"{samples / statistics.median(seconds):>12,.0f}   (best round {samples / min(seconds):,.0f})"


def split(samples: int, decode_s: list[float], score_s: list[float]) -> str:
    """The decode / score rates of the median round, and decode's share of the time."""
    total = statistics.median([d + s for d, s in zip(decode_s, score_s, strict=True)])
    decode_rate, score_rate = (samples / statistics.median(s) for s in (decode_s, score_s))
    return (
        f"{'    of which decode / score (median round)':56s}"
        f"{decode_rate:>12,.0f} / {score_rate:,.0f} samples/s; "
        f"decode {statistics.median(decode_s) / total:.0%} of the time"
    )


def service_rounds(rounds: list[list[bytes]], batch_samples: int) -> tuple[list[float], list[float]]:
    """CPU seconds per round (decode, the rest) of ``Detection.write``, each round's requests concurrent."""
    with tempfile.TemporaryDirectory() as directory:
        settings = ServiceSettings.model_validate(
            {
                "store": f"{directory}/benchmark.db",
                "remote_write": {"batch_samples": batch_samples},
                "detectors": [{"name": "node", "source": "remote_write"}],
            }
        )
        store = Store(settings.store)
        detection = Detection(settings, store)
        cache = SeriesCache()
        decoding = 0.0

        async def handle(body: bytes) -> None:
            nonlocal decoding
            began = time.process_time()
            decoded = decode_write_request(body, MEDIA_TYPE, "snappy", cache=cache)
            decoding += time.process_time() - began
            await detection.write(decoded)

        async def measure() -> tuple[list[float], list[float]]:
            nonlocal decoding
            decode_s, rest_s = [], []
            for step, bodies in enumerate(rounds):
                decoding, began = 0.0, time.process_time()
                await asyncio.gather(*(handle(body) for body in bodies))
                if step:
                    decode_s.append(decoding)
                    rest_s.append(time.process_time() - began - decoding)
            return decode_s, rest_s

        try:
            return asyncio.run(measure())
        finally:
            detection.outbox.close()
            store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--per-request", type=int, default=500)
    parser.add_argument(
        "--rounds", type=int, default=8, help="measured scrape rounds, after one warm-up round"
    )
    parser.add_argument("--batch-requests", type=int, default=10)
    default_batch = RemoteWriteSettings().batch_samples
    parser.add_argument(
        "--service-batches",
        type=int,
        nargs="*",
        default=[2000, 5000],
        help=f"batch_samples to run the service path with, besides the default ({default_batch})",
    )
    args = parser.parse_args(argv)

    print(f"machine: {machine()}")
    started, wall = time.process_time(), time.perf_counter()
    v1 = build_rounds(v1_body, args.series, args.per_request, args.rounds + 1)
    v2 = build_rounds(v2_body, args.series, args.per_request, args.rounds + 1)
    per_round = args.series
    print(
        f"{args.series} series, {len(v1[0])} requests of ~{args.per_request} samples per round, "
        f"~{len(v1[0][0]) // 1024} KiB compressed each; {args.rounds} rounds after a warm-up round "
        f"(built in {time.process_time() - started:.1f} CPU s)\n"
    )

    def decode_rounds(rounds: list[list[bytes]], content_type: str, fresh_cache: bool) -> list[float]:
        cache = SeriesCache()
        seconds = []
        for step, bodies in enumerate(rounds):
            began = time.process_time()
            for body in bodies:
                decode_write_request(
                    body, content_type, "snappy", cache=SeriesCache() if fresh_cache else cache
                )
            if step:
                seconds.append(time.process_time() - began)
        return seconds

    print(f"{'':56s}{'samples/s':>12s}")
    print(f"{'decode only, remote write 1.0':56s}{rate(per_round, decode_rounds(v1, MEDIA_TYPE, False))}")
    v2_type = f"{MEDIA_TYPE};proto={V2_MESSAGE}"
    print(f"{'decode only, remote write 2.0':56s}{rate(per_round, decode_rounds(v2, v2_type, False))}")
    cold = decode_rounds(v1, MEDIA_TYPE, True)
    print(f"{'decode only, 1.0, empty series cache every request':56s}{rate(per_round, cold)}")

    for batch in (1, args.batch_requests):
        engine = build_engine(DetectorConfig())
        cache = SeriesCache()
        decode_s, score_s = [], []
        for step, bodies in enumerate(v1):
            decoding = scoring = 0.0
            for group in chunks(bodies, batch):
                began = time.process_time()
                decoded = [decode_write_request(body, MEDIA_TYPE, "snappy", cache=cache) for body in group]
                keys = [key for d in decoded for key in d.keys]
                t = np.concatenate([d.t for d in decoded])
                x = np.concatenate([d.x for d in decoded])
                middle = time.process_time()
                engine.process(engine.register(keys), t, x)
                decoding += middle - began
                scoring += time.process_time() - middle
            if step:
                decode_s.append(decoding)
                score_s.append(scoring)
        total = [d + s for d, s in zip(decode_s, score_s, strict=True)]
        samples_per_call = args.per_request * batch
        label = f"decode + score, {batch} request(s) (~{samples_per_call} samples) per engine call"
        print(f"{label:56s}{rate(per_round, total)}")
        print(split(per_round, decode_s, score_s))

    for batch_samples in sorted({default_batch, *args.service_batches}):
        decode_s, score_s = service_rounds(v1, batch_samples)
        total = [d + s for d, s in zip(decode_s, score_s, strict=True)]
        default = ", the default" if batch_samples == default_batch else ""
        label = f"service path, batches of {batch_samples} samples{default}"
        print(f"{label:56s}{rate(per_round, total)}")
        print(split(per_round, decode_s, score_s))
    print(f"\ntotal {time.process_time() - started:.1f} CPU s, {time.perf_counter() - wall:.1f} s wall")


if __name__ == "__main__":
    main()

"""Loopback load test: the service, a real process, holding 10,000 series pushed every 15 s.

Starts ``anomaly-detector run`` on 127.0.0.1 with a remote_write detector that
takes every series (default model and limits, state checkpointed every minute as
shipped), then plays Prometheus: every ``--interval`` each series gets one sample,
the samples go into remote-write 1.0 requests of ``--per-request`` samples
(Prometheus's ``max_samples_per_send`` is 2,000) and ``--shards`` connections
send them at once, each its share one request after another.  All of an
interval's samples are sent together, a harsher pattern than Prometheus's steady
flow from scrapes spread over the interval.

Values are the recordings in ``replay_data/``, each series one of them at its
own offset and scale; labels are shaped like an exporter's (job, instance, a
path).  The first interval registers every series and is reported apart; the
figures after it are the steady state: request latency (p50, p99, max),
samples per second accepted, the service's CPU time, and its RSS at start,
after the first interval and at the end.

Usage: ``python benchmarks/load.py [--minutes 10] [--series 10000] [--interval 15] [--shards 4]``
(``--minutes 1`` for a quick run).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cramjam
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.proto import Label, Sample, TimeSeries  # noqa: E402
from tests.support.service import ServiceProcess  # noqa: E402

HEADERS = {
    "Content-Type": "application/x-protobuf",
    "Content-Encoding": "snappy",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}


def recordings() -> list[tuple[str, str, np.ndarray]]:
    """(job, metric, values at one-minute steps) of every recording in replay_data/, gaps filled."""
    found = []
    for path in sorted((ROOT / "replay_data").glob("*/*.csv")):
        with path.open() as handle:
            values = np.array([float(row["value"] or "nan") for row in csv.DictReader(handle)])
        for i in np.flatnonzero(np.isnan(values)):  # a scrape gap: Prometheus sends nothing new
            values[i] = values[i - 1]
        found.append((path.parent.name, path.stem, values))
    return found


class Fleet:
    """``n`` series: each one recording at its own offset and scale, and its labels as protobuf bytes."""

    def __init__(self, n: int) -> None:
        sources = recordings()
        self.values = np.empty((n, min(len(v) for *_, v in sources)))
        self.labels: list[bytes] = []
        rng = np.random.default_rng(0)
        for i in range(n):
            job, metric, values = sources[i % len(sources)]
            offset = int(rng.integers(len(self.values[i])))
            self.values[i] = np.roll(values[: self.values.shape[1]], -offset) * rng.uniform(0.5, 2.0)
            labels = {
                "__name__": metric,
                "job": job,
                "instance": f"10.{i // 4000}.{i // 40 % 100}.{i % 40}:9100",
                "path": f"/api/v1/resource{i % 25}",
            }
            series = TimeSeries(labels=[Label(name=k, value=v) for k, v in sorted(labels.items())])
            self.labels.append(series.SerializeToString())

    def bodies(self, step: int, stamp_ms: int, per_request: int) -> list[bytes]:
        """This step's samples as snappy-compressed WriteRequests of ``per_request`` series each.

        Protobuf messages concatenate: a TimeSeries is its labels' bytes then its
        samples' (field 2), a WriteRequest its TimeSeries' (field 1), each
        length-prefixed.
        """
        column = self.values[:, step % self.values.shape[1]].tolist()
        series = []
        for labels, value in zip(self.labels, column, strict=True):
            sample = Sample(value=value, timestamp=stamp_ms).SerializeToString()
            one = labels + b"\x12" + _varint(len(sample)) + sample
            series.append(b"\x0a" + _varint(len(one)) + one)
        return [
            bytes(cramjam.snappy.compress_raw(b"".join(series[start : start + per_request])))
            for start in range(0, len(series), per_request)
        ]


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


async def send_interval(
    client: httpx.AsyncClient, bodies: list[bytes], shards: int
) -> list[tuple[float, int]]:
    """Every body, ``shards`` at a time as Prometheus's queue shards do: (seconds, status) of each."""

    async def shard(mine: list[bytes]) -> list[tuple[float, int]]:
        answers = []
        for body in mine:
            began = time.perf_counter()
            response = await client.post("/api/v1/write", content=body, headers=HEADERS)
            answers.append((time.perf_counter() - began, response.status_code))
        return answers

    done = await asyncio.gather(*(shard(bodies[k::shards]) for k in range(shards)))
    return [answer for answers in done for answer in answers]


def percentiles(seconds: list[float]) -> str:
    ms = np.array(seconds) * 1000
    return (
        f"p50 {np.percentile(ms, 50):.0f} ms, p99 {np.percentile(ms, 99):.0f} ms, "
        f"max {ms.max():.0f} ms over {len(ms)} requests"
    )


async def run(args: argparse.Namespace, service: ServiceProcess, fleet: Fleet) -> None:
    intervals = max(2, round(args.minutes * 60 / args.interval))
    started_cpu, started_rss = service.cpu_seconds(), service.memory("VmRSS") / 2**20
    print(f"RSS at start: {started_rss:.0f} MiB (ready, no series yet)")
    first: list[float] = []
    steady: list[float] = []
    failed: dict[int, int] = {}
    steady_cpu = steady_wall = 0.0
    after_first_rss = 0.0
    async with httpx.AsyncClient(
        base_url=service.url, timeout=120.0, limits=httpx.Limits(max_connections=args.shards)
    ) as client:
        clock = time.monotonic()
        for step in range(intervals):
            if step == 1:
                steady_cpu, steady_wall = service.cpu_seconds(), time.monotonic()
            bodies = fleet.bodies(step, int(time.time() * 1000), args.per_request)
            answers = await send_interval(client, bodies, args.shards)
            for _, status in answers:
                if status != 204:
                    failed[status] = failed.get(status, 0) + 1
            if step == 0:
                first = [seconds for seconds, _ in answers]
                after_first_rss = service.memory("VmRSS") / 2**20
                print(
                    f"first interval (registers {args.series} series): {percentiles(first)}; "
                    f"RSS {after_first_rss:.0f} MiB"
                )
            else:
                steady.extend(seconds for seconds, _ in answers)
            if args.progress and step and step % max(1, intervals // 10) == 0:
                print(
                    f"  {step}/{intervals} intervals, RSS {service.memory('VmRSS') / 2**20:.0f} MiB",
                    flush=True,
                )
            clock += args.interval
            await asyncio.sleep(max(0.0, clock - time.monotonic()))
    wall = time.monotonic() - steady_wall
    cpu = service.cpu_seconds() - steady_cpu
    samples = (intervals - 1) * args.series
    print(f"steady state, {intervals - 1} intervals of {args.interval:g} s: {percentiles(steady)}")
    print(
        f"samples accepted: {samples / wall:,.0f}/s ({samples:,} in {wall:.0f} s); service CPU "
        f"{cpu:.1f} s = {100 * cpu / wall:.1f}% of one core ({1e6 * cpu / samples:.0f} µs per sample, "
        f"HTTP and checkpoints included); over the whole run {service.cpu_seconds() - started_cpu:.1f} s"
    )
    print(
        f"RSS: {started_rss:.0f} MiB at start, {after_first_rss:.0f} MiB after the first interval, "
        f"{service.memory('VmRSS') / 2**20:.0f} MiB at the end"
    )
    print(f"answers other than 204: {failed or 'none'}")
    detectors = httpx.get(f"{service.url}/api/v1/detectors", timeout=30.0).json()
    print(f"series the service watches: {detectors[0]['series']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between a series' samples")
    parser.add_argument("--per-request", type=int, default=2000, help="samples per request")
    parser.add_argument("--shards", type=int, default=4, help="concurrent connections")
    parser.add_argument("--progress", action="store_true", help="print RSS every tenth of the run")
    args = parser.parse_args(argv)
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )
    print(
        f"Load: {args.series} series every {args.interval:g} s for {args.minutes:g} min, "
        f"requests of {args.per_request} samples over {args.shards} shards"
    )
    fleet = Fleet(args.series)
    with tempfile.TemporaryDirectory(prefix="load-") as folder:
        config = Path(folder) / "service.yaml"
        config.write_text(
            json.dumps(
                {
                    "store": str(Path(folder) / "state.db"),
                    "detectors": [{"name": "load", "source": "remote_write", "match_re": {"__name__": ".+"}}],
                }
            )
        )
        service = ServiceProcess(config, Path(folder) / "service.log")
        try:
            service.start(wait_ready=120.0)
            asyncio.run(run(args, service, fleet))
        finally:
            service.stop(timeout=60.0)
            log = service.log()
            if "Traceback" in log:
                print(f"the service logged a traceback:\n{log[-3000:]}")


if __name__ == "__main__":
    main()

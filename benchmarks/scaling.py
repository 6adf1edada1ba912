"""What one service process costs per series: memory, ``/metrics``, checkpoints, remote_write output.

Starts ``anomaly-detector run`` on 127.0.0.1 with one remote_write detector that
takes every series (default model; ``--config`` adds or overrides settings) and
plays Prometheus for each ``--series`` count in turn: ``--rounds`` scrape
rounds, 15 s apart in sample time, each one sample per series in remote-write
1.0 requests of ``--per-request`` samples over ``--shards`` connections, sent
as fast as the service answers.  Series are shaped like node exporters'
(:func:`benchmarks.remote_write.node_exporter_series`, 5–6 labels).

Then, per count:

- **RSS** of the whole service process (``VmRSS``) idle, after the rounds, and
  its peak (``VmHWM``, which includes the checkpoints that ran meanwhile);
  per series: RSS / series, the whole process;
- **samples/s** of the steady rounds (all rounds but the first, which
  registers every series), wall time on this machine with the load generator
  on the same two cores;
- **``/metrics``**: one scrape's time, bytes and lines;
- **checkpoint**: the service's own ``anomaly_detector_last_checkpoint_duration_seconds``
  and ``..._bytes`` of a checkpoint with every series (``checkpoint_interval: 20s``);
- **remote_write output** (``--output-remote-write``): a receiver in this
  process counts the bytes and requests the service sends per round.

Usage::

    python benchmarks/scaling.py --series 100000 1000000 [--rounds 4] [--output-remote-write]

A run is stopped (and reported as such) if the service's RSS passes ``--max-rss-gib``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cramjam
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.load import HEADERS, _varint  # noqa: E402
from benchmarks.remote_write import SCRAPE_MS, START_MS, machine, node_exporter_series  # noqa: E402
from service.proto import Label, TimeSeries  # noqa: E402
from tests.support.service import ServiceProcess  # noqa: E402


def series_bytes(n: int) -> list[bytes]:
    """Each series' labels as a serialised TimeSeries (no samples), sorted by name."""
    out = []
    for labels in node_exporter_series(n):
        out.append(
            TimeSeries(labels=[Label(name=k, value=labels[k]) for k in sorted(labels)]).SerializeToString()
        )
    return out


def bodies(labels: list[bytes], values: np.ndarray, stamp_ms: int, per_request: int) -> list[bytes]:
    """One round: each series one sample, as snappy-compressed WriteRequests of ``per_request`` series."""
    stamp = b"\x10" + _varint(stamp_ms)
    out = []
    for start in range(0, len(labels), per_request):
        chunk = values[start : start + per_request]
        packed = chunk.astype("<f8").tobytes()
        series = []
        for i, one in enumerate(labels[start : start + per_request]):
            sample = b"\x09" + packed[8 * i : 8 * i + 8] + stamp
            body = one + b"\x12" + _varint(len(sample)) + sample
            series.append(b"\x0a" + _varint(len(body)) + body)
        del chunk
        out.append(bytes(cramjam.snappy.compress_raw(b"".join(series))))
    return out


@dataclass
class Receiver:
    """A remote_write receiver on 127.0.0.1 that only counts what arrives (and answers 204)."""

    bytes: int = 0
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> str:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length", 0))
                self.rfile.read(size)
                with owner.lock:
                    owner.bytes += size
                    owner.requests += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/v1/write"

    def take(self) -> tuple[int, int]:
        with self.lock:
            taken = self.bytes, self.requests
            self.bytes = self.requests = 0
        return taken

    def stop(self) -> None:
        self.server.shutdown()


def metric_in(text: str, name: str) -> float | None:
    """The value of an unlabelled sample ``name`` in a ``/metrics`` text (None if absent)."""
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def scrape(url: str) -> tuple[float, int, int, str]:
    """One ``/metrics`` scrape: seconds, bytes, lines, text."""
    began = time.perf_counter()
    response = httpx.get(f"{url}/metrics", timeout=600.0)
    seconds = time.perf_counter() - began
    return seconds, len(response.content), response.text.count("\n"), response.text


async def send_round(url: str, requests: list[bytes], shards: int) -> list[int]:
    async with httpx.AsyncClient(
        base_url=url, timeout=600.0, limits=httpx.Limits(max_connections=shards)
    ) as client:

        async def shard(mine: list[bytes]) -> list[int]:
            return [
                (await client.post("/api/v1/write", content=body, headers=HEADERS)).status_code
                for body in mine
            ]

        done = await asyncio.gather(*(shard(requests[k::shards]) for k in range(shards)))
    return [status for statuses in done for status in statuses]


def encode_cost(n: int) -> None:
    """CPU time and size of encoding one round of ``n`` series' five score metrics (outputs.remote_write)."""
    from service.exposition import exported_labels
    from service.score_writer import Chunk, label_bytes
    from service.settings import SCORE_METRICS

    rng = np.random.default_rng(2)
    built = [label_bytes(exported_labels("scale", labels)) for labels in node_exporter_series(n)]
    level = rng.lognormal(3, 2, n)
    values = np.vstack([rng.random(n), level, level * 0.9, level * 1.1, np.zeros(n)])
    stamps = np.full(n, START_MS, dtype=np.int64)
    began = time.process_time()
    size = 0
    for start in range(0, n, 1000):  # 5,000 output samples a request, the default
        part = slice(start, start + 1000)
        chunk = Chunk(
            [b for b, _ in built[part]],
            [s for _, s in built[part]],
            stamps[part],
            values[:, part],
            SCORE_METRICS,
        )
        size += len(chunk.encode())
    seconds = time.process_time() - began
    print(
        f"encoding {n:,} series x 5 metrics: {1e6 * seconds / (5 * n):.2f} µs CPU and "
        f"{size / (5 * n):.1f} bytes "
        f"(snappy) per output sample; label bytes kept {sum(len(b) for b, _ in built) / n:.0f} B/series"
    )


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def measure(n: int, args: argparse.Namespace, labels: list[bytes]) -> dict[str, Any]:
    receiver = Receiver() if args.output_remote_write else None
    config: dict[str, Any] = {
        "checkpoint_interval": f"{args.checkpoint_interval}s",
        "detectors": [{"name": "scale", "source": "remote_write", "match_re": {"__name__": ".+"}}],
    }
    config.update(json.loads(args.config))
    result: dict[str, Any] = {"series": n}
    with tempfile.TemporaryDirectory(prefix="scaling-", dir=args.tmp) as folder:
        config["store"] = f"{folder}/state.db"
        if receiver is not None:
            outputs = config.setdefault("outputs", {})
            outputs["remote_write"] = {"url": receiver.start(), **outputs.get("remote_write", {})}
        path = Path(folder) / "service.yaml"
        path.write_text(json.dumps(config))
        service = ServiceProcess(path, Path(folder) / "service.log")
        try:
            service.start(wait_ready=300.0)
            result["rss_idle"] = service.memory("VmRSS")
            rng = np.random.default_rng(1)
            level = rng.lognormal(3, 2, n)
            seconds = []
            for step in range(args.rounds):
                values = level * (1 + 0.05 * rng.standard_normal(n))
                requests = bodies(labels[:n], values, START_MS + SCRAPE_MS * step, args.per_request)
                result["input_bytes"] = sum(map(len, requests))
                began = time.perf_counter()
                statuses = asyncio.run(send_round(service.url, requests, args.shards))
                seconds.append(time.perf_counter() - began)
                bad = {s: statuses.count(s) for s in set(statuses) if s != 204}
                rss = service.memory("VmRSS")
                print(
                    f"  round {step}: {seconds[-1]:.1f} s, RSS {gib(rss)}"
                    + (f", answers {bad}" if bad else ""),
                    flush=True,
                )
                if bad:
                    result["failed"] = bad
                if rss > args.max_rss_gib * 2**30:
                    result["stopped"] = f"RSS {gib(rss)} passed --max-rss-gib after round {step}"
                    break
                if receiver is not None:
                    time.sleep(args.drain)  # let the output queue drain before the next round
                    sent, posts = receiver.take()
                    if step:
                        result.setdefault("output_bytes", []).append(sent)
                        result.setdefault("output_requests", []).append(posts)
            result["round_seconds"] = seconds
            result["rss"] = service.memory("VmRSS")
            if "stopped" not in result:
                # A checkpoint begun after the rounds (every series in it), the RSS at rest, /metrics.
                waited = time.time()
                text = ""
                while time.time() - waited < 900:
                    time.sleep(2)
                    text = httpx.get(f"{service.url}/metrics", timeout=600.0).text
                    stamp = metric_in(text, "anomaly_detector_last_checkpoint_timestamp_seconds") or 0.0
                    took = metric_in(text, "anomaly_detector_last_checkpoint_duration_seconds") or 0.0
                    if stamp - took > waited:
                        break
                time.sleep(3)  # the free heap is given back after each checkpoint
                result["rss_rest"] = service.memory("VmRSS")
                result["checkpoint_seconds"] = took
                result["checkpoint_bytes"] = metric_in(text, "anomaly_detector_last_checkpoint_bytes")
                result["metrics_seconds"], result["metrics_bytes"], result["metrics_lines"], _ = scrape(
                    service.url
                )
            result["rss_end"] = service.memory("VmRSS")
            result["rss_peak"] = service.memory("VmHWM")
        finally:
            service.stop(timeout=300.0)
            if receiver is not None:
                receiver.stop()
            log = service.log()
            if "Traceback" in log:
                print(f"the service logged a traceback:\n{log[-3000:]}")
    return result


def report(r: dict[str, Any]) -> None:
    n = r["series"]
    print(f"{n:,} series")
    if "stopped" in r:
        print(f"  stopped: {r['stopped']}")
    steady = r["round_seconds"][1:]
    if steady:
        print(
            f"  remote_write in: {n / np.median(steady):,.0f} samples/s "
            f"(median steady round {np.median(steady):.1f} s); "
            f"first round (registers every series) {r['round_seconds'][0]:.1f} s"
        )
    print(
        f"  remote_write in: {r['input_bytes'] / n:.1f} bytes/sample compressed (requests of the whole round)"
    )
    rest = r.get("rss_rest", r["rss"])
    print(
        f"  RSS: idle {gib(r['rss_idle'])}; at rest after a checkpoint {gib(rest)} = "
        f"{rest / n:,.0f} B/series "
        f"(above idle {(rest - r['rss_idle']) / n:,.0f} B/series); right after the rounds {gib(r['rss'])}; "
        f"peak {gib(r['rss_peak'])} = {r['rss_peak'] / n:,.0f} B/series"
    )
    if "checkpoint_seconds" in r and r["checkpoint_seconds"] is not None:
        print(
            f"  checkpoint: {r['checkpoint_seconds']:.2f} s, {r['checkpoint_bytes'] / 2**20:,.0f} MiB "
            f"({r['checkpoint_bytes'] / n:,.0f} B/series; "
            f"per 100k series {r['checkpoint_seconds'] * 1e5 / n:.2f} s, "
            f"{r['checkpoint_bytes'] * 1e5 / n / 2**20:,.0f} MiB)"
        )
    if "metrics_bytes" in r:
        print(
            f"  /metrics: {r['metrics_bytes'] / 2**20:,.1f} MiB, {r['metrics_lines']:,} lines, "
            f"{r['metrics_seconds']:.2f} s"
        )
    if r.get("output_bytes"):
        per_round = np.median(r["output_bytes"])
        print(
            f"  remote_write out: {per_round / 2**20:,.1f} MiB compressed in "
            f"{np.median(r['output_requests']):,.0f} requests "
            f"per round ({per_round / n:,.1f} B/series/round, {8 * per_round / 15 / 1e6:,.1f} Mbit/s at 15 s)"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--per-request", type=int, default=2000, help="samples per request")
    parser.add_argument("--shards", type=int, default=4, help="concurrent connections")
    parser.add_argument("--checkpoint-interval", type=float, default=20.0)
    parser.add_argument(
        "--output-remote-write", action="store_true", help="send scores to a counting receiver"
    )
    parser.add_argument(
        "--drain", type=float, default=5.0, help="seconds after each round for the output to drain"
    )
    parser.add_argument("--config", default="{}", help="JSON merged into the service configuration")
    parser.add_argument("--max-rss-gib", type=float, default=18.0)
    parser.add_argument("--tmp", default=None, help="folder for the state file")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--encode-only", action="store_true", help="only time encoding the score output")
    args = parser.parse_args(argv)
    if args.encode_only:
        encode_cost(max(args.series))
        return
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    print(f"machine: {machine()}; {os.cpu_count()} CPUs, {memory:.0f} GiB; {platform.platform()}")
    print(
        f"{args.rounds} rounds per count, requests of {args.per_request} samples over "
        f"{args.shards} connections; extra config {args.config}"
    )
    labels = series_bytes(max(args.series))
    results = []
    for n in args.series:
        print(f"{n:,} series ...", flush=True)
        results.append(measure(n, args, labels))
        report(results[-1])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

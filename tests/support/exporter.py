"""A tiny exporter of the tests' own for Prometheus to scrape: normal noise, then an injected spike."""

from __future__ import annotations

import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from tests.support.prometheus import openmetrics


class NoisyExporter:
    """Serves ``/metrics`` with gauges around ``level`` (Gaussian noise); :meth:`spike` shifts them.

    >>> exporter = NoisyExporter("demo_latency_ms", level=100.0, port=0)
    >>> exporter.url.startswith("127.0.0.1:")
    True
    >>> exporter.stop()
    """

    def __init__(self, metric: str, level: float, port: int, series: int = 1, noise: float = 2.0) -> None:
        self.metric = metric
        self.level = level
        self.noise = noise
        self.series = series
        self.offset = 0.0
        self._rng = np.random.default_rng(7)
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def render(self) -> str:
        values = self.level + self.offset + self._rng.normal(0.0, self.noise, self.series)
        lines = [f"# TYPE {self.metric} gauge"]
        lines += [f'{self.metric}{{path="/api/{i}"}} {value:.4f}' for i, value in enumerate(values)]
        return "\n".join(lines) + "\n"

    def history(self, seconds: float, job: str, seed: int) -> str:
        """``seconds`` of normal history of every series at 1 s steps, ending a minute ago, as OpenMetrics.

        Labelled as Prometheus labels the scrapes of ``job``, to backfill before it starts, so that a
        detector warm-starts from it.
        """
        rng = np.random.default_rng(seed)
        end = math.floor(time.time()) - 60
        stamps = np.arange(end - seconds, end, 1.0)
        return openmetrics(
            (
                {"__name__": self.metric, "job": job, "instance": self.url, "path": f"/api/{i}"},
                stamps,
                self.level + rng.normal(0.0, self.noise, len(stamps)),
            )
            for i in range(self.series)
        )

    def spike(self, offset: float) -> None:
        self.offset = offset

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

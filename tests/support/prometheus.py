"""A real Prometheus (``/usr/bin/prometheus``) for tests: loopback only, a free port, a temp data dir.

``start_prometheus(tmp_path, scrape_configs=[scrape_config("app", ["127.0.0.1:8000"])])``
starts it and waits until ``/-/ready``; ``backfill=openmetrics(...)`` first writes
history into its data directory with ``promtool tsdb create-blocks-from openmetrics``,
so range queries see fixed data without waiting for scrapes.  Use the handle as a
context manager, or call ``stop()``; ``restart()`` starts it again on the same port
with the same storage (an outage).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of asking)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape_config(job: str, targets: Sequence[str], interval: str = "1s") -> dict[str, Any]:
    """One ``scrape_configs`` entry: ``job`` scraping ``targets`` (``host:port``) every ``interval``.

    >>> scrape_config("app", ["127.0.0.1:8000"], "5s")["static_configs"]
    [{'targets': ['127.0.0.1:8000']}]
    """
    return {
        "job_name": job,
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "static_configs": [{"targets": list(targets)}],
    }


def _number(value: float) -> str:
    # OpenMetrics spells the special values NaN, +Inf and -Inf.
    if value != value:
        return "NaN"
    if abs(value) == float("inf"):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def openmetrics(series: Iterable[tuple[Mapping[str, str], Iterable[float], Iterable[float]]]) -> str:
    """OpenMetrics text of gauges from ``(labels with __name__, timestamps, values)`` triples.

    >>> print(openmetrics([({"__name__": "demo", "job": "a"}, [60.0, 120.0], [1.5, float("nan")])]))
    # TYPE demo gauge
    demo{job="a"} 1.5 60.0
    demo{job="a"} NaN 120.0
    # EOF
    <BLANKLINE>
    """
    families: dict[str, list[str]] = {}
    for labels, stamps, values in series:
        name = labels["__name__"]
        pairs = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        families.setdefault(name, []).extend(
            f"{name}{{{pairs}}} {_number(x)} {float(t)!r}" for t, x in zip(stamps, values, strict=True)
        )
    # A metric family's samples must be contiguous, after its TYPE line.
    lines = [line for name, samples in families.items() for line in (f"# TYPE {name} gauge", *samples)]
    return "\n".join([*lines, "# EOF"]) + "\n"


class PrometheusHandle:
    """A running Prometheus from :func:`start_prometheus`: ``url`` to query, ``stop()`` to end it.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as scratch:
    ...     prometheus = start_prometheus(Path(scratch), remote_write_receiver=False)
    ...     print(prometheus.url.startswith("http://127.0.0.1:"))
    ...     prometheus.stop()
    ...     prometheus.stop()  # a second stop does nothing
    ...     print(prometheus.process.returncode)
    ...     url = prometheus.url
    ...     prometheus.restart()
    ...     print(prometheus.url == url, httpx.get(url + "/-/ready").status_code)
    ...     prometheus.stop()
    True
    0
    True 200
    """

    def __init__(self, command: Sequence[str], url: str, data_dir: Path, log_path: Path) -> None:
        self.command = list(command)
        self.url = url
        self.data_dir = data_dir
        self.log_path = log_path
        self.process = self._launch()

    def _launch(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float) -> None:
        """Wait until ``/-/ready`` answers 200; stops it and raises if it exits or takes too long."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with status {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"prometheus at {self.url} not ready after {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def restart(self, ready_timeout: float = 30.0) -> None:
        """Start it again after :meth:`stop`: same port, config and storage; waits until ready."""
        if self.process.poll() is None:
            raise RuntimeError(f"prometheus at {self.url} is still running; stop() it first")
        self.process = self._launch()
        self.wait_ready(ready_timeout)

    def log(self) -> str:
        """Prometheus's own log so far (for assertion messages)."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Stop Prometheus (SIGTERM, then SIGKILL after 10 s); safe to call twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> PrometheusHandle:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


def _backfill(text: str, directory: Path, data_dir: Path) -> None:
    source = directory / "backfill.om"
    source.write_text(text)
    # One block for up to 10 days instead of one per 2 hours: Prometheus then opens a handful of
    # blocks at start-up rather than compacting a hundred.
    command = [PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=240h"]
    completed = subprocess.run(
        [*command, str(source), str(data_dir)], capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"promtool could not backfill {source}:\n{completed.stderr}")


def start_prometheus(
    directory: Path,
    scrape_configs: Sequence[Mapping[str, Any]] = (),
    extra_args: Sequence[str] = (),
    backfill: str | None = None,
    remote_write_receiver: bool = True,
    ready_timeout: float = 30.0,
    remote_write: Sequence[Mapping[str, Any]] = (),
) -> PrometheusHandle:
    """Start Prometheus on 127.0.0.1 with its config, data and log under ``directory``.

    Parameters
    ----------
    directory
        A fresh directory (``tmp_path``) for ``prometheus.yml``, ``data/`` and ``prometheus.log``.
    scrape_configs
        Prometheus ``scrape_configs`` entries, e.g. from :func:`scrape_config`.
    extra_args
        More command-line flags, appended last so they override the defaults.
    backfill
        OpenMetrics text (see :func:`openmetrics`) written into the TSDB before start.
    remote_write_receiver
        Accept samples on ``/api/v1/write``.
    ready_timeout
        Seconds to wait for ``/-/ready``.
    remote_write
        Prometheus ``remote_write`` entries (where this Prometheus sends its samples).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as scratch, start_prometheus(Path(scratch)) as prometheus:
    ...     httpx.get(prometheus.url + "/-/ready").status_code
    200
    """
    if shutil.which(PROMETHEUS) is None:
        raise RuntimeError(f"{PROMETHEUS} is not installed; apt-get install prometheus")
    directory = Path(directory)
    data_dir = directory / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    if backfill is not None:
        _backfill(backfill, directory, data_dir)
    config = directory / "prometheus.yml"
    # JSON is YAML, and needs no YAML writer.
    settings = {"scrape_configs": list(scrape_configs), "remote_write": list(remote_write)}
    config.write_text(json.dumps(settings, indent=2))
    url = f"http://127.0.0.1:{free_port()}"
    command = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address={url.removeprefix('http://')}",
        # Retention counts back from the newest data; keep backfilled history of any age.
        "--storage.tsdb.retention.time=100y",
        *(["--web.enable-remote-write-receiver"] if remote_write_receiver else []),
        *extra_args,
    ]
    log_path = directory / "prometheus.log"
    log_path.write_bytes(b"")
    handle = PrometheusHandle(command, url, data_dir, log_path)
    handle.wait_ready(ready_timeout)
    return handle

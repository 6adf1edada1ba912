"""Start the project's own service on loopback: a real process (``anomaly-detector run``) or a thread."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.settings import ServiceSettings
from tests.support.net import free_port


@contextmanager
def serve_in_thread(settings: ServiceSettings) -> Iterator[str]:
    """The app under uvicorn in a thread on 127.0.0.1; yields its URL and stops it after."""
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=free_port(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the service did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(20)


class ServiceProcess:
    """``python -m service run --config FILE [ARGS]`` on 127.0.0.1; output goes to ``log_path``.

    A service serving TLS or asking for credentials (``--web.config.file``) is
    reached with ``scheme="https"`` and httpx's ``verify``/``auth`` in ``client``.
    """

    def __init__(
        self,
        config: Path,
        log_path: Path,
        port: int | None = None,
        args: Sequence[str] = (),
        scheme: str = "http",
        **client: Any,
    ) -> None:
        self.config = config
        self.port = port or free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.args = list(args)
        self.client = client
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: float = 60.0) -> ServiceProcess:
        log = self.log_path.open("ab")
        root = Path(__file__).resolve().parents[2]
        command = [sys.executable, "-m", "service", "run", "--config", str(self.config)]
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port), *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
        self.wait_for("/-/ready", wait_ready)
        return self

    def wait_for(self, path: str, timeout: float) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}; see {self.log_path}")
            try:
                response = httpx.get(self.url + path, timeout=2.0, **self.client)
                if response.status_code == 200:
                    return response
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url}{path} not 200 after {timeout}s; see {self.log_path}")
            time.sleep(0.2)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=5.0, **self.client)

    def metric(self, name: str, **labels: str) -> float | None:
        """The value at ``/metrics`` of the sample ``name`` whose labels include ``labels``; None if absent.

        Counters are named with their ``_total`` suffix.
        """
        response = self.get("/metrics")
        response.raise_for_status()
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    return float(sample.value)
        return None

    def log(self) -> str:
        """The service's output so far."""
        return self.log_path.read_text(errors="replace")

    def memory(self, field: str = "VmRSS") -> int:
        """Bytes of memory from ``/proc/<pid>/status``: ``VmRSS`` resident now, ``VmHWM`` at the peak."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = next(line.split()[1] for line in status.splitlines() if line.startswith(f"{field}:"))
        return int(kib) * 1024

    def cpu_seconds(self) -> float:
        """CPU time the process has used so far, user and system."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def kill(self) -> None:
        """SIGKILL: no chance to save state (the restart test's worst case)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, as a service manager would: the service saves state on the way out.

        SIGKILL if it has not exited after ``timeout`` seconds.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

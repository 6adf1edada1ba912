"""The service as a benchmark runs it: ``python -m service run`` on a free loopback port.

Shared by ``benchmarks/load.py`` and ``benchmarks/scaling.py``, which measure
the real process (its requests, RSS and CPU time) rather than the engine in
this interpreter.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


class ServiceProcess:
    """The service started with ``config`` (written as YAML's JSON subset), its log and state in ``folder``.

    Example (not run here: it starts a process)::

        service = ServiceProcess(folder, {"store": str(folder / "state.db"), "detectors": [...]})
        service.wait_ready()
        rss = service.status("VmRSS")
        service.stop()
    """

    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        path = folder / "service.yaml"
        path.write_text(json.dumps(config))
        self.log_path = folder / "service.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "run", "--config", str(path), "--port", str(self.port)],
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

    def wait_ready(self, timeout: float) -> None:
        """Until ``/-/ready`` answers 200; exits the benchmark if the process dies or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the service exited with {self.process.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the service was not ready after {timeout:g} s; see {self.log_path}")

    def status(self, field_name: str) -> int:
        """A ``/proc/<pid>/status`` figure in bytes (VmRSS, VmHWM)."""
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = next(line.split()[1] for line in text.splitlines() if line.startswith(field_name + ":"))
        return int(kib) * 1024

    def cpu_seconds(self) -> float:
        """CPU time the process has used, user and system."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    @staticmethod
    def metric(text: str, name: str) -> float | None:
        """The value of an unlabelled sample ``name`` in a ``/metrics`` text (None if absent)."""
        found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else None

    def stop(self, timeout: float) -> None:
        """SIGTERM (the service checkpoints on it), then SIGKILL after ``timeout`` seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()

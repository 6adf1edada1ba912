"""Start the real Alertmanager for a test, routing every alert to one webhook.

>>> binary = alertmanager_binary()
>>> binary is None or binary.endswith("alertmanager")
True

Typical use, with a :class:`tests.support.net.Receiver` as the webhook::

    with Receiver() as receiver, start_alertmanager(tmp_path, receiver.url + "/am") as am:
        httpx.post(am.url + "/api/v2/alerts", json=[...])
        receiver.wait_for(lambda requests: len(requests) >= 1)

The configuration sends each alert group as soon as it changes
(``group_wait: 0s``, ``group_interval: 1s``), never repeats an unchanged one
within a test (``repeat_interval: 24h``), groups by every label by default
(each alert its own notification) and sends resolutions.  Alertmanager binds
only its web port on 127.0.0.1 (``--cluster.listen-address=`` disables the
gossip port) and keeps its state in a fresh directory under ``tmp_path``.

:func:`start_alertmanager_cluster` starts peers that gossip on 127.0.0.1 and
returns once every peer sees all of them and has settled, as a highly
available Alertmanager runs: each sends a notification only if no peer ahead
of it (``--cluster.peer-timeout`` apart) already did.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

from tests.support.net import free_port

DEFAULT_BINARY = "/usr/bin/prometheus-alertmanager"


def alertmanager_binary() -> str | None:
    """The Alertmanager executable: ``$ALERTMANAGER``, the Debian path or one on ``PATH``."""
    for candidate in (os.environ.get("ALERTMANAGER"), DEFAULT_BINARY):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("alertmanager") or shutil.which("prometheus-alertmanager")


@dataclass
class AlertmanagerHandle:
    """A running Alertmanager; :meth:`stop` ends it (also on leaving a ``with`` block)."""

    url: str
    process: subprocess.Popen[bytes]
    directory: Path
    log_path: Path

    def log(self) -> str:
        """Everything Alertmanager has logged so far."""
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict[str, Any]:
        """``GET /api/v2/status``: among others ``cluster.status`` and ``cluster.peers``."""
        response = httpx.get(f"{self.url}/api/v2/status", timeout=5)
        response.raise_for_status()
        status: dict[str, Any] = response.json()
        return status

    def alerts(self) -> list[dict[str, object]]:
        """The alerts Alertmanager currently holds (``GET /api/v2/alerts``)."""
        response = httpx.get(f"{self.url}/api/v2/alerts", timeout=5)
        response.raise_for_status()
        alerts: list[dict[str, object]] = response.json()
        return alerts

    def stop(self) -> None:
        """Terminate the process and wait for it; idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def __enter__(self) -> AlertmanagerHandle:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


def write_config(
    path: Path,
    webhook_url: str,
    *,
    group_by: Sequence[str] = ("...",),
    group_wait: str = "0s",
    group_interval: str = "1s",
    repeat_interval: str = "24h",
) -> Path:
    """An Alertmanager configuration routing everything to ``webhook_url``."""
    config = {
        "route": {
            "receiver": "webhook",
            "group_by": list(group_by),
            "group_wait": group_wait,
            "group_interval": group_interval,
            "repeat_interval": repeat_interval,
        },
        "receivers": [
            {"name": "webhook", "webhook_configs": [{"url": webhook_url, "send_resolved": True}]},
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _executable(binary: str | None) -> str:
    executable = binary or alertmanager_binary()
    if executable is None:
        raise FileNotFoundError("Alertmanager is not installed; apt-get install prometheus-alertmanager")
    return executable


def _launch(
    executable: str, directory: Path, config: Path, port: int, cluster: Sequence[str]
) -> AlertmanagerHandle:
    (directory / "data").mkdir(parents=True, exist_ok=True)
    log_path = directory / f"alertmanager-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                executable,
                f"--config.file={config}",
                f"--storage.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                *cluster,
                "--log.level=info",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return AlertmanagerHandle(f"http://127.0.0.1:{port}", process, directory, log_path)


def start_alertmanager(
    tmp_path: Path,
    webhook_url: str,
    *,
    group_by: Sequence[str] = ("...",),
    ready_timeout: float = 20.0,
    binary: str | None = None,
) -> AlertmanagerHandle:
    """Start Alertmanager on 127.0.0.1 (a free port) and wait until ``/-/ready`` answers 200.

    Raises ``FileNotFoundError`` if no binary is installed and ``RuntimeError``
    (with Alertmanager's log) if it does not become ready within ``ready_timeout``.
    """
    executable = _executable(binary)
    directory = Path(tmp_path) / f"alertmanager-{time.monotonic_ns()}"
    directory.mkdir(parents=True)
    config = write_config(directory / "alertmanager.yml", webhook_url, group_by=group_by)
    failure = ""
    # The free port can be taken between choosing and binding it: try another one then.
    for _ in range(3):
        handle = _launch(executable, directory, config, free_port(), ["--cluster.listen-address="])
        if _wait_ready(handle, ready_timeout):
            return handle
        handle.stop()
        failure = handle.log()
        if "address already in use" not in failure:
            break
    raise RuntimeError(f"Alertmanager did not become ready within {ready_timeout}s; its log:\n{failure}")


def start_alertmanager_cluster(
    tmp_path: Path,
    webhook_url: str,
    *,
    peers: int = 2,
    group_by: Sequence[str] = ("...",),
    group_wait: str = "0s",
    group_interval: str = "1s",
    peer_timeout: str = "2s",
    settle_timeout: float = 60.0,
    binary: str | None = None,
) -> list[AlertmanagerHandle]:
    """Start ``peers`` Alertmanagers that gossip with each other on 127.0.0.1, all routing to ``webhook_url``.

    Each lists every other one as ``--cluster.peer``.  Returns once every peer
    answers ``/-/ready``, reports cluster status ``ready`` (gossip settled)
    and sees all ``peers`` members; raises ``RuntimeError`` with their logs
    otherwise.  Gossip runs every 50 ms, so settling takes seconds, not a minute.
    The caller stops the handles (each is a context manager).
    """
    executable = _executable(binary)
    directory = Path(tmp_path) / f"alertmanager-cluster-{time.monotonic_ns()}"
    directory.mkdir(parents=True)
    config = write_config(
        directory / "alertmanager.yml",
        webhook_url,
        group_by=group_by,
        group_wait=group_wait,
        group_interval=group_interval,
    )
    gossip = [free_port() for _ in range(peers)]
    handles = []
    for index, port in enumerate(gossip):
        cluster = [
            f"--cluster.listen-address=127.0.0.1:{port}",
            f"--cluster.advertise-address=127.0.0.1:{port}",
            *(f"--cluster.peer=127.0.0.1:{other}" for other in gossip if other != port),
            f"--cluster.peer-timeout={peer_timeout}",
            "--cluster.gossip-interval=50ms",
            "--cluster.pushpull-interval=2s",
            "--cluster.reconnect-interval=1s",
        ]
        handles.append(_launch(executable, directory / f"peer-{index}", config, free_port(), cluster))
    deadline = time.monotonic() + settle_timeout
    try:
        for handle in handles:
            if not _wait_ready(handle, max(deadline - time.monotonic(), 0.1)):
                raise RuntimeError(f"Alertmanager {handle.url} did not become ready")
        while not all(_settled(handle, peers) for handle in handles):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Alertmanager cluster did not settle with {peers} peers")
            time.sleep(0.1)
    except RuntimeError as error:
        logs = "\n".join(f"--- {handle.url}\n{handle.log()}" for handle in handles)
        for handle in handles:
            handle.stop()
        raise RuntimeError(f"{error} within {settle_timeout}s; their logs:\n{logs}") from None
    return handles


def _settled(handle: AlertmanagerHandle, peers: int) -> bool:
    try:
        cluster = handle.status()["cluster"]
    except httpx.HTTPError:
        return False
    return bool(cluster.get("status") == "ready" and len(cluster.get("peers") or []) == peers)


def _wait_ready(handle: AlertmanagerHandle, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if handle.process.poll() is not None:
            return False
        try:
            if httpx.get(f"{handle.url}/-/ready", timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    return False

"""``make demo-check`` end to end: replayed incidents reach a real Alertmanager through the service.

Runs ``python -m service.demo --check`` as a real process: the replay
exporter, a real Prometheus (with backfilled history), a real Alertmanager and
the detector service.  Needs ``prometheus``, ``promtool`` and
``prometheus-alertmanager``; without them the test fails and says how to
install them (a demo that cannot run is a broken demo, not a skipped one).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.demo import DemoError, find_binaries
from service.replay_exporter import SCENARIOS

pytestmark = [pytest.mark.demo, pytest.mark.live]

ROOT = Path(__file__).resolve().parents[2]
#: The demo's own time box, and how long the test lets it take beyond that to stop.
TIME_BOX = 300.0
STOP_GRACE = 40.0


def _require_binaries() -> None:
    try:
        find_binaries()
    except DemoError as error:
        pytest.fail(f"the live demo cannot run: {error}")


def _start(workdir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "service.demo", "--workdir", str(workdir), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _finish(process: subprocess.Popen[str], timeout: float) -> str:
    """Wait for the demo; past ``timeout`` stop it as a user would (SIGTERM), then kill it."""
    try:
        output, _ = process.communicate(timeout=timeout)
        return output
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        pytest.fail(f"the demo did not finish within {timeout:g}s; its output:\n{output}")


def _left_running(workdir: Path, besides: int | None = None) -> list[str]:
    """Command lines of processes using the work directory, other than ``besides``."""
    left = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == besides:
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(workdir) in command:
            left.append(command)
    return left


def test_every_replayed_incident_alerts_in_alertmanager(tmp_path: Path) -> None:
    _require_binaries()
    workdir = tmp_path / "demo-live"
    started = time.monotonic()
    process = _start(workdir, "--check", "--timeout", str(TIME_BOX))
    output = _finish(process, TIME_BOX + STOP_GRACE)
    elapsed = time.monotonic() - started
    assert process.returncode == 0, f"demo --check exited with {process.returncode}:\n{output}"
    record = json.loads((workdir / "check.json").read_text())
    assert record["passed"], record
    for scenario in SCENARIOS:
        incident = record["incidents"][scenario.name]
        assert incident["false_alerts"] == [], f"{scenario.name}: alerted before its incident:\n{output}"
        assert incident["alerts"], f"{scenario.name}: no alert:\n{output}"
        assert incident["resolved_early"] == [], f"{scenario.name}: resolved during the incident:\n{output}"
        alert = incident["alerts"][0]
        labels = alert["labels"]
        assert labels["alertname"] == "AnomalyDetected"
        assert labels["detector"] == scenario.name
        assert labels["metric"] == scenario.metric
        assert {k: labels.get(k) for k in scenario.labels} == dict(scenario.labels)
        assert alert["annotations"]["series"] == scenario.key
    assert _left_running(workdir) == []
    print(f"demo --check passed in {elapsed:.0f}s")


def test_sigterm_stops_every_process_and_exits_0(tmp_path: Path) -> None:
    _require_binaries()
    workdir = tmp_path / "demo-live"
    process = _start(workdir, "--scenarios", "latency")
    assert process.stdout is not None
    lines = []
    deadline = time.monotonic() + 120
    for line in process.stdout:
        lines.append(line)
        if "replaying one recorded minute" in line or time.monotonic() > deadline:
            break
    assert any("replaying one recorded minute" in line for line in lines), "".join(lines)
    assert len(_left_running(workdir, besides=process.pid)) == 3, "Prometheus, Alertmanager, service"
    process.send_signal(signal.SIGTERM)
    output = "".join(lines) + _finish(process, STOP_GRACE)
    assert process.returncode == 0, output
    assert "stopped" in output
    assert _left_running(workdir) == []

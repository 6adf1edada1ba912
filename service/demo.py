"""The live demo in one command: replayed incidents, a real Prometheus and Alertmanager, the detector.

``python -m service.demo`` (``make demo``) starts, all on 127.0.0.1 and with
their files under ``out/demo-live/``:

1. the replay exporter (:mod:`service.replay_exporter`), which plays four
   recorded scenarios of ``replay_data/`` with one recorded minute every few
   seconds; the history before playback is backfilled into Prometheus with
   ``promtool tsdb create-blocks-from openmetrics``, ending now;
2. Prometheus, scraping the exporter and the detector every step;
3. Alertmanager (no cluster port, a receiver that sends nowhere);
4. the detector service (``python -m service run``) with one pull detector
   per scenario, warm-started from the backfilled history, sending alerts to
   that Alertmanager.

It prints where to look, then one line per incident that starts playing and
per alert that reaches Alertmanager (it polls ``/api/v2/alerts``).  Ctrl-C or
SIGTERM stops every process it started (SIGTERM, then SIGKILL after a grace
period) and exits 0.

``--check`` runs until every played incident has an alert in Alertmanager that
names its series (exit 0), or until ``--timeout`` (exit 1, saying what was
seen); an alert for a series before its labelled window is a false alert and
fails the check too.  Either way ``check.json`` in the work directory records
the alerts.  Exit status 2 means the demo could not start (for example
Prometheus is not installed).

Time runs fast, so the detector settings that count wall-clock time are scaled
to the replay speed; :func:`service_config` says which and why.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from detector.evaluation import Window, load_labels
from service.replay_exporter import (
    DEFAULT_DATA,
    SCENARIOS,
    Playback,
    ReplayExporter,
    Track,
    default_leads,
    scenario_named,
)

PROG = "python -m service.demo"
DEFAULT_WORKDIR = Path("out/demo-live")
INSTALL_HINT = (
    "install them with: sudo apt-get install --no-install-recommends prometheus prometheus-alertmanager "
    "(make demo does it), or point PROMETHEUS, PROMTOOL and ALERTMANAGER at the binaries"
)
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|z|[+-]\d\d:\d\d)")
#: Seconds a child gets to exit after SIGTERM before it is killed.
GRACE = 15.0


class DemoError(RuntimeError):
    """The demo cannot start or went wrong; the message says what to do."""


# --- the programs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binaries:
    """Where Prometheus, promtool and Alertmanager are."""

    prometheus: str
    promtool: str
    alertmanager: str


def _find(variable: str, *names: str) -> str | None:
    given = os.environ.get(variable)
    if given:
        return given if os.access(given, os.X_OK) else None
    return next((found for name in names if (found := shutil.which(name)) is not None), None)


def find_binaries() -> Binaries:
    """The three programs, from ``$PROMETHEUS``/``$PROMTOOL``/``$ALERTMANAGER`` or ``PATH``.

    Raises :class:`DemoError` naming what is missing and how to install it.
    """
    found = {
        "prometheus": _find("PROMETHEUS", "prometheus"),
        "promtool": _find("PROMTOOL", "promtool"),
        "alertmanager": _find("ALERTMANAGER", "prometheus-alertmanager", "alertmanager"),
    }
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise DemoError(f"not found: {', '.join(missing)}; {INSTALL_HINT}")
    return Binaries(**{name: str(path) for name, path in found.items()})


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Child:
    """A process the demo started, in its own process group, with its output in ``log_path``."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, name: str, command: Sequence[str], log_path: Path, cwd: Path | None = None) -> Child:
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                list(command),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                # Its own group: Ctrl-C reaches only the demo, which stops its children in order.
                process_group=0,
            )
        return cls(name, process, log_path)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = GRACE) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; safe to call twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def tail(self, lines: int = 15) -> str:
        """The last lines of its log, indented, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "    (no log)"
        return "\n".join("    " + line for line in text.splitlines()[-lines:])


# --- configuration files --------------------------------------------------------------------------------


def prometheus_config(step: float, exporter: str, service: str) -> dict[str, Any]:
    """Scrape the exporter and the detector every ``step`` seconds; keep their own job/instance labels."""

    def job(name: str, target: str) -> dict[str, Any]:
        return {"job_name": name, "honor_labels": True, "static_configs": [{"targets": [target]}]}

    return {
        "global": {"scrape_interval": f"{step:g}s", "scrape_timeout": f"{step:g}s"},
        "scrape_configs": [job("replay", exporter), job("anomaly-detector", service)],
    }


def alertmanager_config() -> dict[str, Any]:
    """Every alert to a receiver without integrations: nothing leaves the machine."""
    return {
        "route": {
            "receiver": "demo",
            "group_by": ["alertname", "detector"],
            "group_wait": "0s",
            "group_interval": "5s",
            "repeat_interval": "4h",
        },
        "receivers": [{"name": "demo"}],
    }


def _quoted(text: str) -> str:
    """A YAML single-quoted scalar (PromQL keeps its double quotes readable)."""
    return "'" + text.replace("'", "''") + "'"


def service_config(
    playback: Playback,
    prometheus_url: str,
    alertmanager_url: str,
    store: Path,
    external_url: str,
    history_end: float,
) -> str:
    """The detector service's YAML: one pull detector per scenario, the Alertmanager sink.

    Each detector's lookback covers its whole history (which ends at
    ``history_end``) with five minutes to spare for start-up.  The model is the
    default one; only settings that count wall-clock time are scaled (the
    comments in the file say why).
    """
    step = playback.step
    scale = step / 60.0

    def commented(line: str, comment: str) -> str:
        return f"{line:<34}# {comment}"

    lines = [
        f"# Written by {PROG} for one run; regenerated every time.",
        f"# Time runs fast: one recorded minute lasts {step:g} s, so settings that count wall-clock",
        f"# time are the defaults for 1-minute data scaled by {scale:.4g}.",
        f"prometheus: {{url: {_quoted(prometheus_url)}}}",
        f"store: {_quoted(str(store))}",
        "checkpoint_interval: 30s",
        f"external_url: {_quoted(external_url)}",
        "detectors:",
    ]
    for track in playback.tracks:
        lookback = math.ceil(track.start * step + (time.time() - history_end) + 300)
        lines += [
            f"  - name: {track.scenario.name}",
            f"    query: {_quoted(track.scenario.selector)}",
            commented(f"    interval: {step:g}s", "the scrape interval: one evaluation per recorded minute"),
            commented(f"    lookback: {lookback}s", "the backfilled history: warm at the first evaluation"),
            "    model: auto",
            "    model_params:",
            "      # A recorded day lasts 1440 steps; the weekday term reads the wall clock, so it is off.",
            f"      seasonal: {{period: {1440 * step:g}, weekly: false}}",
            "    alerting:",
            "      # The budget counts wall-clock weeks: this is the default (1 per recorded week)",
            "      # with recorded minutes played faster.",
            f"      false_alerts_per_week: {1.0 / scale:.4g}",
            commented(f"      resolve_after: {2 * step:g}s", "2 recorded minutes"),
            commented(f"      cooldown: {30 * step:g}s", "30 recorded minutes"),
            commented(f"      accept_shift_after: {120 * step:g}s", "2 recorded hours"),
            commented(f"      group_window: {2 * step:g}s", "2 recorded minutes"),
        ]
    lines += [
        "sinks:",
        f"  - {{type: alertmanager, name: alertmanager, url: {_quoted(alertmanager_url)}, lease: 5m}}",
    ]
    return "\n".join(lines) + "\n"


def graph_url(prometheus_url: str, playback: Playback) -> str:
    """A Prometheus graph page: each scenario with the detector's expected band, and the scores."""
    panels = [
        f'{{__name__=~"{t.scenario.metric}|anomaly_expected_lower|anomaly_expected_upper",'
        f'scenario="{t.scenario.name}"}}'
        for t in playback.tracks
    ]
    panels += ["anomaly_score", "replay_incident"]
    query: dict[str, str] = {}
    for i, expression in enumerate(panels):
        query.update({f"g{i}.expr": expression, f"g{i}.tab": "0", f"g{i}.range_input": "10m"})
    return f"{prometheus_url}/graph?{urllib.parse.urlencode(query)}"


# --- watching Alertmanager ------------------------------------------------------------------------------


@dataclass
class Incident:
    """What the demo knows about one scenario's incident while it plays."""

    track: Track
    window_start: float | None
    announced: bool = False
    ended: bool = False
    alerts: list[dict[str, Any]] = field(default_factory=list)
    false_alerts: list[dict[str, Any]] = field(default_factory=list)
    #: Alerts about this incident that resolved while it was still playing.
    resolved_early: list[dict[str, Any]] = field(default_factory=list)

    def names_series(self, alert: dict[str, Any]) -> bool:
        """Whether an Alertmanager alert is about this scenario's series."""
        labels = alert.get("labels", {})
        scenario = self.track.scenario
        return (
            labels.get("metric") == scenario.metric
            and all(labels.get(name) == value for name, value in scenario.labels.items())
            and labels.get("scenario") == scenario.name
        )


def _incident_window(labels: Mapping[str, list[Window]], track: Track) -> float | None:
    """Recorded start of the labelled window holding the track's incident, if labels.json has it."""
    onset = track.recorded_time(track.onset)
    for start, end in labels.get(track.scenario.recording, []):
        if start <= onset <= end:
            return float(start)
    return None


def _alert_line(alert: dict[str, Any]) -> str:
    annotations = alert.get("annotations", {})
    summary = annotations.get("summary") or annotations.get("series") or str(alert.get("labels"))
    details = [
        f"observed {annotations['observed']}" if "observed" in annotations else "",
        f"expected {annotations['expected_band']}" if "expected_band" in annotations else "",
        annotations.get("rarity", ""),
    ]
    shown = ", ".join(part for part in details if part)
    return f"{summary} ({shown})" if shown else summary


def rfc3339_seconds(text: str) -> float:
    """Unix seconds of an RFC 3339 time as Alertmanager writes it (up to nanoseconds).

    >>> rfc3339_seconds("2026-03-07T16:21:00.123456789Z")
    1772900460.123456
    """
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not an RFC 3339 time")
    whole, fraction, zone = match.groups()
    moment = datetime.fromisoformat(whole + (zone if zone not in ("Z", "z") else "+00:00"))
    return moment.timestamp() + float("0" + (fraction or ".0")[:7])


def _alert_start(alert: dict[str, Any]) -> float:
    try:
        return rfc3339_seconds(str(alert["startsAt"]))
    except (KeyError, ValueError):
        return math.nan


# --- the demo -------------------------------------------------------------------------------------------


class Demo:
    """One run of the demo; :meth:`run` returns the exit status."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.check: bool = args.check
        self.began = time.monotonic()
        self.stopping = threading.Event()
        self.children: list[Child] = []
        self.exporter: ReplayExporter | None = None
        self.workdir = Path(args.workdir).resolve()
        self.seen: dict[str, dict[str, Any]] = {}
        self.incidents: list[Incident] = []
        self.urls: dict[str, str] = {}

    # --- output ------------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.began:6.1f}s] {text}", flush=True)

    # --- lifetime ----------------------------------------------------------------------------------

    def _on_signal(self, number: int, frame: FrameType | None) -> None:
        if not self.stopping.is_set():
            print(f"\n{signal.Signals(number).name}: stopping the demo ...", flush=True)
        self.stopping.set()

    def run(self) -> int:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, self._on_signal)
        try:
            self._start()
            if self.stopping.is_set():
                return 0
            return self._watch()
        except DemoError as error:
            print(f"{PROG}: error: {error}", file=sys.stderr, flush=True)
            return 2
        finally:
            self._stop()

    def _stop(self) -> None:
        for child in reversed(self.children):
            if child.alive:
                child.stop()
        if self.exporter is not None:
            self.exporter.stop()
        if self.children:
            self.say(f"stopped; logs, configs and state are in {self.workdir}")

    # --- start-up ----------------------------------------------------------------------------------

    def _prepare_workdir(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Only what this demo writes: each run starts from fresh history and fresh detector state.
        for name in ("prometheus", "alertmanager"):
            shutil.rmtree(self.workdir / name, ignore_errors=True)
        for name in ("state.db", "state.db-wal", "state.db-shm", "check.json", "backfill.om"):
            (self.workdir / name).unlink(missing_ok=True)

    def _playback(self) -> Playback:
        names = [name.strip() for name in self.args.scenarios.split(",") if name.strip()]
        try:
            scenarios = [scenario_named(name) for name in names]
            leads = default_leads(len(scenarios), self.args.lead, self.args.stagger)
            return Playback(scenarios, self.args.speed, leads, Path(self.args.data))
        except ValueError as error:
            raise DemoError(str(error)) from None
        except OSError as error:
            raise DemoError(
                f"{self.args.data}: cannot read the recordings ({error}); use --data DIR"
            ) from None

    def _backfill(self, binaries: Binaries, playback: Playback) -> float:
        source = self.workdir / "backfill.om"
        end = math.floor(time.time())
        source.write_text(playback.history_openmetrics(end))
        data = self.workdir / "prometheus"
        data.mkdir()
        command = [
            binaries.promtool,
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            "--max-block-duration=24h",
            str(source),
            str(data),
        ]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise DemoError(f"promtool could not backfill {source}:\n{completed.stderr}{completed.stdout}")
        points = playback.history_points()
        hours = points * playback.step / 3600
        self.say(
            f"backfilled {sum(t.start for t in playback.tracks)} points of history "
            f"(up to {points} recorded minutes per scenario, {hours:.1f} h at this speed), ending now"
        )
        return float(end)

    def _port(self, given: int | None) -> int:
        return given if given else free_port()

    def _start(self) -> None:
        binaries = find_binaries()
        self._prepare_workdir()
        playback = self._playback()
        labels = load_labels(Path(self.args.data) / "labels.json")
        self.incidents = [Incident(t, _incident_window(labels, t)) for t in playback.tracks]
        ended = self._backfill(binaries, playback)
        step = playback.step
        exporter = ReplayExporter(playback, port=self.args.exporter_port or 0).start()
        self.exporter = exporter
        ports = {
            "prometheus": self._port(self.args.prometheus_port),
            "alertmanager": self._port(self.args.alertmanager_port),
            "service": self._port(self.args.service_port),
        }
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        urls["exporter"] = exporter.url
        self.urls = urls
        # JSON is YAML: Prometheus and Alertmanager read these as they are.
        prometheus_yml = self.workdir / "prometheus.yml"
        prometheus_yml.write_text(
            json.dumps(prometheus_config(step, exporter.address, f"127.0.0.1:{ports['service']}"), indent=2)
        )
        alertmanager_yml = self.workdir / "alertmanager.yml"
        alertmanager_yml.write_text(json.dumps(alertmanager_config(), indent=2))
        detector_yaml = self.workdir / "detector.yaml"
        detector_yaml.write_text(
            service_config(
                playback,
                urls["prometheus"],
                urls["alertmanager"],
                self.workdir / "state.db",
                urls["service"],
                ended,
            )
        )
        self.children.append(
            Child.start(
                "prometheus",
                [
                    binaries.prometheus,
                    f"--config.file={prometheus_yml}",
                    f"--storage.tsdb.path={self.workdir / 'prometheus'}",
                    f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
                    "--storage.tsdb.retention.time=30d",
                ],
                self.workdir / "prometheus.log",
            )
        )
        self.children.append(
            Child.start(
                "alertmanager",
                [
                    binaries.alertmanager,
                    f"--config.file={alertmanager_yml}",
                    f"--storage.path={self.workdir / 'alertmanager'}",
                    f"--web.listen-address=127.0.0.1:{ports['alertmanager']}",
                    f"--web.external-url={urls['alertmanager']}",
                    "--cluster.listen-address=",
                ],
                self.workdir / "alertmanager.log",
            )
        )
        root = Path(__file__).resolve().parents[1]
        self.children.append(
            Child.start(
                "detector service",
                [
                    sys.executable,
                    "-m",
                    "service",
                    "run",
                    "--config",
                    str(detector_yaml),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(ports["service"]),
                ],
                self.workdir / "service.log",
                cwd=root,
            )
        )
        prometheus, alertmanager, service = self.children
        self._wait_ready(prometheus, urls["prometheus"] + "/-/ready", self.args.ready_timeout)
        self._wait_ready(alertmanager, urls["alertmanager"] + "/-/ready", self.args.ready_timeout)
        if self.stopping.is_set():
            return
        self._show_urls(playback)
        self.say(
            f"the detector service warms up from up to {playback.history_points()} points of history "
            "per scenario; that takes a little while"
        )
        waiting = time.monotonic()
        self._wait_ready(service, urls["service"] + "/-/ready", self.args.ready_timeout)
        if self.stopping.is_set():
            return
        self.say(f"the detector service is ready (after {time.monotonic() - waiting:.0f}s)")
        playback.arm()
        self._show_schedule(playback)

    def _wait_ready(self, child: Child, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.stopping.is_set():
            if not child.alive:
                hint = ""
                log = child.tail(40)
                if "invalid choice: 'run'" in log:
                    hint = "\n(the service has no `run` command yet: the live service is not wired up)"
                raise DemoError(
                    f"{child.name} exited with status {child.process.returncode} before it was ready; "
                    f"its log ({child.log_path}):\n{child.tail()}{hint}"
                )
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise DemoError(
                    f"{child.name} was not ready at {url} within {timeout:g}s; "
                    f"its log ({child.log_path}):\n{child.tail()}"
                )
            self.stopping.wait(0.2)

    def _show_urls(self, playback: Playback) -> None:
        urls = self.urls
        lines = [
            "",
            "the live demo is running; look at:",
            f"  detector web page   {urls['service']}/",
            f"  detector API        {urls['service']}/api/v1/series",
            f"  Prometheus graph    {graph_url(urls['prometheus'], playback)}",
            f"  Alertmanager        {urls['alertmanager']}/api/v2/alerts"
            f"   (amtool --alertmanager.url={urls['alertmanager']} alert query)",
            f"  replay exporter     {urls['exporter']}/  and  {urls['exporter']}/metrics",
            f"  files and logs      {self.workdir}",
            "",
        ]
        print("\n".join(lines), flush=True)

    def _show_schedule(self, playback: Playback) -> None:
        lines = [f"replaying one recorded minute every {playback.step:g} s from the next scrape; incidents:"]
        for track, seconds in zip(
            playback.tracks, playback.seconds_to_incident(time.time()).values(), strict=True
        ):
            scenario = track.scenario
            lines.append(
                f"  in ~{seconds + playback.step:3.0f}s  {scenario.name:<12} {scenario.key}: "
                f"{scenario.story} (recorded {scenario.incident[0]} UTC)"
            )
        lines.append("" if self.check else "Ctrl-C stops everything.\n")
        print("\n".join(lines), flush=True)

    # --- running -----------------------------------------------------------------------------------

    def _watch(self) -> int:
        assert self.exporter is not None
        playback = self.exporter.playback
        deadline = None if self.args.timeout is None else self.began + self.args.timeout
        while not self.stopping.is_set():
            for child in self.children:
                if not child.alive:
                    self.say(
                        f"{child.name} exited with status {child.process.returncode}; "
                        f"its log ({child.log_path}):\n{child.tail()}"
                    )
                    self._write_check(False, f"{child.name} exited")
                    return 1
            self._announce(playback)
            self._poll_alerts(playback)
            if self.check:
                failed = [i for i in self.incidents if i.false_alerts]
                if failed:
                    self._report(playback, "false alert before the incident")
                    return 1
                if any(i.resolved_early for i in self.incidents):
                    self._report(playback, "an alert resolved while its incident was still playing")
                    return 1
                if all(i.alerts and i.ended for i in self.incidents):
                    self._success()
                    return 0
            if deadline is not None and time.monotonic() > deadline:
                if self.check:
                    self._report(playback, f"no alert for every incident within {self.args.timeout:g}s")
                    return 1
                self.say(f"--timeout {self.args.timeout:g}s reached")
                return 0
            self.stopping.wait(1.0)
        return 0

    def _announce(self, playback: Playback) -> None:
        now = time.time()
        for incident in self.incidents:
            track = incident.track
            index = playback.index(track, now)
            if index is None:
                continue
            if not incident.announced and index >= track.onset:
                incident.announced = True
                self.say(f"{track.scenario.name}: the incident starts playing ({track.scenario.story})")
            if not incident.ended and index >= track.incident_end:
                incident.ended = True
                self.say(f"{track.scenario.name}: the incident is over in the recording")

    def _poll_alerts(self, playback: Playback) -> None:
        try:
            response = httpx.get(self.urls["alertmanager"] + "/api/v2/alerts", timeout=5.0)
            response.raise_for_status()
            alerts: list[dict[str, Any]] = response.json()
        except (httpx.HTTPError, ValueError) as error:
            self.say(f"cannot read alerts from Alertmanager ({error}); retrying")
            return
        current = {str(a.get("fingerprint")): a for a in alerts}
        for fingerprint, alert in current.items():
            if fingerprint in self.seen:
                continue
            self.seen[fingerprint] = alert
            self.say(f"ALERT in Alertmanager: {_alert_line(alert)}{self._timing(alert, playback)}")
            for incident in self.incidents:
                if incident.names_series(alert):
                    start = _alert_start(alert)
                    window = self._window_wall_time(incident, playback)
                    if window is not None and start < window - playback.step:
                        incident.false_alerts.append(alert)
                    else:
                        incident.alerts.append(alert)
        for fingerprint, alert in list(self.seen.items()):
            if fingerprint not in current and not alert.get("_resolved"):
                alert["_resolved"] = True
                for incident in self.incidents:
                    if incident in self._alerted_by(alert) and not incident.ended:
                        incident.resolved_early.append(alert)
                self.say(
                    f"resolved in Alertmanager: {alert.get('annotations', {}).get('summary', fingerprint)}"
                )

    def _alerted_by(self, alert: dict[str, Any]) -> list[Incident]:
        """The incidents this alert counted for (not those it was a false alert of)."""
        return [i for i in self.incidents if any(a is alert for a in i.alerts)]

    def _window_wall_time(self, incident: Incident, playback: Playback) -> float | None:
        """Wall time at which the labelled window of the incident started playing."""
        if incident.window_start is None or playback.started_at is None:
            return None
        track = incident.track
        minutes = (incident.window_start - track.recorded_time(track.start)) / 60.0
        return playback.started_at + minutes * playback.step

    def _timing(self, alert: dict[str, Any], playback: Playback) -> str:
        for incident in self.incidents:
            if incident.names_series(alert) and playback.started_at is not None:
                track = incident.track
                onset = playback.started_at + (track.onset - track.start) * playback.step
                after = time.time() - onset
                when = "after" if after >= 0 else "before"
                return (
                    f"\n          {abs(after):.1f} s ({abs(after) / playback.step:.1f} recorded minutes) "
                    f"{when} the {track.scenario.name} incident started playing"
                )
        return ""

    def _write_check(self, passed: bool, reason: str) -> None:
        record = {
            "passed": passed,
            "reason": reason,
            "seconds": round(time.monotonic() - self.began, 1),
            "incidents": {
                i.track.scenario.name: {
                    "series": i.track.scenario.key,
                    "alerts": i.alerts,
                    "false_alerts": i.false_alerts,
                    "resolved_early": i.resolved_early,
                }
                for i in self.incidents
            },
            "alerts": [{k: v for k, v in a.items() if not k.startswith("_")} for a in self.seen.values()],
        }
        (self.workdir / "check.json").write_text(json.dumps(record, indent=2) + "\n")

    def _success(self) -> None:
        self.say(
            "check passed: every played incident has an alert in Alertmanager naming its series, "
            "active until the incident was over"
        )
        for incident in self.incidents:
            alert = incident.alerts[0]
            labels = ",".join(f"{k}={v}" for k, v in sorted(alert["labels"].items()))
            print(f"  {incident.track.scenario.name:<12} {labels}", flush=True)
        self._write_check(True, "every incident alerted")

    def _report(self, playback: Playback, reason: str) -> None:
        self.say(f"check FAILED: {reason}")
        now = time.time()
        positions = {name: stamp for name, stamp, _ in playback.current(now)}
        for incident in self.incidents:
            name = incident.track.scenario.name
            state = (
                "false alert before its window"
                if incident.false_alerts
                else "alerted"
                if incident.alerts
                else "no alert in Alertmanager"
            )
            print(f"  {name:<12} playing {positions.get(name, 'not started')}: {state}", flush=True)
        print(f"  alerts in Alertmanager: {len(self.seen)}", flush=True)
        for alert in self.seen.values():
            print(f"    {alert.get('labels')}", flush=True)
        try:
            flagged = httpx.get(self.urls["service"] + "/api/v1/series", timeout=5.0).json()
            for series in flagged:
                print(
                    f"  detector {series.get('key', series.get('labels'))}: "
                    f"score {series.get('anomaly_score')}, alert {series.get('alert')}",
                    flush=True,
                )
        except (httpx.HTTPError, ValueError) as error:
            print(f"  the detector's /api/v1/series could not be read ({error})", flush=True)
        service = next((c for c in self.children if c.name == "detector service"), None)
        if service is not None:
            print(f"  the service's log ({service.log_path}) ends:\n{service.tail(10)}", flush=True)
        self._write_check(False, reason)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Live demo: replayed incidents through a real Prometheus and Alertmanager "
        "to the detector service.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 0 once every played incident has had an alert in Alertmanager active until it ended, "
        "1 if one resolved early or --timeout passes first",
    )
    parser.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="stop after this long (--check: 300, else never)"
    )
    parser.add_argument(
        "--speed", type=float, default=3.0, metavar="SECONDS", help="real seconds per recorded minute (3)"
    )
    parser.add_argument(
        "--lead", type=float, default=15.0, metavar="MINUTES", help="recorded minutes before the 1st incident"
    )
    parser.add_argument(
        "--stagger", type=float, default=5.0, metavar="MINUTES", help="recorded minutes between incidents"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(s.name for s in SCENARIOS),
        metavar="NAMES",
        help="comma-separated, from: " + ", ".join(s.name for s in SCENARIOS),
    )
    parser.add_argument(
        "--workdir", type=Path, default=DEFAULT_WORKDIR, help="where files go (out/demo-live)"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the replay_data directory")
    for name in ("prometheus", "alertmanager", "service", "exporter"):
        parser.add_argument(f"--{name}-port", type=int, metavar="PORT", help="default: a free port")
    parser.add_argument("--ready-timeout", type=float, default=120.0, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit status (0 done, 1 check failed, 2 could not start)."""
    args = _parser().parse_args(argv)
    if args.check and args.timeout is None:
        args.timeout = 300.0
    if not 0.5 <= args.speed <= 60:
        print(
            f"{PROG}: error: --speed {args.speed:g} is out of range; use 0.5 to 60 seconds", file=sys.stderr
        )
        return 2
    return Demo(args).run()


if __name__ == "__main__":
    raise SystemExit(main())

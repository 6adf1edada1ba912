"""A Prometheus exporter that plays the recorded scenarios of ``replay_data/`` in accelerated time.

Each scenario is one recorded series (one point per recorded minute) served as
a gauge with labels that look like a real service's, e.g.
``http_requests_per_second{instance="web-1",job="shop",scenario="web_traffic"}``.
One recorded minute lasts ``seconds_per_minute`` real seconds, so a
labelled incident arrives within a minute or two instead of days.

Playback starts ``lead`` recorded minutes before a scenario's incident.  What
came before is history: :meth:`Playback.history_openmetrics` writes it as
OpenMetrics text on the same accelerated clock, ending at a given moment, for
``promtool tsdb create-blocks-from openmetrics`` to backfill into Prometheus.
A detector then warm-starts from Prometheus range queries at once and sees
history and live points on one regular grid.

Until :meth:`Playback.start` (or the first Prometheus scrape after
:meth:`Playback.arm`) the exporter serves no scenario series, so nothing is
scraped between the end of the history and the first live point.  Anchoring
playback to a scrape also puts every later scrape half a step away from the
moments the served point changes, so each scrape takes exactly one recorded
point.  Beside the scenario gauges it serves ``replay_recorded_timestamp_seconds``
(the recorded time being played) and ``replay_incident`` (1 inside the
scenario's incident), to graph against the detector's scores.

Run alone (``python -m service.replay_exporter --help``) it writes the
history file and serves ``/metrics``; ``python -m service.demo`` wires it to a
real Prometheus, Alertmanager and the detector service.
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from detector.labels import series_key
from detector.recorded import Recording, parse_timestamp, read_recording

#: replay_data/ beside the packages (the project is installed editable).
DEFAULT_DATA = Path(__file__).resolve().parents[1] / "replay_data"
#: Recorded points are one minute apart.
RECORDED_STEP = 60.0
#: The exposition format Prometheus scrapes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Scenario:
    """One recorded series, how it is exposed, and the labelled incident to play.

    ``incident`` is the incident itself (UTC, inclusive, as in replay_data's
    README); its labelled window in ``labels.json`` is a little wider.
    """

    name: str
    recording: str
    metric: str
    labels: Mapping[str, str]
    help: str
    incident: tuple[str, str]
    story: str

    @property
    def series_labels(self) -> dict[str, str]:
        """The exposed series' full label set, ``__name__`` included."""
        return {"__name__": self.metric, **self.labels, "scenario": self.name}

    @property
    def key(self) -> str:
        """The exposed series' key, as the detector names it."""
        return series_key(self.series_labels)

    @property
    def selector(self) -> str:
        """A PromQL selector for exactly this series."""
        return f'{self.metric}{{scenario="{self.name}"}}'


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="web_traffic",
        recording="web_traffic/http_requests_per_second.csv",
        metric="http_requests_per_second",
        labels={"job": "shop", "instance": "web-1"},
        help="Requests per second served by the shop's web tier (replayed).",
        incident=("2026-03-07 16:20:00", "2026-03-07 16:44:00"),
        story="upstream outage, traffic drops to ~40%",
    ),
    Scenario(
        name="latency",
        recording="latency/api_p99_latency_seconds.csv",
        metric="http_request_latency_p99_seconds",
        labels={"job": "api", "instance": "api-1"},
        help="99th percentile latency of the API's requests in seconds (replayed).",
        incident=("2026-03-07 09:20:00", "2026-03-07 09:29:00"),
        story="latency spike to ~4x",
    ),
    Scenario(
        name="error_ratio",
        recording="error_ratio/http_5xx_ratio.csv",
        metric="http_requests_5xx_ratio",
        labels={"job": "checkout", "instance": "checkout-1"},
        help="Share of the checkout's requests answered with a 5xx status (replayed).",
        incident=("2026-03-06 11:05:00", "2026-03-06 11:19:00"),
        story="error burst to ~5%",
    ),
    Scenario(
        name="queue_lag",
        recording="queue_lag/consumer_lag_messages.csv",
        metric="consumer_lag_messages",
        labels={"job": "orders-consumer", "instance": "consumer-1", "topic": "orders"},
        help="Messages waiting for the orders consumer (replayed).",
        incident=("2026-03-07 13:40:00", "2026-03-07 14:19:00"),
        story="consumer stuck, lag grows to ~6650",
    ),
)


def scenario_named(name: str) -> Scenario:
    """The built-in scenario called ``name``; ValueError lists the others.

    >>> scenario_named("latency").metric
    'http_request_latency_p99_seconds'
    >>> scenario_named("disk")
    Traceback (most recent call last):
    ...
    ValueError: no scenario 'disk'; choose from web_traffic, latency, error_ratio, queue_lag
    """
    for scenario in SCENARIOS:
        if scenario.name == name:
            return scenario
    raise ValueError(f"no scenario {name!r}; choose from {', '.join(s.name for s in SCENARIOS)}")


def _number(value: float) -> str:
    return repr(float(value))


def _labels_text(labels: Mapping[str, str]) -> str:
    return series_key({k: v for k, v in labels.items() if k != "__name__"})


@dataclass
class Track:
    """One scenario's recording and where its playback starts (indexes into the recording)."""

    scenario: Scenario
    recording: Recording
    start: int
    onset: int
    incident_end: int
    _finite: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._finite = np.isfinite(self.recording.values)

    def recorded_time(self, index: int) -> float:
        """Recorded Unix time of point ``index``."""
        return float(self.recording.t[index])

    def value(self, index: int) -> float | None:
        """The recorded value at ``index``; None for a gap or past the end."""
        if not 0 <= index < len(self.recording) or not self._finite[index]:
            return None
        return float(self.recording.values[index])


class Playback:
    """The scenarios on one accelerated clock: history to backfill, then live points.

    Parameters
    ----------
    scenarios
        What to play.
    seconds_per_minute
        Real seconds one recorded minute lasts (the points' spacing).
    leads
        Per scenario, recorded minutes played before its incident starts.
    data
        The ``replay_data`` directory.

    Examples
    --------
    >>> playback = Playback(SCENARIOS[:1], seconds_per_minute=3.0, leads=[15])
    >>> text = playback.history_openmetrics(end=1_800_000_000.0)
    >>> text.splitlines()[2]  # the first recorded minute, 8164 minutes before the end
    'http_requests_per_second{instance="web-1",job="shop",scenario="web_traffic"} 394.09 1799975508.000'
    >>> playback.render(1_800_000_001.0).count("http_requests_per_second{")  # not started yet
    0
    >>> playback.start(1_800_000_003.0)
    >>> playback.current(1_800_000_004.4)[0]  # 15 recorded minutes before the outage
    ('web_traffic', '2026-03-07 16:05:00', 767.67)
    >>> playback.seconds_to_incident(1_800_000_003.0)
    {'web_traffic': 45.0}
    """

    def __init__(
        self,
        scenarios: Sequence[Scenario],
        seconds_per_minute: float,
        leads: Sequence[float],
        data: Path = DEFAULT_DATA,
    ) -> None:
        if not seconds_per_minute > 0:
            raise ValueError(f"seconds_per_minute must be positive, got {seconds_per_minute!r}")
        if len(leads) != len(scenarios):
            raise ValueError(f"one lead per scenario: {len(scenarios)} scenarios, {len(leads)} leads")
        self.step = float(seconds_per_minute)
        self.tracks = [self._track(s, lead, Path(data)) for s, lead in zip(scenarios, leads, strict=True)]
        self.started_at: float | None = None
        self._armed = False
        self._lock = threading.Lock()

    @staticmethod
    def _track(scenario: Scenario, lead: float, data: Path) -> Track:
        recording = read_recording(data / scenario.recording, scenario.recording)
        first, last = (parse_timestamp(text) for text in scenario.incident)
        onset = int(np.searchsorted(recording.t, first))
        end = int(np.searchsorted(recording.t, last, side="right"))
        start = onset - round(lead)
        if not (0 < start < onset < len(recording)) or lead < 1:
            raise ValueError(
                f"{scenario.name}: a lead of {lead:g} recorded minutes does not fit the recording; "
                f"use 1 to {onset - 1} minutes"
            )
        return Track(scenario, recording, start, onset, end)

    # --- history ----------------------------------------------------------------------------------

    def history_points(self) -> int:
        """Points of history of the longest track (what a warm start must cover)."""
        return max(track.start for track in self.tracks)

    def history_openmetrics(self, end: float) -> str:
        """Every track's points before its playback start as OpenMetrics gauges, the last one at ``end``.

        Gaps (NaN in the recording) are left out, as a missed scrape leaves no sample.
        """
        lines: list[str] = []
        for track in self.tracks:
            scenario = track.scenario
            lines += [f"# HELP {scenario.metric} {scenario.help}", f"# TYPE {scenario.metric} gauge"]
            labels = _labels_text(scenario.series_labels)
            index = np.arange(track.start)
            stamps = end - (track.start - 1 - index) * self.step
            values = track.recording.values[: track.start]
            keep = np.isfinite(values)
            lines += [
                f"{scenario.metric}{labels} {_number(x)} {t:.3f}"
                for t, x in zip(stamps[keep], values[keep], strict=True)
            ]
        lines.append("# EOF")
        return "\n".join(lines) + "\n"

    # --- the live clock ---------------------------------------------------------------------------

    def arm(self) -> None:
        """Start playing at the next Prometheus scrape (see :meth:`scraped`)."""
        with self._lock:
            self._armed = True

    def scraped(self, now: float) -> None:
        """Called for every scrape by Prometheus; the first one after :meth:`arm` starts playback."""
        with self._lock:
            if self._armed and self.started_at is None:
                self.started_at = now

    def start(self, now: float) -> None:
        """Play the first live point from ``now`` on (idempotent)."""
        with self._lock:
            if self.started_at is None:
                self.started_at = now

    @property
    def started(self) -> bool:
        return self.started_at is not None

    def offset(self, now: float) -> int | None:
        """Live points played so far minus one (the one being served); None before the start.

        Point ``k`` is served from half a step before ``started_at + k * step`` to
        half a step after, so scrapes on the step grid each take exactly one point.
        """
        if self.started_at is None:
            return None
        return max(0, math.floor((now - self.started_at) / self.step + 0.5))

    def index(self, track: Track, now: float) -> int | None:
        """Index into the track's recording served at ``now``; None before the start."""
        offset = self.offset(now)
        return None if offset is None else track.start + offset

    def current(self, now: float) -> list[tuple[str, str, float | None]]:
        """Per track: scenario name, recorded timestamp and value served at ``now``."""
        out = []
        for track in self.tracks:
            index = self.index(track, now)
            if index is None or index >= len(track.recording):
                continue
            out.append((track.scenario.name, track.recording.timestamps[index], track.value(index)))
        return out

    def seconds_to_incident(self, now: float) -> dict[str, float]:
        """Per track: real seconds from ``now`` until its incident's first point is served."""
        origin = self.started_at if self.started_at is not None else now
        return {
            track.scenario.name: origin + (track.onset - track.start) * self.step - now
            for track in self.tracks
        }

    def in_incident(self, track: Track, index: int) -> bool:
        """Whether recording point ``index`` lies in the scenario's incident."""
        return track.onset <= index < track.incident_end

    # --- exposition -------------------------------------------------------------------------------

    def render(self, now: float) -> str:
        """The ``/metrics`` text at ``now``."""
        served: list[tuple[Track, int, float]] = []
        for track in self.tracks:
            index = self.index(track, now)
            value = None if index is None else track.value(index)
            if index is not None and value is not None:
                served.append((track, index, value))
        lines: list[str] = []
        for track, _, value in served:
            scenario = track.scenario
            lines += [
                f"# HELP {scenario.metric} {scenario.help}",
                f"# TYPE {scenario.metric} gauge",
                f"{scenario.metric}{_labels_text(scenario.series_labels)} {_number(value)}",
            ]
        meta = [
            (
                "replay_recorded_timestamp_seconds",
                "Recorded time (Unix seconds) of the point each scenario serves now.",
                lambda track, index: track.recorded_time(index),
            ),
            (
                "replay_incident",
                "1 while the scenario plays its labelled incident, else 0.",
                lambda track, index: float(self.in_incident(track, index)),
            ),
        ]
        for name, text, measure in meta:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge"]
            lines += [
                f'{name}{{scenario="{track.scenario.name}"}} {_number(measure(track, index))}'
                for track, index, _ in served
            ]
        lines += [
            "# HELP replay_seconds_per_minute Real seconds one recorded minute lasts.",
            "# TYPE replay_seconds_per_minute gauge",
            f"replay_seconds_per_minute {_number(self.step)}",
        ]
        return "\n".join(lines) + "\n"


class ReplayExporter:
    """Serves a :class:`Playback` over HTTP on ``host:port`` (port 0: the OS picks one).

    ``GET /metrics`` is the exposition; ``GET /`` says what is playing.  A
    request whose User-Agent is Prometheus's counts as a scrape (see
    :meth:`Playback.arm`).

    Examples
    --------
    >>> import httpx
    >>> playback = Playback(SCENARIOS[1:2], seconds_per_minute=2.0, leads=[10])
    >>> with ReplayExporter(playback, port=0) as exporter:
    ...     playback.start(time.time())
    ...     text = httpx.get(exporter.url + "/metrics").text
    >>> [line.split(" ")[0] for line in text.splitlines() if line.startswith("http_")]
    ['http_request_latency_p99_seconds{instance="api-1",job="api",scenario="latency"}']
    """

    def __init__(self, playback: Playback, host: str = "127.0.0.1", port: int = 0) -> None:
        self.playback = playback
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """``host:port``, as a Prometheus scrape target."""
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> ReplayExporter:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="replay-exporter", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> ReplayExporter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def index_page(self, now: float) -> str:
        """What ``GET /`` shows: each scenario, its series and what is being played."""
        playing = {name: (stamp, value) for name, stamp, value in self.playback.current(now)}
        lines = [
            "replay exporter: recorded scenarios from replay_data/ in accelerated time",
            f"one recorded minute every {self.playback.step:g} s; metrics at /metrics",
            "",
        ]
        for track in self.playback.tracks:
            scenario = track.scenario
            stamp, value = playing.get(scenario.name, ("not started", None))
            shown = "-" if value is None else f"{value:g}"
            lines += [
                f"{scenario.key}",
                f"    playing {stamp}  value {shown}",
                f"    incident {scenario.incident[0]} .. {scenario.incident[1]}: {scenario.story}",
            ]
        return "\n".join(lines) + "\n"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                now = time.time()
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    if self.headers.get("User-Agent", "").startswith("Prometheus/"):
                        exporter.playback.scraped(now)
                    self._send(200, exporter.playback.render(now), CONTENT_TYPE)
                elif path == "/":
                    self._send(200, exporter.index_page(now), "text/plain; charset=utf-8")
                else:
                    self._send(404, "not found; try /metrics\n", "text/plain; charset=utf-8")

            def _send(self, status: int, text: str, content_type: str) -> None:
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # A scrape every few seconds is not news.

        return Handler


def default_leads(count: int, first: float = 15.0, stagger: float = 5.0) -> list[float]:
    """Lead times so that incidents arrive one after another, ``stagger`` recorded minutes apart.

    >>> default_leads(3)
    [15.0, 20.0, 25.0]
    """
    return [first + stagger * i for i in range(count)]


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the scenarios alone: write the history file, then play from the first scrape."""
    parser = argparse.ArgumentParser(
        prog="python -m service.replay_exporter",
        description="Serve replay_data/'s scenarios as Prometheus metrics in accelerated time.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9108)
    parser.add_argument("--speed", type=float, default=3.0, metavar="SECONDS", help="per recorded minute")
    parser.add_argument("--lead", type=float, default=15.0, metavar="MINUTES", help="before the 1st incident")
    parser.add_argument("--stagger", type=float, default=5.0, metavar="MINUTES", help="between incidents")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the replay_data directory")
    parser.add_argument(
        "--backfill",
        type=Path,
        metavar="FILE",
        help="write the history as OpenMetrics here, for promtool tsdb create-blocks-from openmetrics",
    )
    args = parser.parse_args(argv)
    try:
        leads = default_leads(len(SCENARIOS), args.lead, args.stagger)
        playback = Playback(SCENARIOS, args.speed, leads, args.data)
    except (ValueError, OSError) as error:
        print(f"replay_exporter: error: {error}", file=sys.stderr)
        return 2
    if args.backfill is not None:
        args.backfill.write_text(playback.history_openmetrics(time.time()))
        print(f"history written to {args.backfill}; backfill it before Prometheus starts")
    playback.arm()
    with ReplayExporter(playback, args.host, args.port) as exporter:
        print(f"serving {exporter.url}/metrics; playback starts at the first Prometheus scrape")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    raise SystemExit(main())

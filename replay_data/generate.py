"""Regenerate the replay_data scenarios, their incidents and incident labels.

Each scenario is one week of per-minute samples of a single Prometheus-style
metric, with realistic normal behaviour and one or two labelled incidents.
The output is fully deterministic (fixed seeds), so re-running the script
rewrites identical files.

Usage:
    python replay_data/generate.py

Writes, relative to this file's directory:
    web_traffic/http_requests_per_second.csv
    latency/api_p99_latency_seconds.csv
    error_ratio/http_5xx_ratio.csv
    queue_lag/consumer_lag_messages.csv
    labels.json      (NAB combined_windows format: padded windows, for detection)
    incidents.json   (same format: the incidents' own times, for coverage)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

OUT_DIR = Path(__file__).resolve().parent
# 2026-03-02 is a Monday, so days 6 and 7 (Mar 7-8) are the weekend.
START = np.datetime64("2026-03-02T00:00", "m")
DAYS = 7
N = DAYS * 24 * 60
SEED = 20260302
WEEKEND_DAYS = (6, 7)


@dataclass(frozen=True)
class Window:
    """A span of rows, inclusive on both ends (as NAB windows are)."""

    start: int
    end: int

    @property
    def rows(self) -> slice:
        """Slice selecting the window's rows."""
        return slice(self.start, self.end + 1)

    @property
    def size(self) -> int:
        """Number of rows in the window."""
        return self.end - self.start + 1

    def padded(self, before: int, after: int) -> Window:
        """Widen the window, since detectors fire a little early or late."""
        return Window(max(0, self.start - before), min(N - 1, self.end + after))


@dataclass(frozen=True)
class Result:
    """A scenario's values, its incidents' own rows and their (wider) NAB label windows."""

    values: FloatArray
    incidents: list[Window]
    labels: list[Window]


def at(day: int, hour: int, minute: int = 0) -> int:
    """Row index of a wall-clock time; day 1 is the first day (2026-03-02)."""
    return (day - 1) * 1440 + hour * 60 + minute


def timestamps() -> list[str]:
    """One ISO-8601 UTC timestamp per row, without a timezone suffix."""
    minutes = START + np.arange(N).astype("timedelta64[m]")
    return [s.replace("T", " ") for s in np.datetime_as_string(minutes, unit="s")]


def daily_profile() -> FloatArray:
    """Load shape in [0, 1]: 0 at the 04:00 trough, 1 at the 16:00 peak.

    The exponent flattens the night so load stays near its floor for a few
    hours instead of dipping at a single instant.
    """
    hour = (np.arange(N) % 1440) / 60.0
    return ((1.0 - np.cos(2.0 * np.pi * (hour - 4.0) / 24.0)) / 2.0) ** 1.4


def weekend_factor(weekend: float) -> FloatArray:
    """Multiplier that is `weekend` on Saturday and Sunday, 1 otherwise."""
    day = np.arange(N) // 1440 + 1
    return np.where(np.isin(day, WEEKEND_DAYS), weekend, 1.0)


def ar1(rng: np.random.Generator, phi: float, sigma: float) -> FloatArray:
    """Slow random drift, so consecutive days are not carbon copies."""
    shocks = rng.normal(0.0, sigma, N)
    out = np.empty(N)
    out[0] = shocks[0]
    for i in range(1, N):
        out[i] = phi * out[i - 1] + shocks[i]
    return out


def web_traffic(rng: np.random.Generator) -> Result:
    """Request rate: daily and weekly seasonality, one upstream outage."""
    level = 1200.0 * (0.2 + 0.8 * daily_profile()) * weekend_factor(0.65)
    level *= np.exp(ar1(rng, 0.995, 0.004))
    # Relative noise is constant, so absolute noise grows with traffic.
    values = level * (1.0 + rng.normal(0.0, 0.03, N))

    # An upstream outage: only ~40% of clients still reach us.
    drop = Window(at(6, 16, 20), at(6, 16, 44))
    values[drop.rows] *= rng.uniform(0.37, 0.43, drop.size)

    # Prometheus missed five scrapes; the series has holes, not zeros.
    values[Window(at(2, 10, 0), at(2, 10, 4)).rows] = np.nan
    return Result(values, [drop], [drop.padded(10, 10)])


def latency(rng: np.random.Generator) -> Result:
    """p99 latency: log-normal noise, a permanent deploy step, one spike."""
    profile = daily_profile()
    median = (0.22 + 0.06 * profile) * weekend_factor(0.96)
    # A p99 over fewer requests (at night) is a noisier estimate.
    sigma = 0.07 + 0.06 * (1.0 - profile)
    values = median * np.exp(rng.normal(0.0, sigma, N))

    # The deploy adds work to the hot path; the step is the new normal.
    deploy = at(5, 14, 30)
    values[deploy:] *= 1.30

    # Unrelated transient: a dependency stalls for ten minutes.
    spike = Window(at(6, 9, 20), at(6, 9, 29))
    values[spike.rows] *= rng.uniform(3.6, 4.4, spike.size)
    # Only the onset of the step is anomalous (it becomes the new normal), so
    # the incident is its first hour and its label is one hour long.
    first_hour = Window(deploy, deploy + 59)
    return Result(values, [first_hour, spike], [Window(deploy, deploy).padded(10, 60), spike.padded(10, 10)])


def error_ratio(rng: np.random.Generator) -> Result:
    """5xx ratio from integer counts, one error burst."""
    mean_requests = 3000.0 * (0.3 + 0.7 * daily_profile()) * weekend_factor(0.65)
    requests = rng.poisson(mean_requests)
    # Real errors cluster more than a pure binomial would: jitter the rate.
    p_error = 0.002 * np.exp(rng.normal(0.0, 0.25, N))

    burst = Window(at(5, 11, 5), at(5, 11, 19))
    p_error[burst.rows] = rng.uniform(0.045, 0.055, burst.size)

    errors = rng.binomial(requests, p_error)
    return Result(errors / requests, [burst], [burst.padded(10, 10)])


def queue_lag(rng: np.random.Generator) -> Result:
    """Consumer lag: sawtooth from batch producers, one stuck consumer."""
    profile = daily_profile()
    scale = weekend_factor(0.7)
    trickle = rng.poisson(200.0 * (0.25 + 0.75 * profile) * scale)
    produced = trickle + batches(rng, 800.0 * (0.4 + 0.6 * profile) * scale)
    # Headroom over peak load (~260/min) so each batch drains before the next.
    capacity = rng.normal(350.0, 20.0, N).clip(min=0.0)

    stuck = Window(at(6, 13, 40), at(6, 14, 19))
    capacity[stuck.rows] = 0.0

    backlog = drain(produced, capacity)
    # Fetched-but-uncommitted messages keep lag above zero even when idle.
    values = np.round(backlog) + rng.poisson(0.1 * trickle + 2.0)
    # Label until the backlog is gone, since catching up is part of the incident.
    recovered = stuck.end + int(np.argmax(backlog[stuck.end :] < 1.0))
    return Result(values, [stuck], [Window(stuck.start, max(stuck.start + 60, recovered)).padded(10, 0)])


def batches(rng: np.random.Generator, mean_size: FloatArray) -> IntArray:
    """Messages from a cron-like producer that dumps a chunk every 10-18 min.

    Spacing the chunks out (instead of a coin flip per minute) keeps them from
    stacking up into a backlog that would look like the incident.
    """
    out = np.zeros(N, dtype=np.int64)
    t = int(rng.integers(0, 18))
    while t < N:
        out[t] = rng.poisson(mean_size[t])
        t += int(rng.integers(10, 19))
    return out


def drain(produced: IntArray, capacity: FloatArray) -> FloatArray:
    """Backlog of a queue whose consumer handles up to `capacity` per minute."""
    backlog = np.empty(N)
    carry = 0.0
    for i in range(N):
        carry = max(0.0, carry + float(produced[i]) - float(capacity[i]))
        backlog[i] = carry
    return backlog


@dataclass(frozen=True)
class Scenario:
    """One output CSV: where it goes, how to build it, how to print values."""

    path: str
    build: Callable[[np.random.Generator], Result]
    fmt: str
    seed_offset: int


SCENARIOS = (
    Scenario("web_traffic/http_requests_per_second.csv", web_traffic, "{:.3f}", 1),
    Scenario("latency/api_p99_latency_seconds.csv", latency, "{:.3f}", 2),
    Scenario("error_ratio/http_5xx_ratio.csv", error_ratio, "{:.6f}", 3),
    Scenario("queue_lag/consumer_lag_messages.csv", queue_lag, "{:.0f}", 4),
)


def write_csv(path: Path, stamps: list[str], values: FloatArray, fmt: str) -> None:
    """Write `timestamp,value` rows; a missing sample is an empty field."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cells = ["" if np.isnan(v) else fmt.format(v) for v in values]
    rows = [f"{t},{c}" for t, c in zip(stamps, cells, strict=True)]
    text = "timestamp,value\n" + "\n".join(rows) + "\n"
    path.write_text(text, encoding="utf-8", newline="\n")


def write_windows(path: Path, stamps: list[str], windows: dict[str, list[Window]]) -> None:
    """Write windows per CSV path as ``[start, end]`` timestamps (NAB combined_windows format)."""
    data = {name: [[stamps[w.start], stamps[w.end]] for w in spans] for name, spans in windows.items()}
    path.write_text(json.dumps(data, indent=4) + "\n", encoding="utf-8", newline="\n")


def main() -> None:
    """Rewrite every scenario CSV, labels.json and incidents.json."""
    stamps = timestamps()
    labels: dict[str, list[Window]] = {}
    incidents: dict[str, list[Window]] = {}
    for scenario in SCENARIOS:
        # One seed per scenario, so editing one never reshuffles the others.
        rng = np.random.default_rng([SEED, scenario.seed_offset])
        result = scenario.build(rng)
        write_csv(OUT_DIR / scenario.path, stamps, result.values, scenario.fmt)
        labels[scenario.path] = result.labels
        incidents[scenario.path] = result.incidents
    write_windows(OUT_DIR / "labels.json", stamps, labels)
    write_windows(OUT_DIR / "incidents.json", stamps, incidents)


if __name__ == "__main__":
    main()

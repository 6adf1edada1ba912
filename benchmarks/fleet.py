"""What an on-call team would get from the default engine over a fleet of services.

Runs the project's real engine and incident tracker over synthetic production
metrics (``benchmarks/fleet_data.py``: 6 metrics per service, anomaly-free by
construction, one scrape a minute), every series one step at a time, all
series in one batch per step as the live service does:

(a) the anomaly-free fleet at the default configuration: false alert onsets
    per series-day, overall and by metric, after a warm-up and over the whole
    run, and pages per day (incidents: alert onsets of one ``job`` grouped by
    :class:`detector.incidents.IncidentTracker`);
(b) a per-detector budget, ``alerting: {false_alerts_per_day: 2}``: pages per day on the anomaly-free
    fleet, then on the fleet with injected incidents how many incidents an
    alert caught (the series fires at some point from the incident's start to
    10 minutes after its end), how many by an alert that opened inside that
    window, the median time to detect in samples and all by incident kind;
(c) the pattern benchmark: other services (``pattern_fleet``: cpu, latency, a
    nightly backup's write rate, a job error counter with rare spikes), false
    alert onsets on them, then incidents no single point reveals
    (``PATTERN_INCIDENTS``: a stuck exporter, latency three times as noisy, a
    missing nightly backup, a storm of ordinary-sized error spikes) and how
    many an alert caught, for the default model and with the opt-in pattern
    detectors (``model_params: {routine: true, patterns: true}``);
(d) (a) and (b) again with the opt-in pattern detectors;
(e) (a) again with the same fleet scraped every 15 s (``--short-interval``): the
    budget is spent over each series' own sampling interval, so it should hold there too.

Usage: ``python benchmarks/fleet.py [--days 14] [--services 20] [--warmup-days 2]
[--short-interval 15] [--quick]``
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.fleet_data import (  # noqa: E402
    DAY,
    FLEET_KINDS,
    INCIDENTS,
    PATTERN_FLEET_KINDS,
    PATTERN_INCIDENTS,
    Incident,
    Series,
    fleet,
    inject_incidents,
    pattern_fleet,
)
from detector.config import DetectorConfig, build_engine, build_tracker, parse_config  # noqa: E402

#: An alert this long after an incident's last sample still counts as catching it.
GRACE = 600.0
#: Run (b)'s budget: false alerts per day for the whole detector.
DETECTOR_BUDGET = 2.0
#: The opt-in pattern detectors (see models/patterns.py): the daily routine and the pattern statistics.
PATTERN_DETECTORS = {"routine": True, "patterns": True}
DETECTOR = "fleet"


@dataclass(frozen=True)
class Run:
    """The engine's alert state for every series (rows) at every step, and the pages it opened."""

    t: np.ndarray
    alert: np.ndarray
    onset: np.ndarray
    pages: np.ndarray

    def counted(self, after: float) -> np.ndarray:
        """Steps at or after ``after`` seconds into the run."""
        return self.t >= self.t[0] + after


def run(config: DetectorConfig, series: list[Series]) -> Run:
    """Feed every series through a fresh engine and incident tracker, one step per call."""
    engine = build_engine(config)
    tracker = build_tracker(config, DETECTOR)
    keys = [s.name for s in series]
    labels = {s.name: {"__name__": s.kind, "job": s.job} for s in series}
    ids = engine.register(keys)
    t = np.stack([s.t for s in series])
    x = np.stack([s.x for s in series])
    alert = np.zeros(x.shape, dtype=bool)
    onset = np.zeros(x.shape, dtype=bool)
    pages: list[float] = []
    for step in range(x.shape[1]):
        out = engine.process(ids, t[:, step], x[:, step])
        alert[:, step], onset[:, step] = out.alert, out.onset
        events = tracker.observe(float(t[0, step]), keys, labels, t[:, step], x[:, step], out, config.model)
        pages.extend(event.opened_at for event in events if event.change == "opened")
    return Run(t=t[0], alert=alert, onset=onset, pages=np.array(pages))


def table(header: list[str], rows: list[list[Any]]) -> str:
    """Plain-text table: first column left-aligned, the others right-aligned."""
    cells = [header, *[[str(cell) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        rest = (cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))
        return "  ".join([row[0].ljust(widths[0]), *rest])

    lines = [line(row) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join("  " + text for text in lines)


def per_day(count: float, days: float) -> str:
    return f"{count / days:.3f}" if days > 0 else "-"


def false_onsets(
    result: Run, series: list[Series], warmup: float, kinds: tuple[str, ...] = FLEET_KINDS
) -> str:
    """Onsets per series-day by metric, after the warm-up and over the whole run."""
    counted = result.counted(warmup)
    days_after = counted.sum() / len(result.t) * _days(result)
    rows = []
    for kind in (*kinds, "all"):
        member = np.array([kind in ("all", s.kind) for s in series])
        after = int(result.onset[member][:, counted].sum())
        whole = int(result.onset[member].sum())
        n = int(member.sum())
        rows.append(
            [kind, n, after, per_day(after, n * days_after), whole, per_day(whole, n * _days(result))]
        )
    return table(
        ["metric", "series", "onsets", "per series-day", "onsets (whole run)", "per series-day (whole run)"],
        rows,
    )


def _days(result: Run) -> float:
    return len(result.t) * float(result.t[1] - result.t[0]) / DAY


def pages_line(result: Run, warmup: float) -> str:
    """Incidents opened per day, after the warm-up and over the whole run."""
    after = int((result.pages >= result.t[0] + warmup).sum())
    days_after = _days(result) - warmup / DAY
    return (
        f"pages (incidents by job): {per_day(after, days_after)} per day after the warm-up ({after}), "
        f"{per_day(len(result.pages), _days(result))} per day over the whole run ({len(result.pages)})"
    )


def detections(
    result: Run, series: list[Series], incidents: list[Incident], kinds: Iterable[str] = INCIDENTS
) -> str:
    """Incidents caught by an alert of their series, by one that opened inside them, and how fast.

    The delay is in samples from the incident's first sample to the first one
    at which its series fires (0: at once, or it was already firing).
    """
    row_of = {s.name: row for row, s in enumerate(series)}
    delays: dict[str, list[tuple[int, int, bool] | None]] = {kind: [] for kind in kinds}
    for incident in incidents:
        first = int(np.searchsorted(result.t, incident.start))
        last = int(np.searchsorted(result.t, incident.end, side="right")) - 1
        stop = int(np.searchsorted(result.t, incident.end + GRACE, side="right"))
        row = row_of[incident.series]
        firing = result.alert[row, first:stop]
        inside = bool(result.onset[row, first:stop].any())
        delays[incident.kind].append((int(np.argmax(firing)), last - first, inside) if firing.any() else None)
    everything = [delay for kind_delays in delays.values() for delay in kind_delays]
    rows = []
    for kind, found in (*delays.items(), ("all", everything)):
        caught = [delay for delay, _, _ in filter(None, found)]
        early = sum(delay <= length for delay, length, _ in filter(None, found))
        opened = sum(onset for _, _, onset in filter(None, found))
        rows.append(
            [
                kind,
                len(found),
                len(caught),
                f"{len(caught) / len(found):.0%}" if found else "-",
                opened,
                early,
                f"{np.median(caught):.0f}" if caught else "-",
            ]
        )
    header = [
        "incident",
        "injected",
        "detected",
        "share",
        "opened inside",
        "before its end",
        "median samples to detect",
    ]
    return table(header, rows)


def outside_incidents(result: Run, series: list[Series], incidents: list[Incident], warmup: float) -> int:
    """Onsets after the warm-up that no incident (start to end + grace) explains."""
    onset = result.onset & result.counted(warmup)
    row_of = {s.name: row for row, s in enumerate(series)}
    for incident in incidents:
        inside = (result.t >= incident.start) & (result.t <= incident.end + GRACE)
        onset[row_of[incident.series], inside] = False
    return int(onset.sum())


def print_false_alerts(config: DetectorConfig, series: list[Series], warmup: float) -> None:
    """Run ``config`` over anomaly-free ``series``: its false alert onsets by metric, then pages per day."""
    result = run(config, series)
    print(false_onsets(result, series, warmup))
    print("  " + pages_line(result, warmup))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=14.0)
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--warmup-days", type=float, default=2.0, help="days not counted in false alerts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--short-interval", type=float, default=15.0, help="seconds between scrapes in (e); 0 skips (e)"
    )
    parser.add_argument("--quick", action="store_true", help="3 services over 6 days: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.services, args.days = 3, 6.0
    started = time.perf_counter()
    warmup = args.warmup_days * DAY
    clean = fleet(services=args.services, days=args.days, seed=args.seed)
    injected_after = min(4.0, args.days / 2)
    dirty, incidents = inject_incidents(clean, seed=args.seed, warmup_days=injected_after)
    print(
        f"Fleet: {args.services} services x {len(FLEET_KINDS)} metrics = {len(clean)} series, "
        f"{args.days:g} days at 60 s ({len(clean[0].t)} steps), seed {args.seed}"
    )
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; data generated in {time.perf_counter() - started:.1f} s"
    )
    print(f"Warm-up: the first {args.warmup_days:g} days are not counted unless marked 'whole run'.")

    default = parse_config({})
    per_week = build_engine(default).policy.false_alerts_per_week
    assert per_week is not None, "the default budget is per series"
    print(
        f"\n(a) Anomaly-free fleet, default configuration: a budget of {per_week:g} false alert "
        f"per series per week = {per_week / 7:.3f} per series-day"
    )
    print_false_alerts(default, clean, warmup)

    config = parse_config({"alerting": {"false_alerts_per_day": DETECTOR_BUDGET}})
    print(
        f"\n(b) alerting: {{false_alerts_per_day: {DETECTOR_BUDGET:g}}}, a budget of {DETECTOR_BUDGET:g} "
        f"per day for the detector = {DETECTOR_BUDGET / len(clean):.3f} per series-day"
    )
    print("  Anomaly-free fleet:")
    print_false_alerts(config, clean, warmup)
    print(
        f"\n  With {len(incidents)} injected incidents, after day {injected_after:g} "
        "(detected: the series fires between the incident's start and 10 minutes after its end;\n"
        "  samples to detect: from its first sample, 0 if the alert fires at once or was already firing):"
    )
    result = run(config, dirty)
    print(detections(result, dirty, incidents))
    print("  " + pages_line(result, warmup))
    outside = outside_incidents(result, dirty, incidents, warmup)
    print(f"  onsets after the warm-up outside incident windows: {outside}")

    patterns = pattern_fleet(services=args.services, days=args.days, seed=args.seed)
    dirty, incidents = inject_incidents(
        patterns, seed=args.seed, warmup_days=injected_after, incidents=PATTERN_INCIDENTS
    )
    print(
        f"\n(c) Pattern benchmark: {args.services} other services x {len(PATTERN_FLEET_KINDS)} metrics "
        f"= {len(patterns)} series, {len(incidents)} injected pattern incidents "
        f"after day {injected_after:g}, "
        f"at the default budget ({per_week / 7:.3f} per series-day)"
    )
    opt_in = parse_config({"model_params": PATTERN_DETECTORS})
    for label, chosen in (("default model", default), (f"model_params: {PATTERN_DETECTORS}", opt_in)):
        print(f"\n  {label}, anomaly-free:")
        result = run(chosen, patterns)
        print(false_onsets(result, patterns, warmup, PATTERN_FLEET_KINDS))
        print(f"  {label}, with the incidents:")
        result = run(chosen, dirty)
        print(detections(result, dirty, incidents, PATTERN_INCIDENTS))
        outside = outside_incidents(result, dirty, incidents, warmup)
        print(f"  onsets after the warm-up outside incident windows: {outside}")

    print(f"\n(d) The fleet of (a) and (b) with model_params: {PATTERN_DETECTORS}, default budget:")
    print_false_alerts(opt_in, clean, warmup)
    budgeted = parse_config(
        {"model_params": PATTERN_DETECTORS, "alerting": {"false_alerts_per_day": DETECTOR_BUDGET}}
    )
    print(f"  alerting: {{false_alerts_per_day: {DETECTOR_BUDGET:g}}}, anomaly-free:")
    print_false_alerts(budgeted, clean, warmup)
    print("  With the injected incidents of (b):")
    dirty, incidents = inject_incidents(clean, seed=args.seed, warmup_days=injected_after)
    result = run(budgeted, dirty)
    print(detections(result, dirty, incidents))
    if args.short_interval > 0:
        short = fleet(services=args.services, days=args.days, step=args.short_interval, seed=args.seed)
        print(
            f"\n(e) The fleet of (a) scraped every {args.short_interval:g} s instead of 60 s "
            f"({len(short[0].t)} steps), default configuration:"
        )
        print_false_alerts(default, short, warmup)

    print(f"\nWall time: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()

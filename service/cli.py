"""The ``anomaly-detector`` command line.

``anomaly-detector backtest INPUT... --output DIR`` replays recorded
``timestamp,value`` CSV files (or directories of them) through the engine the
live service uses and writes one result CSV per input under ``DIR``, at the
input's path relative to its directory.  The summary sets the alert rate
beside the configured budget, both per day for all series together and per
series-day.  With ``--labels`` (NAB's ``combined_windows.json`` format) it
also reports windows detected, false alerts and time to detect, and the rate
is of false alerts (onsets outside every labelled window).  With
``--incidents`` (the same format, holding the incidents' own times rather than
padded windows) it shows, per incident, how much of it an alert covered, the
alert onsets inside it, the minutes to the first alert and whether an alert was
still firing at its end.

``backtest --prometheus URL --query Q --start T [--end T] [--step 1m]`` replays
a range read from Prometheus instead.  Each series becomes a recording named by
its series key (``up{instance="a:9090",job="api"}``, which is what ``--labels``
then names), its results go to ``DIR/<file name made from its labels>.csv``, and
``DIR/manifest.json`` maps those file names to label sets.  ``export`` writes
the same range as ``timestamp,value`` CSV files and a manifest, ready to replay
later like ``replay_data/``.  Times are RFC3339, Unix seconds, ``now`` or
``now-2h``.

``--compare A.yaml B.yaml`` runs two configurations on the same data (results
in ``DIR/A`` and ``DIR/B``) and shows what B changes against A: each one's
alert rate against its own budget, windows detected, false alerts, time to
detect, and which windows and alerts differ.  ``--report FILE`` writes all of
it, with a plot per series, as one self-contained HTML page.

Bad input is reported as ``anomaly-detector: error: <what and where>`` on
stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from detector.backtest import run_backtest, write_result
from detector.config import ConfigError, build_engine, load_config, parse_duration
from detector.evaluation import Budget, LabelsError, Window, load_labels
from detector.labels import series_key
from detector.recorded import Recording, RecordingError, find_recordings, read_recording
from service.prometheus import PrometheusError, PrometheusReader, RangeSeries, parse_time
from service.report import (
    COVERAGE_CAPTION,
    COVERAGE_COLUMNS,
    Figures,
    Run,
    abbreviate,
    compare_runs,
    coverage_rows,
    figures,
    format_number,
    format_timestamp,
    format_window,
    rate_caption,
    rate_columns,
    write_report,
)

PROG = "anomaly-detector"
_UNSAFE_IN_FILE_NAME = re.compile(r"[^A-Za-z0-9_.=-]+")


class CommandError(ValueError):
    """A request the command cannot carry out; the message says what to change."""


def _add_prometheus_options(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_argument_group("reading from Prometheus")
    group.add_argument("--prometheus", required=required, metavar="URL", help="base URL of Prometheus")
    group.add_argument("--query", required=required, metavar="PROMQL", help="what to read, one series each")
    group.add_argument(
        "--start", required=required, metavar="TIME", help="RFC3339, Unix seconds, or relative: now-7d"
    )
    group.add_argument("--end", metavar="TIME", help="as --start (default: now)")
    group.add_argument("--step", metavar="DURATION", help="time between points: 15s, 1m (default: 1m)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Streaming anomaly detection for metrics.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    backtest = commands.add_parser(
        "backtest",
        help="replay recorded CSV files, or a range from Prometheus, through the detector",
        description="Replay recorded timestamp,value CSV files, or a range read from Prometheus, "
        "through the detector, exactly as the live service would score them.",
    )
    backtest.add_argument(
        "inputs", nargs="*", type=Path, metavar="INPUT", help="CSV file or directory of them"
    )
    _add_prometheus_options(backtest, required=False)
    backtest.add_argument("--output", required=True, type=Path, metavar="DIR", help="where result CSVs go")
    configs = backtest.add_mutually_exclusive_group()
    configs.add_argument("--config", type=Path, metavar="FILE", help="detector configuration (YAML)")
    configs.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("A", "B"),
        help="run two configurations on the same data and show what B changes against A",
    )
    backtest.add_argument(
        "--labels", type=Path, metavar="FILE", help="incident windows (NAB combined_windows.json)"
    )
    backtest.add_argument(
        "--incidents",
        type=Path,
        metavar="FILE",
        help="the incidents' own times, in the --labels format: show how much of each an alert covered",
    )
    backtest.add_argument("--report", type=Path, metavar="FILE", help="write an HTML report with plots")
    backtest.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    backtest.set_defaults(run=_backtest)
    export = commands.add_parser(
        "export",
        help="write a range from Prometheus as timestamp,value CSV files",
        description="Write a range read from Prometheus as timestamp,value CSV files, one per series, "
        "and manifest.json mapping file names to labels: recordings to backtest later.",
    )
    _add_prometheus_options(export, required=True)
    export.add_argument("--output", required=True, type=Path, metavar="DIR", help="where the CSV files go")
    export.add_argument("--quiet", action="store_true", help="no summary")
    export.set_defaults(run=_export)

    run = commands.add_parser(
        "run",
        help="run the live service (pull from / remote_write by Prometheus)",
        description="Run the detection service: scores as /metrics, alerts to the configured sinks.",
    )
    run.add_argument(
        "--config", required=True, type=Path, metavar="FILE", help="service configuration (YAML)"
    )
    run.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    run.add_argument(
        "--web.config.file",
        dest="web_config_file",
        type=Path,
        metavar="FILE",
        help="TLS and basic auth, as Prometheus's web config file (overrides web_config_file:)",
    )
    run.add_argument(
        "--web.unauthenticated-writes",
        dest="unauthenticated_writes",
        action="store_true",
        help="serve remote_write, silences and feedback without credentials on a non-loopback "
        "address (only where the network protects them)",
    )
    run.set_defaults(run=_run)

    check = commands.add_parser("check-config", help="validate a service configuration without starting")
    check.add_argument("config", type=Path, metavar="FILE")
    check.set_defaults(run=_check_config)
    return parser


@dataclass(frozen=True)
class _Data:
    """Recordings to replay, each one's result file (relative to --output) and where it was read."""

    recordings: list[Recording]
    files: list[str]
    inputs: list[Path | None]
    source: str
    manifest: dict[str, dict[str, str]] | None = None


@contextmanager
def _writing(path: Path, what: str) -> Iterator[None]:
    try:
        yield
    except OSError as error:
        raise CommandError(
            f"{path}: cannot write {what} ({error.strerror}); choose a writable location"
        ) from None


def _read_files(inputs: list[Path]) -> _Data:
    found = find_recordings(inputs)
    return _Data(
        recordings=[read_recording(path, name) for path, name in found],
        files=[name if name.endswith(".csv") else f"{name}.csv" for _, name in found],
        inputs=[path for path, _ in found],
        source=", ".join(str(path) for path in inputs),
    )


def _file_names(label_sets: list[dict[str, str]]) -> list[str]:
    """A readable CSV file name per series, from its labels; unique even when labels differ only in
    characters a file name cannot hold.

    >>> _file_names([{"__name__": "up", "job": "api", "instance": "a:9090"}, {}])
    ['up-instance=a_9090-job=api.csv', 'series.csv']
    >>> _file_names([{"path": "/a"}, {"path": "_a"}])
    ['path=_a-abc69781.csv', 'path=_a-562431f9.csv']
    """
    bases = []
    for labels in label_sets:
        parts = [
            labels.get("__name__", ""),
            *(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__"),
        ]
        bases.append(
            _UNSAFE_IN_FILE_NAME.sub("_", "-".join(part for part in parts if part))[:150] or "series"
        )
    seen = Counter(bases)
    return [
        f"{base}-{hashlib.blake2b(series_key(labels).encode(), digest_size=4).hexdigest()}.csv"
        if seen[base] > 1
        else f"{base}.csv"
        for base, labels in zip(bases, label_sets, strict=True)
    ]


def _time(flag: str, text: str, now: float) -> float:
    try:
        return parse_time(text, now)
    except ValueError as error:
        raise CommandError(f"{flag}: {error}") from None


def _pull(args: argparse.Namespace) -> tuple[list[RangeSeries], str]:
    """The range the Prometheus options ask for, and a line saying where it came from."""
    now = float(math.floor(time.time()))  # relative times on whole seconds: readable timestamps
    start, end = _time("--start", args.start, now), _time("--end", args.end or "now", now)
    step_text = args.step or "1m"
    try:
        step = parse_duration(step_text)
    except ValueError as error:
        raise CommandError(f"--step: {error}") from None
    if step <= 0:
        raise CommandError(f"--step: {step_text!r} must be longer than 0s; use 15s, 1m, ...")
    if start >= end:
        raise CommandError(
            f"--start {args.start} ({format_timestamp(start)} UTC) is not before "
            f"--end {args.end or 'now'} ({format_timestamp(end)} UTC); swap them"
        )
    span = f"{format_timestamp(start)} to {format_timestamp(end)} UTC"
    series = PrometheusReader(args.prometheus).range(args.query, start, end, step)
    if not series:
        raise CommandError(
            f"{args.prometheus}: the query {args.query!r} returned no series from {span}; "
            "check it and the time range in Prometheus's expression browser"
        )
    return series, f"{args.prometheus}, query {args.query}, {span}, step {step_text}"


def _read_prometheus(args: argparse.Namespace) -> _Data:
    series, source = _pull(args)
    files = _file_names([s.labels for s in series])
    return _Data(
        recordings=[
            Recording(
                path=Path(file),
                name=s.key,
                timestamps=[format_timestamp(t) for t in s.t],
                t=s.t,
                values=s.x,
            )
            for file, s in zip(files, series, strict=True)
        ],
        files=files,
        inputs=[None] * len(series),
        source=source,
        manifest={file: s.labels for file, s in zip(files, series, strict=True)},
    )


def _write_manifest(directory: Path, manifest: Mapping[str, dict[str, str]]) -> None:
    path = directory / "manifest.json"
    with _writing(path, "the manifest"):
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _targets(directory: Path, data: _Data) -> list[Path]:
    targets = []
    for file, source in zip(data.files, data.inputs, strict=True):
        path = directory / file
        if source is not None and path.resolve() == source.resolve():
            raise CommandError(
                f"{path}: the result would overwrite its input; choose another --output directory"
            )
        targets.append(path)
    return targets


_Column = tuple[str, Callable[[Figures], str]]
_LABELLED_COLUMNS: list[_Column] = [
    ("windows", lambda row: str(row.evaluation.windows)),
    ("detected", lambda row: str(row.evaluation.detected)),
    ("false alerts", lambda row: str(row.evaluation.false_alerts)),
    ("series-days", lambda row: f"{row.evaluation.series_days:.2f}"),
    ("false alerts/series-day", lambda row: format_number(row.evaluation.false_alerts_per_day, 3)),
    ("median minutes to detect", lambda row: format_number(row.evaluation.median_minutes_to_detect, 1)),
]
_ALERT_COLUMNS: list[_Column] = [
    ("alerts", lambda row: str(row.alerts)),
    ("alerts/series-day", lambda row: format_number(row.alerts_per_day, 2)),
]


def _table(runs: list[Run], labels: Mapping[str, list[Window]] | None) -> list[str]:
    """Per series and in total; with two runs, their rows for one series are adjacent."""
    rows = [row for group in zip(*(figures(run, labels) for run in runs), strict=True) for row in group]
    columns = [*(_LABELLED_COLUMNS if labels is not None else []), *_ALERT_COLUMNS]
    if len(runs) > 1:
        columns.insert(0, ("run", lambda row: row.run))
    width = max(len("series"), *(len(row.series) for row in rows))
    lines = [f"{'series':<{width}}" + "".join(f"  {title}" for title, _ in columns)]
    for row in rows:
        cells = "".join(f"  {value(row):>{len(title)}}" for title, value in columns)
        lines.append(f"{row.series:<{width}}{cells}")
    return lines


def _aligned(rows: list[list[str]], words: int) -> list[str]:
    """Rows (titles first) in columns two spaces apart: the first ``words`` left-aligned, numbers right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(width) if i < words else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]


def _rates(runs: list[Run], labels: Mapping[str, list[Window]] | None) -> list[str]:
    """Each run's alert rate beside its budget, one row per run, titled and worded as in the report."""
    columns = rate_columns(labels is not None)
    titles = ["run", *(title for title, _ in columns)]
    rows = [[run.name, *(cell(run.alert_rate(labels)) for _, cell in columns)] for run in runs]
    # The run and its budget are words; the rates are numbers.
    return [rate_caption(labels is not None, len(runs[0].results)), *_aligned([titles, *rows], words=2)]


def _coverage(runs: list[Run], incidents: Mapping[str, list[Window]]) -> list[str]:
    """How much of each incident each run's alert covered, titled and worded as in the report."""
    run = ["run"] if len(runs) > 1 else []
    titles = ["series", *run, *(title for title, _ in COVERAGE_COLUMNS)]
    rows = [
        [row.series, *([name] if run else []), *(cell(row) for _, cell in COVERAGE_COLUMNS)]
        for name, row in coverage_rows(runs, incidents)
    ]
    # The series, the run and the incident are words; the rest are figures.
    return [COVERAGE_CAPTION, *_aligned([titles, *rows], words=len(run) + 2)]


def _differences(a: Run, b: Run, labels: Mapping[str, list[Window]] | None) -> list[str]:
    lines = [f"what {b.name} changes against {a.name}"]
    for difference in compare_runs(a, b, labels):
        if difference.same:
            continue
        lines.append(f"  {difference.series}")
        for run, windows in zip((a, b), difference.detected_only, strict=True):
            if windows:
                lines.append(f"    detected by {run.name} only  {'; '.join(map(format_window, windows))}")
        for run, onsets in zip((a, b), difference.alerts_only, strict=True):
            if onsets:
                listed = abbreviate([format_timestamp(t) for t in onsets], 5)
                lines.append(f"    alerts only in {run.name}     {', '.join(listed)}")
    if len(lines) == 1:
        lines.append("  nothing: both detect the same windows and raise the same alerts")
    return lines


def _summary(runs: list[Run], seconds: float, directories: list[Path]) -> list[str]:
    points = sum(len(result.recording) for result in runs[0].results)
    rate = points * len(runs) / seconds if seconds > 0 else math.inf
    alerts = ", ".join(f"{run.name} {run.alerts}" for run in runs) if len(runs) > 1 else str(runs[0].alerts)
    lines = [
        f"series         {len(runs[0].results)}",
        f"points         {points}",
        f"seconds        {seconds:.2f}",
        f"points/s       {rate:.0f}",
        f"alerts opened  {alerts}",
        f"results in     {', '.join(map(str, directories))}",
    ]
    if len(runs) > 1:
        lines.extend(f"{run.name:<15}{run.config}" for run in runs)
    return lines


def _check_source(args: argparse.Namespace) -> None:
    prometheus_only = [
        flag for flag in ("--query", "--start", "--end", "--step") if getattr(args, flag[2:]) is not None
    ]
    if args.prometheus is None and prometheus_only:
        raise CommandError(f"{prometheus_only[0]} reads from Prometheus; add --prometheus URL")
    if args.prometheus is None and not args.inputs:
        raise CommandError(
            "give INPUT files or directories to replay, or --prometheus URL --query Q --start T"
        )
    if args.prometheus is not None and args.inputs:
        raise CommandError(
            f"replay either INPUT files ({args.inputs[0]} ...) or --prometheus {args.prometheus}, not both"
        )
    if args.prometheus is not None and (args.query is None or args.start is None):
        raise CommandError("--prometheus needs --query and --start (and optionally --end and --step)")


def _backtest(args: argparse.Namespace) -> int:
    _check_source(args)
    if args.compare:
        configs = [
            (name, str(path), load_config(path)) for name, path in zip("AB", args.compare, strict=True)
        ]
        directories = [args.output / name for name, _, _ in configs]
    else:
        configs = [("backtest", str(args.config or "defaults"), load_config(args.config))]
        directories = [args.output]
    labels = load_labels(args.labels) if args.labels is not None else None
    incidents = load_labels(args.incidents) if args.incidents is not None else None
    data = _read_prometheus(args) if args.prometheus is not None else _read_files(args.inputs)
    targets = [_targets(directory, data) for directory in directories]
    show_progress = not args.quiet and sys.stderr.isatty()
    total = sum(len(recording) for recording in data.recordings) * len(configs)
    runs = []
    started = time.perf_counter()
    with tqdm(total=total, unit="pt", file=sys.stderr, disable=not show_progress) as bar:

        def advance(rows: int) -> None:
            bar.update(rows)

        for name, source, config in configs:
            engine = build_engine(config)
            budget = Budget.of(engine.policy)
            runs.append(Run(name, source, budget, run_backtest(engine, data.recordings, advance)))
    seconds = time.perf_counter() - started
    for run, directory, paths in zip(runs, directories, targets, strict=True):
        for result, path in zip(run.results, paths, strict=True):
            with _writing(path, "the result"):
                write_result(result, path)
        if data.manifest is not None:
            _write_manifest(directory, data.manifest)
    if args.report is not None:
        with _writing(args.report, "the report"):
            write_report(args.report, runs, labels, source=data.source, incidents=incidents)
    if args.quiet:
        return 0
    lines = _summary(runs, seconds, directories)
    if args.report is not None:
        lines.append(f"report         {args.report}")
    if labels is not None:
        labelled = sum(recording.name in labels for recording in data.recordings)
        lines.append(f"labelled       {labelled} of {len(data.recordings)} series")
    if incidents is not None:
        covered = [recording.name for recording in data.recordings if incidents.get(recording.name)]
        count = sum(len(incidents[name]) for name in covered)
        lines.append(f"incidents      {count} in {len(covered)} of {len(data.recordings)} series")
    lines.extend(["", *_rates(runs, labels)])
    if labels is not None or len(runs) > 1:
        lines.extend(["", *_table(runs, labels)])
    if len(runs) > 1:
        lines.extend(["", *_differences(runs[0], runs[1], labels)])
    if incidents is not None:
        lines.extend(["", *_coverage(runs, incidents)])
    print("\n".join(lines))
    return 0


def _export(args: argparse.Namespace) -> int:
    data = _read_prometheus(args)
    for recording, file in zip(data.recordings, data.files, strict=True):
        path = args.output / file
        values = ["" if math.isnan(x) else repr(float(x)) for x in recording.values]
        rows = [f"{stamp},{value}" for stamp, value in zip(recording.timestamps, values, strict=True)]
        with _writing(path, "the recording"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(["timestamp,value", *rows]) + "\n", encoding="utf-8")
    assert data.manifest is not None  # always made for data read from Prometheus
    _write_manifest(args.output, data.manifest)
    if not args.quiet:
        lines = [
            f"series         {len(data.recordings)}",
            f"points         {sum(len(recording) for recording in data.recordings)}",
            f"source         {data.source}",
            f"written to     {args.output} (manifest.json maps files to labels)",
        ]
        print("\n".join(lines))
    return 0


def _run(args: argparse.Namespace) -> int:
    # Imported here: the web stack is only needed by the live service, not by backtests.
    from service import serve

    serve.run(args.config, args.host, args.port, args.web_config_file, args.unauthenticated_writes)
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from service import serve

    print("\n".join(serve.check_config(args.config)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad input)."""
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (RecordingError, ConfigError, LabelsError, CommandError, PrometheusError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2

"""The ``anomaly-detector`` command line.

``anomaly-detector backtest INPUT... --output DIR`` replays recorded
``timestamp,value`` CSV files (or directories of them) through the engine the
live service uses and writes one result CSV per input under ``DIR``, at the
input's path relative to its directory.  With ``--labels`` (NAB's
``combined_windows.json`` format) it also reports windows detected, false
alerts and time to detect.

Bad input is reported as ``anomaly-detector: error: <what and where>`` on
stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from detector.backtest import SeriesResult, run_backtest, write_result
from detector.config import ConfigError, build_engine, load_config
from detector.evaluation import (
    LabelsError,
    SeriesEvaluation,
    combine,
    evaluate,
    load_labels,
)
from detector.recorded import RecordingError, find_recordings, read_recording

PROG = "anomaly-detector"


class CommandError(ValueError):
    """A request the command cannot carry out; the message says what to change."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Streaming anomaly detection for metrics.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    backtest = commands.add_parser(
        "backtest",
        help="replay recorded CSV files through the detector",
        description="Replay recorded timestamp,value CSV files through the detector, "
        "exactly as the live service would score them.",
    )
    backtest.add_argument(
        "inputs", nargs="+", type=Path, metavar="INPUT", help="CSV file or directory of them"
    )
    backtest.add_argument("--output", required=True, type=Path, metavar="DIR", help="where result CSVs go")
    backtest.add_argument("--config", type=Path, metavar="FILE", help="detector configuration (YAML)")
    backtest.add_argument(
        "--labels", type=Path, metavar="FILE", help="incident windows (NAB combined_windows.json)"
    )
    backtest.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    backtest.set_defaults(run=_backtest)
    return parser


def _output_path(output: Path, name: str, source: Path) -> Path:
    path = output / (name if name.endswith(".csv") else f"{name}.csv")
    if path.resolve() == source.resolve():
        raise CommandError(f"{path}: the result would overwrite its input; choose another --output directory")
    return path


def _number(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _evaluation_table(evaluations: list[SeriesEvaluation]) -> list[str]:
    rows = [*evaluations, combine(evaluations)]
    width = max(len("series"), *(len(row.name) for row in rows))
    header = (
        f"{'series':<{width}}  windows  detected  false alerts  series-days  "
        "false/day  median minutes to detect"
    )
    lines = [header]
    for row in rows:
        lines.append(
            f"{row.name:<{width}}  {row.windows:>7}  {row.detected:>8}  {row.false_alerts:>12}  "
            f"{row.series_days:>11.2f}  {_number(row.false_alerts_per_day, 3):>9}  "
            f"{_number(row.median_minutes_to_detect, 1):>24}"
        )
    return lines


def _summary(results: list[SeriesResult], seconds: float, output: Path) -> list[str]:
    points = sum(len(result.recording) for result in results)
    rate = points / seconds if seconds > 0 else math.inf
    return [
        f"series         {len(results)}",
        f"points         {points}",
        f"seconds        {seconds:.2f}",
        f"points/s       {rate:.0f}",
        f"alerts opened  {sum(result.alerts for result in results)}",
        f"results in     {output}",
    ]


def _backtest(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    found = find_recordings(args.inputs)
    labels = load_labels(args.labels) if args.labels is not None else None
    targets = [_output_path(args.output, name, path) for path, name in found]
    recordings = [read_recording(path, name) for path, name in found]
    engine = build_engine(config)
    show_progress = not args.quiet and sys.stderr.isatty()
    total = sum(len(recording) for recording in recordings)
    started = time.perf_counter()
    with tqdm(total=total, unit="pt", file=sys.stderr, disable=not show_progress) as bar:
        results = run_backtest(engine, recordings, on_step=bar.update)
    seconds = time.perf_counter() - started
    for result, target in zip(results, targets, strict=True):
        try:
            write_result(result, target)
        except OSError as error:
            raise CommandError(
                f"{target}: cannot write the result ({error.strerror}); choose a writable --output directory"
            ) from None
    if args.quiet:
        return 0
    lines = _summary(results, seconds, args.output)
    if labels is not None:
        labelled = sum(recording.name in labels for recording in recordings)
        lines.append(f"labelled       {labelled} of {len(recordings)} series")
        lines.append("")
        lines.extend(_evaluation_table(evaluate(results, labels)))
    print("\n".join(lines))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad input)."""
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (RecordingError, ConfigError, LabelsError, CommandError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2

"""NAB development split: the default engine against two baselines, side by side.

Runs the same engine and policy as ``anomaly-detector backtest`` over
``../shared/bench/nab/data``, then scores with ``nab_score.py``:

* the calibrated ``anomaly_score`` with NAB's swept (corpus-optimal) threshold;
* the alerts the default policy would send, each alert's first row (onset) as
  the detection, at a fixed threshold of 0.5 (no sweep);
* baselines with the swept threshold: windowed-Gaussian z-score and river's
  HalfSpaceTrees (``benchmarks/baselines.py``).

``--patterns`` runs the default model with its opt-in pattern detectors
(``model_params: {routine: true, patterns: true}``, see ``models/patterns.py``).

Usage: ``python benchmarks/nab.py [--bench ../shared/bench] [--skip-baselines] [--patterns]``
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.baselines import half_space_trees_scores, windowed_gaussian_scores, write_results  # noqa: E402
from detector.backtest import SeriesResult, run_backtest, write_result  # noqa: E402
from detector.config import DetectorConfig, build_engine, parse_config  # noqa: E402
from detector.recorded import find_recordings, read_recording  # noqa: E402

PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


def load_scorer(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("nab_score", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: cannot load the NAB scorer")
    module = importlib.util.module_from_spec(spec)
    sys.modules["nab_score"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def write_scores(timestamps: list[str], scores: np.ndarray, path: Path) -> None:
    """A result file with just the columns ``nab_score.py`` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        handle.write("timestamp,anomaly_score\n")
        for stamp, value in zip(timestamps, scores, strict=True):
            handle.write(f"{stamp},{value:.15g}\n")


def write_onsets(result: SeriesResult, path: Path) -> None:
    """A result file whose score is 1 exactly at the rows where an alert opened."""
    write_scores(result.recording.timestamps, result.onset.astype(np.float64), path)


def score(scorer: ModuleType, results: Path, threshold: float | None) -> dict[str, float]:
    with contextlib.redirect_stderr(io.StringIO()):
        figures = scorer.score(str(results), threshold=threshold)
    return {profile: figures[profile]["score"] for profile in PROFILES}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, default=ROOT.parent / "shared" / "bench")
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument("--patterns", action="store_true", help="with the opt-in pattern detectors")
    args = parser.parse_args(argv)
    patterns = {"model_params": {"routine": True, "patterns": True}}
    config = parse_config(patterns) if args.patterns else DetectorConfig()
    data = args.bench / "nab" / "data"
    scorer = load_scorer(args.bench / "nab_score.py")
    work = Path(tempfile.mkdtemp(prefix="nab-"))

    recordings = [read_recording(path, name) for path, name in find_recordings([data])]
    points = sum(len(r) for r in recordings)
    started = time.perf_counter()
    results = run_backtest(build_engine(config), recordings)
    elapsed = time.perf_counter() - started
    for result in results:
        write_result(result, work / "engine" / result.recording.name)
        write_onsets(result, work / "onsets" / result.recording.name)

    rows = [
        ("default engine, anomaly_score, swept", score(scorer, work / "engine", None), points / elapsed),
        ("default engine, alert onsets, fixed 0.5", score(scorer, work / "onsets", 0.5), points / elapsed),
    ]
    if not args.skip_baselines:
        for label, baseline in (
            ("windowed Gaussian, swept", windowed_gaussian_scores),
            ("river HalfSpaceTrees, swept", half_space_trees_scores),
        ):
            started = time.perf_counter()
            write_results(data, work / label.split(",")[0].replace(" ", "_"), baseline)
            rate = points / (time.perf_counter() - started)
            rows.append((label, score(scorer, work / label.split(",")[0].replace(" ", "_"), None), rate))

    alerts = sum(r.alerts for r in results)
    print(f"NAB development split: {len(recordings)} series, {points} points, {alerts} alerts opened")
    print(f"model: {config.model}, model_params {config.model_params}")
    print(f"{'detector':42s} {'standard':>9s} {'low FP':>8s} {'low FN':>8s} {'points/s':>10s}")
    for label, figures, rate in rows:
        print(
            f"{label:42s} {figures['standard']:9.1f} {figures['reward_low_FP_rate']:8.1f} "
            f"{figures['reward_low_FN_rate']:8.1f} {rate:10.0f}"
        )
    print(f"(results kept in {work})")


if __name__ == "__main__":
    main()

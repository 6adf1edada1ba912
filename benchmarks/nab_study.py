"""Where the swept NAB score is lost: the engine's p-values next to two post-processings.

The swept NAB score counts every row above one corpus-wide threshold, so a
calibrated score pays for each normal row with ``p <= threshold``: about
``threshold`` times the ~135k scored normal rows of the development split.
Only smaller p-values for the labelled anomalies, or fewer high scores on
normal rows, can raise it.  This script measures the two post-processings that
helped most in offline study, to show how far each one goes and what it costs:

* **value records**: a point beyond every earlier value of its series gets the
  conformal p-value of a new record, ``2 / (n + 1)`` after ``n`` points
  (exact for exchangeable data), combined with the engine's p by Bonferroni
  (``2 * min``, which keeps the combination conservative);
* **episode declustering**: a point keeps its p-value only if it is smaller
  than every p-value of the previous ``--episode`` rows; otherwise it is part
  of an episode already scored and gets p = 1.

Both are scored with NAB's swept threshold, and for the declustering the
script also prints the share of independent uniform p-values left at or below
alpha, divided by alpha: the calibration contract needs 0.5 to 2 for alpha =
0.01 and 0.001.

Usage: ``python benchmarks/nab_study.py [--bench ../shared/bench] [--episode 100]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numba import njit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.nab import PROFILES, load_scorer, score, write_scores  # noqa: E402
from detector.backtest import SeriesResult, run_backtest  # noqa: E402
from detector.config import DetectorConfig, build_engine  # noqa: E402
from detector.recorded import find_recordings, read_recording  # noqa: E402

#: Points a series needs before a new record counts (as the calibrator's warm-up).
RECORD_AFTER = 100


@njit(cache=True)
def record_p_values(values: np.ndarray, scored: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Two-sided conformal p-value of a new record (1 where the point is no record)."""
    out = np.ones(len(values))
    highest, lowest, seen = -np.inf, np.inf, 0
    for i in range(len(values)):
        if not np.isfinite(values[i]):
            continue
        if scored[i] and seen >= RECORD_AFTER and (values[i] > highest or values[i] < lowest):
            out[i] = 2.0 / (seen + 1)
        highest, lowest, seen = max(highest, values[i]), min(lowest, values[i]), seen + 1
    return out


@njit(cache=True)
def declustered(p: np.ndarray, episode: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """``p``, but 1 wherever an earlier p of the previous ``episode`` rows was as small."""
    out = p.copy()
    for i in range(len(p)):
        smallest = 1.0
        for j in range(max(0, i - episode), i):
            smallest = min(smallest, p[j])
        if p[i] >= smallest:
            out[i] = 1.0
    return out


def with_records(result: SeriesResult) -> np.ndarray:
    p = 1.0 - result.anomaly_score
    records = record_p_values(result.recording.values, ~result.warming)
    return np.minimum(1.0, 2.0 * np.minimum(p, records))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, default=ROOT.parent / "shared" / "bench")
    parser.add_argument("--episode", type=int, default=100, help="rows an episode lasts (default 100)")
    args = parser.parse_args(argv)
    scorer = load_scorer(args.bench / "nab_score.py")
    data = args.bench / "nab" / "data"
    recordings = [read_recording(path, name) for path, name in find_recordings([data])]
    results = run_backtest(build_engine(DetectorConfig()), recordings)
    work = Path(tempfile.mkdtemp(prefix="nab-study-"))

    variants: dict[str, Callable[[SeriesResult], np.ndarray]] = {
        "engine p-values": lambda r: 1.0 - r.anomaly_score,
        "+ value records": with_records,
        f"episode declustering ({args.episode} rows)": lambda r: declustered(
            1.0 - r.anomaly_score, args.episode
        ),
        "+ value records, declustered": lambda r: declustered(with_records(r), args.episode),
    }
    print(f"NAB development split, swept threshold, {len(recordings)} series")
    print(f"{'variant':42s} {'standard':>9s} {'low FP':>8s} {'low FN':>8s}")
    for number, (label, p_values) in enumerate(variants.items()):
        folder = work / str(number)
        for result in results:
            write_scores(result.recording.timestamps, 1.0 - p_values(result), folder / result.recording.name)
        figures = score(scorer, folder, None)
        columns = " ".join(f"{figures[p]:{w}.1f}" for p, w in zip(PROFILES, (9, 8, 8), strict=True))
        print(f"{label:42s} {columns}")

    uniform = np.random.default_rng(0).uniform(size=1_000_000)
    kept = declustered(uniform, args.episode)
    shares = ", ".join(f"alpha={alpha}: {np.mean(kept <= alpha) / alpha:.2f}" for alpha in (0.01, 0.001))
    print(f"declustering on independent p-values, share at or below alpha / alpha: {shares}")
    print("(the calibration contract needs 0.5 to 2)")


if __name__ == "__main__":
    main()

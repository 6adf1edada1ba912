"""Reference detectors for the NAB benchmark: windowed Gaussian and Half-Space Trees.

Two baselines are scored next to the project's detector:

* :func:`windowed_gaussian_scores` re-implements NAB's "windowed Gaussian"
  detector (a plain z-score against the trailing window, turned into a
  Gaussian tail probability), vectorised with numpy.
* :func:`half_space_trees_scores` runs river's ``anomaly.HalfSpaceTrees``
  behind an online ``preprocessing.MinMaxScaler``, one point at a time.

Both are causal: the score of a point depends only on that point and the
points before it.  Missing values (NaN, or any non-finite value) score 0 and
are not learned.

:func:`write_results` writes one result CSV per NAB data file in the layout
that ``nab_score.py`` reads.  Run the module to score both baselines::

    python benchmarks/baselines.py [DATA_DIR] [--scorer PATH/nab_score.py]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
from river import anomaly, preprocessing
from scipy.special import ndtr

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "bench" / "nab" / "data"
DEFAULT_SCORER = REPO_ROOT.parent / "shared" / "bench" / "nab_score.py"
PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")

#: Floor on the window's standard deviation, as in NAB (a constant window
#: would otherwise make every later change infinitely surprising).
MIN_STD = 1e-6

Scorer = Callable[[np.ndarray], np.ndarray]


def windowed_gaussian_scores(values: np.ndarray, window: int = 6400, step: int = 100) -> np.ndarray:
    """Score a series with NAB's windowed Gaussian detector.

    Each point is scored against the mean and (population) standard deviation
    of the values learned before it: ``score = 1 - Q(|z|)``, where
    ``z = (x - mean) / std`` and ``Q`` is the standard normal tail
    probability, so finite points score in ``[0.5, 1]`` and the first one
    scores 0 (nothing learned yet).  As in NAB, the statistics are refreshed
    after every point until ``window`` values have been learned, then every
    ``step`` points over the last ``window`` learned values.

    Parameters
    ----------
    values : np.ndarray
        One-dimensional series.  Non-finite values score 0 and are skipped
        when learning.
    window : int, default 6400
        Number of trailing learned values the statistics are computed from.
    step : int, default 100
        Once the window is full, the statistics are recomputed every
        ``step`` learned values.

    Returns
    -------
    np.ndarray
        Anomaly scores in ``[0, 1]``, one per input value.

    Examples
    --------
    >>> x = np.array([10.0, 10.2, 9.8, 10.1, np.nan, 9.9, 10.0, 30.0])
    >>> np.round(windowed_gaussian_scores(x), 3)
    array([0.   , 1.   , 0.999, 0.73 , 0.   , 0.801, 0.5  , 1.   ])
    """
    if window < 1 or step < 1:
        raise ValueError("window and step must be positive")
    x = np.asarray(values, dtype=float)
    scores = np.zeros(x.shape, dtype=float)
    finite = np.flatnonzero(np.isfinite(x))
    if finite.size < 2:
        return scores
    v = x[finite]
    k = np.arange(1, v.size)  # values learned before each scored value
    mean = np.empty(k.size)
    std = np.empty(k.size)

    # While the window fills, the statistics of the first k values come from
    # running sums; subtracting the first value keeps them small and keeps a
    # constant start exact.
    filling = k <= window
    n = k[filling]
    d = v[:window] - v[0]
    s1 = np.cumsum(d)[n - 1]
    s2 = np.cumsum(d * d)[n - 1]
    mean[filling] = v[0] + s1 / n
    std[filling] = np.sqrt(np.maximum(s2 / n - (s1 / n) ** 2, 0.0))

    # Afterwards they are those of the last `window` values as of the latest
    # refresh, which happens every `step` values.
    ends = np.arange(window, v.size, step)
    stats = np.array(
        [(v[e - window : e].mean(), v[e - window : e].std()) for e in ends], dtype=float
    ).reshape(-1, 2)
    latest = (k[~filling] - window) // step
    mean[~filling] = stats[latest, 0]
    std[~filling] = stats[latest, 1]

    std[std == 0.0] = MIN_STD
    scores[finite[1:]] = ndtr(np.abs(v[1:] - mean) / std)
    return scores


def half_space_trees_scores(
    values: np.ndarray,
    seed: int = 0,
    *,
    n_trees: int = 25,
    height: int = 10,
    window_size: int = 250,
) -> np.ndarray:
    """Score a series with river's Half-Space Trees behind a min-max scaler.

    The model is ``preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(...)``
    (HST expects features in ``[0, 1]``); every point is scored
    (``score_one``) before it is learned (``learn_one``), so the scaler's
    range and the trees' masses only hold earlier points.  HST scores 0 until
    its first reference window of ``window_size`` points is complete.

    Parameters
    ----------
    values : np.ndarray
        One-dimensional series.  Non-finite values score 0 and are not learned.
    seed : int, default 0
        Seed of the random tree construction.
    n_trees : int, default 25
        Number of trees.
    height : int, default 10
        Height of each tree.  The HST paper uses 15, but a tree holds
        ``2 ** (height + 1) - 1`` nodes that are all built up front and all
        visited at every window change: on the NAB development split height 15
        ran about 18 times slower than 10 (281 vs 5 100 points/s) for the same
        NAB scores (within 0.2 points).
    window_size : int, default 250
        Points per reference window.

    Returns
    -------
    np.ndarray
        Anomaly scores in ``[0, 1]``, one per input value.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = np.append(rng.normal(10.0, 0.1, 500), 20.0)
    >>> s = half_space_trees_scores(x)
    >>> bool(s[:250].any()), bool(s[-1] > np.quantile(s[250:-1], 0.99))
    (False, True)
    """
    model = preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(
        n_trees=n_trees, height=height, window_size=window_size, seed=seed
    )
    x = np.asarray(values, dtype=float)
    scores = np.zeros(x.shape, dtype=float)
    for i, value in enumerate(x.tolist()):
        if not math.isfinite(value):
            continue
        features = {"value": value}
        scores[i] = model.score_one(features)
        model.learn_one(features)
    return np.clip(scores, 0.0, 1.0)


def _parse_value(text: str) -> float:
    """Parse a CSV value; blank fields are NaN."""
    text = text.strip()
    return float(text) if text else math.nan


def write_results(data_dir: Path, out_dir: Path, scorer: Scorer) -> int:
    r"""Score every NAB data file and write result CSVs in NAB's layout.

    Each ``data_dir/**/*.csv`` (header ``timestamp,value``) is scored with
    ``scorer`` and written to ``out_dir/<same relative path>`` with the columns
    ``timestamp,value,anomaly_score``: the same rows in the same order, which
    is what ``nab_score.py`` reads.

    Parameters
    ----------
    data_dir : Path
        Root of the data files, e.g. ``.../nab/data``.
    out_dir : Path
        Root of the result files; created as needed.
    scorer : Callable[[np.ndarray], np.ndarray]
        Maps a file's values (blank or ``nan`` fields as NaN) to one anomaly
        score per value.

    Returns
    -------
    int
        Total number of rows scored.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     data = Path(tmp, "data", "cat")
    ...     data.mkdir(parents=True)
    ...     _ = Path(data, "a.csv").write_text("timestamp,value\nt0,1\nt1,\nt2,5\n")
    ...     write_results(Path(tmp, "data"), Path(tmp, "out"), windowed_gaussian_scores)
    ...     Path(tmp, "out", "cat", "a.csv").read_text().splitlines()[2]
    3
    't1,,0.0'
    """
    total = 0
    for path in sorted(data_dir.rglob("*.csv")):
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader)]
            ti, vi = header.index("timestamp"), header.index("value")
            rows = [(row[ti], row[vi]) for row in reader if row]
        values = np.array([_parse_value(v) for _, v in rows], dtype=float)
        scores = np.asarray(scorer(values), dtype=float)
        if scores.shape != values.shape:
            raise ValueError(f"{path}: scorer returned {scores.shape}, expected {values.shape}")
        target = out_dir / path.relative_to(data_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["timestamp", "value", "anomaly_score"])
            writer.writerows((t, v, repr(s)) for (t, v), s in zip(rows, scores.tolist(), strict=True))
        total += len(rows)
    return total


def _load_scorer(path: Path) -> ModuleType:
    """Import ``nab_score.py`` from a file path."""
    spec = importlib.util.spec_from_file_location("nab_score", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import NAB scorer from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _timed(scorer: Scorer, elapsed: list[float]) -> Scorer:
    """Wrap ``scorer`` so that the seconds spent in it are added to ``elapsed[0]``."""

    def run(values: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        scores = scorer(values)
        elapsed[0] += time.perf_counter() - start
        return scores

    return run


def main(argv: list[str] | None = None) -> None:
    """Score both baselines on NAB and print their profile scores and speed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "data_dir",
        nargs="?",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="NAB data directory (default: %(default)s)",
    )
    parser.add_argument(
        "--scorer", type=Path, default=DEFAULT_SCORER, help="path of nab_score.py (default: %(default)s)"
    )
    args = parser.parse_args(argv)

    nab_score = _load_scorer(args.scorer)
    detectors: dict[str, Scorer] = {
        "windowed_gaussian": windowed_gaussian_scores,
        "half_space_trees": half_space_trees_scores,
    }
    print(f"{'detector':20s} " + " ".join(f"{p:>18s}" for p in PROFILES) + f" {'points/s':>10s}")
    for name, scorer in detectors.items():
        elapsed = [0.0]
        with tempfile.TemporaryDirectory(prefix=f"nab_{name}_") as tmp:
            rows = write_results(args.data_dir, Path(tmp), _timed(scorer, elapsed))
            result = nab_score.score(tmp, data_dir=str(args.data_dir))
        speed = rows / elapsed[0] if elapsed[0] > 0 else math.inf
        print(f"{name:20s} " + " ".join(f"{result[p]['score']:18.2f}" for p in PROFILES) + f" {speed:10.0f}")


if __name__ == "__main__":
    main()

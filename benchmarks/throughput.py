"""Scoring throughput of the default engine's vectorised path, and its state size.

For 1k, 100k and 1M series: one batch holds one sample of every series (as a
Prometheus evaluation or a remote_write flush does); the figure is samples
scored per second through model, calibration and alert policy, on one core,
in CPU seconds of this process (so other work on a shared machine does not
count against it), in steady state: every series is first taken through its warm-up (model and
calibration), which is not timed.  The compiled kernels are built (or loaded
from numba's cache) during that warm-up too.

``--patterns`` measures the default model with its opt-in pattern detectors
(``model_params: {routine: true, patterns: true}``, see ``models/patterns.py``),
with samples 15 minutes apart so that the untimed batches cover the day of
history the pattern statistics need before they judge (and cost their full
price).

Usage: ``python benchmarks/throughput.py [--series 1000 100000 1000000] [--batches 5] [--warm 130]
[--patterns]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# One core: the bar is per core, and BLAS threads would blur it.
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

import numpy as np  # noqa: E402

from detector.config import DetectorConfig, build_engine, parse_config  # noqa: E402

#: The opt-in pattern detectors: the daily-routine forecaster and the pattern statistics.
PATTERNS = {"model_params": {"routine": True, "patterns": True}}


def state_bytes_per_series(engine) -> float:
    """Bytes of per-series state: every array of the engine's checkpoint (models, calibration,
    policy with its episode peaks, repeat filter, whitening, value range), series keys aside."""
    per_series = [
        array
        for name, array in engine.state_dict().items()
        if not name.startswith("engine.key") and array.ndim and len(array) == len(engine.series)
    ]
    return sum(a.nbytes for a in per_series) / len(engine.series)


def measure(
    n_series: int, batches: int, warm_batches: int, config: DetectorConfig, interval: float = 15.0
) -> tuple[float, float]:
    engine = build_engine(config)
    ids = engine.register([f"series{i}" for i in range(n_series)])
    rng = np.random.default_rng(0)
    base = rng.uniform(10, 1000, n_series)
    for step in range(warm_batches):
        engine.process(ids, np.full(n_series, interval * step), base + rng.standard_normal(n_series))
    values = [base + rng.standard_normal(n_series) for _ in range(batches)]
    started = time.process_time()
    for step, x in enumerate(values, start=warm_batches):
        engine.process(ids, np.full(n_series, interval * step), x)
    elapsed = time.process_time() - started
    return n_series * batches / elapsed, state_bytes_per_series(engine)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument(
        "--warm", type=int, default=130, help="untimed batches first (model warm-up 30 + calibration 100)"
    )
    parser.add_argument("--patterns", action="store_true", help="with the opt-in pattern detectors")
    args = parser.parse_args(argv)
    config = parse_config(PATTERNS) if args.patterns else DetectorConfig()
    print(f"model: auto, model_params {config.model_params}")
    print(f"{'series':>10s} {'samples/s':>12s} {'state bytes/series':>19s}")
    for n_series in args.series:
        rate, size = measure(n_series, args.batches, args.warm, config, 900.0 if args.patterns else 15.0)
        print(f"{n_series:>10d} {rate:>12.0f} {size:>19.0f}")


if __name__ == "__main__":
    main()

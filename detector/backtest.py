"""Replay recorded series through the engine, exactly as the live service would.

All recordings are fed together: step *i* sends row *i* of every file as one
batch, so the backtest exercises the vectorised path the service uses, and each
series only ever sees its own rows up to *i* (strictly causal).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.engine import Engine
from detector.recorded import Recording

OUTPUT_COLUMNS = [
    "timestamp",
    "value",
    "anomaly_score",
    "alert",
    "expected",
    "expected_lower",
    "expected_upper",
    "warming_up",
]


_RESULT_FIELDS: dict[str, type] = {
    "anomaly_score": np.float64,
    "alert": np.bool_,
    "onset": np.bool_,
    "expected": np.float64,
    "lower": np.float64,
    "upper": np.float64,
    "warming": np.bool_,
}


@dataclass
class SeriesResult:
    """The engine's per-row output for one recording, aligned with its rows."""

    recording: Recording
    anomaly_score: np.ndarray
    alert: np.ndarray
    onset: np.ndarray
    expected: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    warming: np.ndarray

    @property
    def alerts(self) -> int:
        return int(self.onset.sum())


def run_backtest(
    engine: Engine,
    recordings: list[Recording],
    on_step: Callable[[int], None] | None = None,
) -> list[SeriesResult]:
    """Score every row of every recording; ``on_step(rows)`` reports progress."""
    ids = engine.register([recording.name for recording in recordings])
    lengths = np.array([len(r) for r in recordings], dtype=np.int64)
    longest = int(lengths.max()) if len(lengths) else 0
    # Longest first, so the series still running at step i are a prefix.
    order = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[order]
    shape = (len(recordings), longest)
    t = np.zeros(shape)
    x = np.full(shape, np.nan)
    for row, index in enumerate(order):
        t[row, : lengths[index]] = recordings[index].t
        x[row, : lengths[index]] = recordings[index].values
    columns = {name: np.zeros(shape, dtype=dtype) for name, dtype in _RESULT_FIELDS.items()}
    active = len(recordings)
    for step in range(longest):
        while active and sorted_lengths[active - 1] <= step:
            active -= 1
        out = engine.process(ids[order[:active]], t[:active, step], x[:active, step])
        for name in _RESULT_FIELDS:
            columns[name][:active, step] = getattr(out, name)
        if on_step is not None:
            on_step(active)
    results = []
    for index, recording in enumerate(recordings):
        row = int(np.nonzero(order == index)[0][0])
        n = len(recording)
        fields = {name: columns[name][row, :n].copy() for name in _RESULT_FIELDS}
        results.append(SeriesResult(recording=recording, **fields))
    return results


def _number(value: float) -> str:
    return "" if not np.isfinite(value) else f"{value:.10g}"


def write_result(result: SeriesResult, path: Path) -> None:
    """Write one result CSV: one row per input row, in the same order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    recording = result.recording
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(OUTPUT_COLUMNS)
        for i, stamp in enumerate(recording.timestamps):
            writer.writerow(
                [
                    stamp,
                    _number(recording.values[i]),
                    f"{result.anomaly_score[i]:.12g}",
                    int(result.alert[i]),
                    _number(result.expected[i]),
                    _number(result.lower[i]),
                    _number(result.upper[i]),
                    int(result.warming[i]),
                ]
            )

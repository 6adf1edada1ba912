"""The streaming engine: series state, calibration, alert policy.

Samples go in, calibrated anomaly scores (``1 - p``, with p the tail
probability of a deviation at least this extreme under the series' own recent
normal behaviour), expected bands and alert state come out.
"""

from detector.calibration import TailCalibrator
from detector.engine import Engine, ScoredBatch, SeriesTable
from detector.policy import AlertDecision, AlertPolicy

__all__ = ["AlertDecision", "AlertPolicy", "Engine", "ScoredBatch", "SeriesTable", "TailCalibrator"]

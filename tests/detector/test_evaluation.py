"""Event-level evaluation against NAB-style labelled windows, and incident coverage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from detector.backtest import SeriesResult
from detector.evaluation import (
    LabelsError,
    combine,
    cover,
    cover_series,
    evaluate,
    evaluate_series,
    load_labels,
)
from detector.recorded import parse_timestamp, read_recording

START = "2026-03-02 00:00:00"
REPLAY_DATA = Path(__file__).resolve().parents[2] / "replay_data"


def _result(tmp_path: Path, name: str, rows: int, alert_rows: list[int]) -> SeriesResult:
    """A recording of ``rows`` minutes read from disk, alerting on ``alert_rows``."""
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    base = parse_timestamp(START)
    lines = ["timestamp,value", *(f"{base + 60 * i:.0f},1.0" for i in range(rows))]
    path.write_text("\n".join(lines) + "\n")
    recording = read_recording(path, name)
    alert = np.zeros(rows, dtype=bool)
    alert[alert_rows] = True
    onset = alert & ~np.r_[False, alert[:-1]]
    zeros = np.zeros(rows)
    return SeriesResult(
        recording=recording,
        anomaly_score=zeros,
        alert=alert,
        onset=onset,
        expected=zeros,
        lower=zeros,
        upper=zeros,
        warming=np.zeros(rows, dtype=bool),
    )


def _minute(i: int) -> float:
    return parse_timestamp(START) + 60.0 * i


def _labels(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(data, indent=4))
    return path


def test_reads_nab_format(tmp_path: Path) -> None:
    path = _labels(
        tmp_path,
        {"a/x.csv": [["2014-04-10 07:15:00.000000", "2014-04-11 16:45:00.000000"]], "b.csv": []},
    )
    labels = load_labels(path)
    assert labels["a/x.csv"] == [
        (parse_timestamp("2014-04-10 07:15:00"), parse_timestamp("2014-04-11 16:45:00"))
    ]
    assert labels["b.csv"] == []


def test_detection_delay_and_false_alerts(tmp_path: Path) -> None:
    # Window over minutes 100-120; alert opens at 105 (detected after 5 min),
    # another at 300 is outside every window.
    result = _result(tmp_path, "s.csv", 1441, [105, 106, 107, 300, 301])
    evaluation = evaluate_series(result, [(_minute(100), _minute(120))])
    assert (evaluation.windows, evaluation.detected, evaluation.false_alerts) == (1, 1, 1)
    assert evaluation.minutes_to_detect == (5.0,)
    assert evaluation.series_days == pytest.approx(1.0)
    assert evaluation.false_alerts_per_day == pytest.approx(1.0)


def test_alert_firing_into_a_window_detects_it_at_once(tmp_path: Path) -> None:
    result = _result(tmp_path, "s.csv", 200, list(range(90, 110)))
    evaluation = evaluate_series(result, [(_minute(100), _minute(150))])
    assert evaluation.detected == 1
    assert evaluation.minutes_to_detect == (0.0,)
    # The alert opened at 90, before the window: that onset is a false alert.
    assert evaluation.false_alerts == 1


def test_window_ends_are_inclusive(tmp_path: Path) -> None:
    result = _result(tmp_path, "s.csv", 200, [120])
    evaluation = evaluate_series(result, [(_minute(100), _minute(120))])
    assert evaluation.detected == 1 and evaluation.false_alerts == 0


def test_missed_window(tmp_path: Path) -> None:
    evaluation = evaluate_series(_result(tmp_path, "s.csv", 200, []), [(_minute(10), _minute(20))])
    assert (evaluation.windows, evaluation.detected) == (1, 0)
    assert math.isnan(evaluation.median_minutes_to_detect)


def test_unlabelled_series_and_unknown_labels(tmp_path: Path) -> None:
    a = _result(tmp_path, "dir/a.csv", 100, [50])
    b = _result(tmp_path, "b.csv", 100, [10, 60])
    labels = {"dir/a.csv": [(_minute(40), _minute(60))], "elsewhere.csv": [(_minute(0), _minute(1))]}
    first, second = evaluate([a, b], labels)
    assert (first.name, first.windows, first.detected, first.false_alerts) == ("dir/a.csv", 1, 1, 0)
    assert (second.name, second.windows, second.false_alerts) == ("b.csv", 0, 2)
    total = combine([first, second])
    assert (total.name, total.windows, total.detected, total.false_alerts) == ("total", 1, 1, 2)


def test_total_pools_detection_times(tmp_path: Path) -> None:
    a = evaluate_series(_result(tmp_path, "a.csv", 100, [12]), [(_minute(10), _minute(20))])
    b = evaluate_series(
        _result(tmp_path, "b.csv", 100, [31, 58]),
        [(_minute(30), _minute(40)), (_minute(50), _minute(60))],
    )
    total = combine([a, b])
    assert total.minutes_to_detect == (2.0, 1.0, 8.0)
    assert total.median_minutes_to_detect == 2.0


def test_single_row_series_has_no_rate(tmp_path: Path) -> None:
    evaluation = evaluate_series(_result(tmp_path, "s.csv", 1, [0]), [])
    assert evaluation.series_days == 0.0
    assert math.isnan(evaluation.false_alerts_per_day)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (["a.csv"], "expected an object of recording name"),
        ({"a.csv": "2026-03-02"}, "'a.csv': expected a list of [start, end] windows"),
        ({"a.csv": [["2026-03-02 00:00:00"]]}, "'a.csv' window 1: expected [start, end]"),
        ({"a.csv": [[START, "tomorrow"]]}, "holds a timestamp that is neither ISO-8601"),
        ({"a.csv": [[START, START], ["2026-03-03", "2026-03-02"]]}, "'a.csv' window 2: starts after it ends"),
    ],
)
def test_malformed_labels_are_clear(tmp_path: Path, data: object, expected: str) -> None:
    path = _labels(tmp_path, data)
    with pytest.raises(LabelsError) as caught:
        load_labels(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert expected in str(caught.value)


def test_invalid_json_names_line(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text('{\n  "a.csv": [\n    ["2026-03-02", ]\n}\n')
    with pytest.raises(LabelsError, match=r"labels\.json:3: not valid JSON"):
        load_labels(path)


def test_missing_labels_file(tmp_path: Path) -> None:
    with pytest.raises(LabelsError, match=r"absent\.json: cannot read the labels"):
        load_labels(tmp_path / "absent.json")


def test_coverage_of_an_incident(tmp_path: Path) -> None:
    # Incident over minutes 100-119 (20 rows); alerts at 105-109 and 112-119.
    result = _result(tmp_path, "s.csv", 200, [*range(105, 110), *range(112, 120)])
    [incident] = cover_series(result, [(_minute(100), _minute(119))])
    assert incident.series == "s.csv" and incident.incident == (_minute(100), _minute(119))
    assert incident.coverage == pytest.approx(13 / 20)
    assert incident.onsets == 2
    assert incident.minutes_to_first_alert == 5.0
    assert incident.firing_at_end


def test_alert_firing_into_an_incident_covers_it_without_an_onset(tmp_path: Path) -> None:
    result = _result(tmp_path, "s.csv", 200, list(range(90, 105)))
    [incident] = cover_series(result, [(_minute(100), _minute(119))])
    assert incident.coverage == pytest.approx(5 / 20)
    assert incident.onsets == 0  # the alert opened at 90, before the incident
    assert incident.minutes_to_first_alert == 0.0
    assert not incident.firing_at_end


def test_incident_ends_are_inclusive(tmp_path: Path) -> None:
    result = _result(tmp_path, "s.csv", 200, [99, 119, 120])
    [incident] = cover_series(result, [(_minute(100), _minute(119))])
    assert incident.coverage == pytest.approx(1 / 20)
    assert (incident.onsets, incident.minutes_to_first_alert, incident.firing_at_end) == (1, 19.0, True)


def test_missed_incident_and_incident_outside_the_recording(tmp_path: Path) -> None:
    result = _result(tmp_path, "s.csv", 200, [50])
    missed, outside = cover_series(result, [(_minute(100), _minute(119)), (_minute(500), _minute(510))])
    assert (missed.coverage, missed.onsets, missed.firing_at_end) == (0.0, 0, False)
    assert math.isnan(missed.minutes_to_first_alert)
    assert math.isnan(outside.coverage) and math.isnan(outside.minutes_to_first_alert)
    assert (outside.onsets, outside.firing_at_end) == (0, False)


def test_cover_follows_the_results_and_ignores_unknown_series(tmp_path: Path) -> None:
    a = _result(tmp_path, "a.csv", 100, [10])
    b = _result(tmp_path, "dir/b.csv", 100, [])
    c = _result(tmp_path, "c.csv", 100, [60, 61])
    incidents = {
        "c.csv": [(_minute(60), _minute(61)), (_minute(0), _minute(9))],
        "a.csv": [(_minute(10), _minute(19))],
        "elsewhere.csv": [(_minute(0), _minute(1))],
    }
    covered = cover([a, b, c], incidents)
    assert [(row.series, row.coverage) for row in covered] == [("a.csv", 0.1), ("c.csv", 1.0), ("c.csv", 0.0)]


def test_replay_data_incidents_lie_inside_their_labelled_windows() -> None:
    labels = load_labels(REPLAY_DATA / "labels.json")
    incidents = load_labels(REPLAY_DATA / "incidents.json")
    assert incidents.keys() == labels.keys()
    for name, spans in incidents.items():
        assert len(spans) == len(labels[name]), name
        for (start, end), (label_start, label_end) in zip(spans, labels[name], strict=True):
            assert label_start < start <= end <= label_end, name

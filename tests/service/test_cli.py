"""The ``anomaly-detector backtest`` command, run on real files."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detector.backtest import OUTPUT_COLUMNS
from detector.recorded import parse_timestamp
from service.cli import main

ROOT = Path(__file__).resolve().parents[2]
BASE = parse_timestamp("2026-03-02 00:00:00")
ROWS = 600
SPIKE = range(500, 505)


def _stamp(seconds: float) -> str:
    minutes = int(seconds - BASE) // 60
    day, minute = divmod(minutes, 1440)
    return f"2026-03-{2 + day:02d} {minute // 60:02d}:{minute % 60:02d}:00"


def _write(path: Path, rows: list[tuple[str, str]], header: str = "timestamp,value") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *(f"{t},{v}" for t, v in rows)]) + "\n")
    return path


def _spiky(path: Path) -> Path:
    """Minutely noise around 100 with a five-minute spike to 160."""
    values = 100.0 + np.random.default_rng(0).normal(0.0, 1.0, ROWS)
    values[SPIKE.start : SPIKE.stop] = 160.0
    return _write(path, [(_stamp(BASE + 60 * i), f"{v:.3f}") for i, v in enumerate(values)])


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("anomaly-detector: error: ")
    assert "Traceback" not in captured.err
    return captured.err


def test_one_output_row_per_input_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _spiky(tmp_path / "in" / "spiky.csv")
    assert main(["backtest", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 0
    rows = _read(tmp_path / "out" / "spiky.csv")
    assert list(rows[0]) == OUTPUT_COLUMNS
    assert [r["timestamp"] for r in rows] == [r["timestamp"] for r in _read(source)]
    scores = [float(r["anomaly_score"]) for r in rows]
    assert all(0.0 <= s <= 1.0 for s in scores)
    summary = capsys.readouterr().out
    assert "series         1" in summary and f"points         {ROWS}" in summary


def test_spike_alerts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _spiky(tmp_path / "spiky.csv")
    assert main(["backtest", str(tmp_path / "spiky.csv"), "--output", str(tmp_path / "out")]) == 0
    rows = _read(tmp_path / "out" / "spiky.csv")
    assert any(rows[i]["alert"] == "1" for i in SPIKE)
    assert max(float(rows[i]["anomaly_score"]) for i in SPIKE) > 0.999
    assert "alerts opened" in capsys.readouterr().out


def test_gaps_stay_gaps(tmp_path: Path) -> None:
    rows = [(_stamp(BASE + 60 * i), "5.0") for i in range(50)]
    rows[20] = (rows[20][0], "")
    rows[30] = (rows[30][0], "NaN")
    _write(tmp_path / "gaps.csv", rows)
    assert main(["backtest", str(tmp_path / "gaps.csv"), "--output", str(tmp_path / "out"), "--quiet"]) == 0
    out = _read(tmp_path / "out" / "gaps.csv")
    assert len(out) == 50
    assert out[20]["value"] == "" and out[30]["value"] == ""
    assert out[20]["alert"] == "0" and float(out[20]["anomaly_score"]) == 0.0
    assert out[21]["value"] == "5"


def test_repeated_and_backwards_timestamps(tmp_path: Path) -> None:
    stamps = [BASE + 60 * i for i in range(100)]
    stamps[40] = stamps[39]
    stamps[60] = stamps[50]
    rows = [(_stamp(t), f"{10 + i % 3}") for i, t in enumerate(stamps)]
    _write(tmp_path / "odd.csv", rows)
    assert main(["backtest", str(tmp_path / "odd.csv"), "--output", str(tmp_path / "out"), "--quiet"]) == 0
    out = _read(tmp_path / "out" / "odd.csv")
    assert [r["timestamp"] for r in out] == [t for t, _ in rows]
    assert all(math.isfinite(float(r["anomaly_score"])) for r in out)


def test_several_series_keep_their_relative_paths(tmp_path: Path) -> None:
    _spiky(tmp_path / "in" / "a" / "one.csv")
    _write(tmp_path / "in" / "b" / "two.csv", [(_stamp(BASE + 60 * i), "1") for i in range(10)])
    assert main(["backtest", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--quiet"]) == 0
    assert len(_read(tmp_path / "out" / "a" / "one.csv")) == ROWS
    assert len(_read(tmp_path / "out" / "b" / "two.csv")) == 10


def test_labels_report_windows_detected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _spiky(tmp_path / "in" / "spiky.csv")
    labels = tmp_path / "labels.json"
    window = [_stamp(BASE + 60 * (SPIKE.start - 5)), _stamp(BASE + 60 * (SPIKE.stop + 5))]
    labels.write_text(json.dumps({"spiky.csv": [window], "other.csv": [window]}))
    argv = ["backtest", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--labels", str(labels)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "labelled       1 of 1 series" in out
    header = next(line for line in out.splitlines() if line.startswith("series ") and "detected" in line)
    assert "windows  detected  false alerts" in header
    total = next(line for line in out.splitlines() if line.startswith("total "))
    windows, detected = total.split()[1:3]
    assert (windows, detected) == ("1", "1")


def _covered(path: Path, rows: range) -> list[str]:
    """The coverage table's figures for an incident over ``rows``, from the result file's alert column."""
    firing = [row["alert"] == "1" for row in _read(path)]
    inside = firing[rows.start : rows.stop]
    onsets = [i for i in rows if firing[i] and not firing[i - 1]]
    first = f"{inside.index(True):.1f}" if any(inside) else "-"
    coverage = f"{100 * sum(inside) / len(inside):.0f}"
    return [coverage, str(len(onsets)), first, "yes" if inside[-1] else "no"]


def test_incidents_report_coverage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _spiky(tmp_path / "in" / "spiky.csv")
    spike, calm = SPIKE, range(300, 310)
    windows = [
        [_stamp(BASE + 60 * rows.start), _stamp(BASE + 60 * (rows.stop - 1))] for rows in (spike, calm)
    ]
    incidents = tmp_path / "incidents.json"
    incidents.write_text(json.dumps({"spiky.csv": windows, "other.csv": windows}))
    report = tmp_path / "report.html"
    argv = ["backtest", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    assert main([*argv, "--incidents", str(incidents), "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "incidents      2 in 1 of 1 series" in out
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("incident coverage: "))
    titles, *rows = (re.split(r"\s{2,}", line.strip()) for line in lines[at + 1 :])
    assert titles == [
        "series",
        "incident",
        "coverage %",
        "onsets inside",
        "minutes to first alert",
        "firing at end",
    ]
    result = tmp_path / "out" / "spiky.csv"
    assert rows == [
        ["spiky.csv", f"{start} to {end}", *_covered(result, span)]
        for (start, end), span in zip(windows, (spike, calm), strict=True)
    ]
    assert rows[0][2] != "0"  # the spike alerted
    # The report has the same table.
    table = re.search(r'<table id="coverage">(.*?)</table>', report.read_text(encoding="utf-8"), re.S)
    assert table is not None
    cells = [
        re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", table.group(1), re.S)
    ]
    assert cells == [cell for row in rows for cell in row]


def test_config_is_applied(tmp_path: Path) -> None:
    _spiky(tmp_path / "spiky.csv")
    config = tmp_path / "config.yaml"
    config.write_text("model: ewma\nalerting: {direction: low, cooldown: 1h}\n")
    argv = ["backtest", str(tmp_path / "spiky.csv"), "--output", str(tmp_path / "out")]
    assert main([*argv, "--config", str(config), "--quiet"]) == 0
    rows = _read(tmp_path / "out" / "spiky.csv")
    assert all(rows[i]["alert"] == "0" for i in SPIKE)  # the spike is high: it alerts by default only


def _onsets(path: Path) -> list[int]:
    """Rows of a result file where an alert opened."""
    firing = [row["alert"] == "1" for row in _read(path)]
    return [i for i, now in enumerate(firing) if now and (i == 0 or not firing[i - 1])]


def _rate_table(out: str) -> tuple[str, list[str], list[list[str]]]:
    """The summary's alert rate against the budget: its caption, column titles and rows."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("alert rate against the budget"))
    end = lines.index("", start) if "" in lines[start:] else len(lines)
    titles, *rows = (re.split(r"\s{2,}", line.strip()) for line in lines[start + 1 : end])
    return lines[start], titles, rows


def _two_series(directory: Path) -> float:
    """The spiky series and a noisy one beside it, over the same minutes; returns the span in days."""
    _spiky(directory / "spiky.csv")
    noisy = 10.0 + np.random.default_rng(1).standard_t(3, ROWS)
    _write(directory / "noisy.csv", [(_stamp(BASE + 60 * i), f"{v:.3f}") for i, v in enumerate(noisy)])
    return (ROWS - 1) * 60 / 86_400


def test_summary_sets_the_alert_rate_beside_the_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    days = _two_series(tmp_path / "in")
    config = tmp_path / "config.yaml"
    config.write_text("model: ewma\nalerting: {false_alerts_per_day: 3}\n")
    argv = ["backtest", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--config", str(config)]
    assert main(argv) == 0
    caption, titles, rows = _rate_table(capsys.readouterr().out)
    assert caption == (
        "alert rate against the budget, all 2 series together: every alert onset (no labels tell false ones)"
    )
    assert titles == ["run", "budget", "alerts/day", "budget/day", "alerts/series-day", "budget/series-day"]
    onsets = sum(len(_onsets(tmp_path / "out" / name)) for name in ("spiky.csv", "noisy.csv"))
    assert onsets >= 1  # the spike at least
    # The budget is for the whole detector: 3 a day, shared by 2 series.
    assert rows == [
        [
            "backtest",
            "3 a day for the detector",
            f"{onsets / days:.3f}",
            "3.000",
            f"{onsets / (2 * days):.3f}",
            "1.500",
        ]
    ]


def test_with_labels_the_rate_is_of_false_alerts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    days = _two_series(tmp_path / "in")
    labels = tmp_path / "labels.json"
    window = [_stamp(BASE + 60 * (SPIKE.start - 5)), _stamp(BASE + 60 * (SPIKE.stop + 5))]
    labels.write_text(json.dumps({"spiky.csv": [window]}))
    config = tmp_path / "config.yaml"
    config.write_text("model: ewma\nalerting: {false_alerts_per_week: 200}\n")  # enough to see false alerts
    argv = ["backtest", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--labels", str(labels)]
    assert main([*argv, "--config", str(config)]) == 0
    out = capsys.readouterr().out
    caption, titles, [row] = _rate_table(out)
    assert caption.endswith("false alerts (onsets outside every labelled window)")
    assert titles[2:] == ["false alerts/day", "budget/day", "false alerts/series-day", "budget/series-day"]
    inside = range(SPIKE.start - 5, SPIKE.stop + 6)
    spiky = _onsets(tmp_path / "out" / "spiky.csv")
    assert any(i in inside for i in spiky)  # the labelled spike alerted, and is not counted
    false = sum(i not in inside for i in spiky) + len(_onsets(tmp_path / "out" / "noisy.csv"))
    assert false >= 1
    # The budget is per series: 200 a week each, so 400/7 a day for the two.
    assert row == [
        "backtest",
        "200 a week per series",
        f"{false / days:.3f}",
        "57.143",
        f"{false / (2 * days):.3f}",
        "28.571",
    ]
    total = next(line for line in out.splitlines() if line.startswith("total "))
    assert total.split()[3] == str(false)  # the same false alerts as the table's total


def test_unknown_config_key_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _spiky(tmp_path / "spiky.csv")
    config = tmp_path / "config.yaml"
    config.write_text("alerting: {cooldown: 5m, windw: 4}\n")
    argv = [
        "backtest",
        str(tmp_path / "spiky.csv"),
        "--output",
        str(tmp_path / "out"),
        "--config",
        str(config),
    ]
    err = _fails(argv, capsys)
    assert f"{config}:1: alerting.windw: unknown key" in err
    assert not (tmp_path / "out").exists()


def test_bad_header(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "bad.csv", [("2026-03-02 00:00:00", "1")], header="time,val")
    err = _fails(["backtest", str(path), "--output", str(tmp_path / "out")], capsys)
    assert f"{path}:1: header is time,val" in err


def test_unparsable_timestamp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "bad.csv", [("2026-03-02 00:00:00", "1"), ("yesterday", "2")])
    err = _fails(["backtest", str(path), "--output", str(tmp_path / "out")], capsys)
    assert f"{path}:3: timestamp 'yesterday'" in err


def test_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(["backtest", str(tmp_path / "absent.csv"), "--output", str(tmp_path / "out")], capsys)
    assert "absent.csv: no such file or directory" in err


def test_malformed_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _spiky(tmp_path / "spiky.csv")
    labels = tmp_path / "labels.json"
    labels.write_text('{"spiky.csv": [["2026-03-02 00:00:00"]]}')
    argv = [
        "backtest",
        str(tmp_path / "spiky.csv"),
        "--output",
        str(tmp_path / "out"),
        "--labels",
        str(labels),
    ]
    assert "'spiky.csv' window 1: expected [start, end]" in _fails(argv, capsys)


def test_refuses_to_overwrite_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _spiky(tmp_path / "in" / "spiky.csv")
    before = source.read_text()
    err = _fails(["backtest", str(tmp_path / "in"), "--output", str(tmp_path / "in")], capsys)
    assert "would overwrite its input" in err
    assert source.read_text() == before


def test_python_dash_m_service(tmp_path: Path) -> None:
    _spiky(tmp_path / "spiky.csv")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "service",
            "backtest",
            str(tmp_path / "spiky.csv"),
            "--output",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "points/s" in completed.stdout
    assert completed.stderr == ""  # no progress bar when stderr is not a terminal
    assert (tmp_path / "out" / "spiky.csv").is_file()

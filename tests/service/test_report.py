"""The backtest report and ``--compare``, run through the command line on real files."""

from __future__ import annotations

import html as markup
import json
import re
from pathlib import Path

import numpy as np
import pytest

from detector.backtest import SeriesResult
from detector.evaluation import Budget
from detector.recorded import Recording, parse_timestamp
from service.cli import main
from service.report import Run, compare, envelope, plot_series, render_report, unmatched_onsets

ROOT = Path(__file__).resolve().parents[2]
BASE = parse_timestamp("2026-03-02 00:00:00")
ROWS = 600
SPIKE = range(500, 503)
WINDOW = ["2026-03-02 08:15:00", "2026-03-02 08:30:00"]  # rows 495-510, around the spike
#: A budget of 50 false alerts a week per series: alerts on the spike's first point, and on some noise.
EAGER = "model: ewma\nalerting: {false_alerts_per_week: 50, cooldown: 1h}\n"
#: Only low values count as anomalous, so the spike (high) opens no alert.
LOW_ONLY = "model: ewma\ncalibration: {direction: low}\n"


def _write_series(path: Path, values: np.ndarray) -> None:
    """Minutely rows from 2026-03-02 00:00 (less than a day of them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"2026-03-02 {i // 60:02d}:{i % 60:02d}:00,{v:.3f}" for i, v in enumerate(values)]
    path.write_text("\n".join(["timestamp,value", *rows]) + "\n")


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """Two series: one spiky (labelled), one calm (not labelled)."""
    rng = np.random.default_rng(0)
    spiky = 100.0 + rng.normal(0.0, 1.0, ROWS)
    spiky[SPIKE.start : SPIKE.stop] = 160.0
    _write_series(tmp_path / "in" / "spiky.csv", spiky)
    _write_series(tmp_path / "in" / "calm.csv", 50.0 + rng.normal(0.0, 1.0, ROWS))
    (tmp_path / "labels.json").write_text(json.dumps({"spiky.csv": [WINDOW]}))
    (tmp_path / "eager.yaml").write_text(EAGER)
    (tmp_path / "low.yaml").write_text(LOW_ONLY)
    return tmp_path


def _sections(html: str) -> dict[str, str]:
    """Each series' plot section, by series name."""
    found = re.findall(r'<section id="series-\d+">\s*<h3>(.*?)</h3>(.*?)</section>', html, flags=re.S)
    return dict(found)


def test_report_is_one_self_contained_file(inputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = inputs / "report.html"
    argv = ["backtest", str(inputs / "in"), "--output", str(inputs / "out"), "--labels"]
    argv += [str(inputs / "labels.json"), "--report", str(report), "--config", str(inputs / "eager.yaml")]
    assert main(argv) == 0
    assert f"report         {report}" in capsys.readouterr().out
    html = report.read_text(encoding="utf-8")
    # Nothing to fetch: no scripts, style sheets, images or fonts from anywhere.
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, flags=re.I)
    assert not re.search(r"<script|<link|<img|<iframe|@import|url\(\s*['\"]?(?:https?:)?//", html, flags=re.I)
    assert html.count("<svg") == 2
    sections = _sections(html)
    assert set(sections) == {"calm.csv", "spiky.csv"}
    # The labelled window is shaded (the window colour) on the labelled series only.
    assert "#16a34a" in sections["spiky.csv"] and "#16a34a" not in sections["calm.csv"]
    assert "labelled incident" in sections["spiky.csv"]
    summary = html[html.index("<h2>Summary</h2>") : html.index("<h2>Series</h2>")]
    for column in ("points", "alerts/series-day", "windows", "detected", "false alerts/series-day", "median"):
        assert column in summary
    assert summary.count('href="#series-') == 2  # each row links to its plot


def test_report_without_labels_has_no_label_columns(inputs: Path) -> None:
    report = inputs / "report.html"
    argv = ["backtest", str(inputs / "in" / "calm.csv"), "--output", str(inputs / "out")]
    assert main([*argv, "--report", str(report), "--quiet"]) == 0
    html = report.read_text(encoding="utf-8")
    assert html.count("<svg") == 1
    assert "alerts/series-day" in html and "median minutes to detect" not in html
    assert "every alert onset (no labels tell false ones)" in html


def _result(t: np.ndarray, alert: np.ndarray, onset: np.ndarray) -> SeriesResult:
    n = len(t)
    values = np.sin(np.arange(n) / 50.0)
    recording = Recording(Path("x.csv"), "x.csv", [str(v) for v in t], t, values)
    score = np.where(alert, 0.9999, 0.5)
    return SeriesResult(recording, score, alert, onset, values, values - 1, values + 1, np.zeros(n, bool))


def test_long_series_are_reduced_but_every_alert_onset_is_drawn() -> None:
    n = 200_000
    t = BASE + 60.0 * np.arange(n)
    onset = np.zeros(n, dtype=bool)
    onset[[1_000, 1_001, 150_000]] = True  # two within one pixel column
    svg = plot_series([_result(t, onset.copy(), onset)], ["backtest"], windows=[])
    group = re.search(r'<g id="alert-onsets-backtest">(.*?)</g>', svg, flags=re.S)
    assert group is not None and group.group(1).count("<use") == 3
    assert len(svg) < 400_000  # four lines of 200k points, reduced to about 2 points per pixel column


def test_envelope_keeps_each_columns_extremes() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(size=10_007)
    y[[17, 5_000]] = [40.0, -40.0]
    t_small, y_small = envelope(np.arange(10_007.0), y, columns=100)
    assert len(y_small) <= 200 and y_small.max() == 40.0 and y_small.min() == -40.0
    assert np.all(np.diff(t_small) >= 0)


def test_alerts_are_the_same_when_the_other_run_fires_during_them() -> None:
    t = np.arange(10.0)
    a_alert = np.array([0, 1, 1, 1, 0, 0, 0, 1, 1, 0], dtype=bool)
    a_onset = np.array([0, 1, 0, 0, 0, 0, 0, 1, 0, 0], dtype=bool)
    b_alert = np.array([0, 0, 0, 1, 1, 0, 0, 0, 0, 0], dtype=bool)  # opens later, overlaps A's first
    b_onset = np.array([0, 0, 0, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    a, b = _result(t, a_alert, a_onset), _result(t, b_alert, b_onset)
    assert unmatched_onsets(a, b) == [7.0]
    assert unmatched_onsets(b, a) == []
    difference = compare(a, b, windows=[(6.0, 9.0), (0.0, 2.0)])
    assert difference.detected_only == ([(6.0, 9.0), (0.0, 2.0)], [])
    assert difference.alerts_only == ([7.0], [])
    assert not difference.same


def test_compare_prints_both_and_what_differs(inputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = inputs / "compare.html"
    argv = ["backtest", str(inputs / "in"), "--output", str(inputs / "out"), "--labels"]
    argv += [str(inputs / "labels.json"), "--report", str(report)]
    assert main([*argv, "--compare", str(inputs / "eager.yaml"), str(inputs / "low.yaml")]) == 0
    out = capsys.readouterr().out
    assert f"A              {inputs / 'eager.yaml'}" in out
    assert f"B              {inputs / 'low.yaml'}" in out
    assert re.search(r"alerts opened  A \d+, B \d+", out)
    header = next(line for line in out.splitlines() if line.startswith("series ") and "run" in line)
    assert "run  windows  detected  false alerts" in header and header.endswith("alerts  alerts/series-day")
    spiky = {line.split()[1]: line.split() for line in out.splitlines() if line.startswith("spiky.csv ")}
    assert spiky["A"][2:4] == ["1", "1"] and spiky["B"][2:4] == ["1", "0"]  # windows, detected
    assert "what B changes against A" in out
    assert f"detected by A only  {WINDOW[0]} to {WINDOW[1]}" in out
    assert re.search(r"alerts only in A .*2026-03-02 08:2\d:00", out)  # the spike's alert
    # Both runs' results are kept, side by side.
    for run in ("A", "B"):
        assert (inputs / "out" / run / "spiky.csv").is_file() and (
            inputs / "out" / run / "calm.csv"
        ).is_file()
    html = report.read_text(encoding="utf-8")
    assert html.count("<svg") == 2  # one plot per series, both runs overlaid
    assert "What B changes against A" in html and "A: expected" in html and "B: expected" in html
    assert 'id="alert-onsets-A"' in _sections(html)["spiky.csv"]


def _cells(row: str, tag: str) -> list[str]:
    """The text of each ``<tag>`` cell of a table row."""
    return [
        markup.unescape(re.sub(r"<[^>]+>", "", cell)).strip()
        for cell in re.findall(rf"<{tag}[^>]*>(.*?)</{tag}>", row, flags=re.S)
    ]


def test_each_run_has_its_alert_rate_and_budget_worded_alike_everywhere(
    inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = inputs / "compare.html"
    argv = ["backtest", str(inputs / "in"), "--output", str(inputs / "out"), "--labels"]
    argv += [str(inputs / "labels.json"), "--report", str(report)]
    assert main([*argv, "--compare", str(inputs / "eager.yaml"), str(inputs / "low.yaml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("alert rate against the budget"))
    caption = lines[at]
    assert caption.endswith("all 2 series together: false alerts (onsets outside every labelled window)")
    titles, a, b = (re.split(r"\s{2,}", line.strip()) for line in lines[at + 1 : at + 4])
    assert titles == [
        "run",
        "budget",
        "false alerts/day",
        "budget/day",
        "false alerts/series-day",
        "budget/series-day",
    ]
    days = (ROWS - 1) / 1440
    false_alerts = {line.split()[1]: int(line.split()[4]) for line in lines if line.startswith("total ")}
    assert false_alerts["A"] >= 1 and false_alerts["B"] == 0
    # Each run against its own budget: 50 a week per series for A, the default 1 for B.
    per_day = false_alerts["A"] / days
    assert a == ["A", "50 a week per series", f"{per_day:.3f}", "14.286", f"{per_day / 2:.3f}", "7.143"]
    assert b == ["B", "1 a week per series", "0.000", "0.286", "0.000", "0.143"]
    # The report's run table says the same, in the same words.
    table = re.search(
        r'<table id="rates">(.*?)</table>\s*<p class="meta">(.*?)</p>', report.read_text(), re.S
    )
    assert table is not None
    header, *rows = re.findall(r"<tr>(.*?)</tr>", table.group(1), flags=re.S)
    assert _cells(header, "th") == ["run", "configuration", "alerts", *titles[1:]]
    for row, terminal in zip(rows, (a, b), strict=True):
        cells = _cells(row, "td")
        assert [cells[0], *cells[3:]] == terminal
    assert markup.unescape(table.group(2)) == caption[:1].upper() + caption[1:] + "."


def test_identical_configurations_differ_in_nothing(inputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    eager = str(inputs / "eager.yaml")
    argv = ["backtest", str(inputs / "in"), "--output", str(inputs / "out"), "--compare", eager, eager]
    assert main(argv) == 0
    assert "nothing: both detect the same windows and raise the same alerts" in capsys.readouterr().out


def test_config_and_compare_exclude_each_other(inputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    eager = str(inputs / "eager.yaml")
    argv = ["backtest", str(inputs / "in"), "--output", str(inputs / "out"), "--config", eager]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--compare", eager, eager])
    assert exit_.value.code == 2
    assert "argument --compare: not allowed with argument --config" in capsys.readouterr().err
    assert not (inputs / "out").exists()


def test_render_report_refuses_three_runs() -> None:
    with pytest.raises(ValueError, match="one run or compares two, not 3"):
        render_report([Run(name, "defaults", Budget(false_alerts_per_week=1.0), []) for name in "ABC"])


#: What the service exports (service/exposition.py); a histogram adds _bucket, _sum and _count.
EXPORTED = {
    "anomaly_score",
    "anomaly_expected",
    "anomaly_expected_lower",
    "anomaly_expected_upper",
    "anomaly_detector_samples_ingested_total",
    "anomaly_detector_series_tracked",
    "anomaly_detector_evaluation_duration_seconds",
}


def test_grafana_dashboard_plots_exported_metrics() -> None:
    dashboard = json.loads((ROOT / "examples" / "grafana-dashboard.json").read_text())
    assert 36 <= dashboard["schemaVersion"] <= 40
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["detector"]["query"]["query"] == "label_values(anomaly_score, detector)"
    assert "anomaly_score" in variables["series"]["query"]["query"]
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for expr in exprs:
        names = set(re.findall(r"\banomaly_\w+", expr))
        assert names, expr
        assert {re.sub(r"_(bucket|sum|count)$", "", name) for name in names} <= EXPORTED, expr
    used = {name for expr in exprs for name in re.findall(r"\banomaly_\w+", expr)}
    assert {"anomaly_expected_lower", "anomaly_expected_upper", "anomaly_score"} <= used
    band = next(p for p in dashboard["panels"] if "anomaly_expected_upper{$series}" in str(p.get("targets")))
    fill = {
        override["matcher"]["options"]: {prop["id"]: prop["value"] for prop in override["properties"]}
        for override in band["fieldConfig"]["overrides"]
    }
    assert fill["upper"]["custom.fillBelowTo"] == "lower"

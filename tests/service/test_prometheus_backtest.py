"""Reading from a real Prometheus, and backtest/export from it, with backfilled history."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import service.prometheus
from detector.recorded import parse_timestamp
from service.cli import main
from service.prometheus import (
    PrometheusError,
    PrometheusReader,
    PrometheusUnavailable,
    QueryError,
    Sample,
)
from tests.support.prometheus import PrometheusHandle, free_port, openmetrics, scrape_config, start_prometheus

ROOT = Path(__file__).resolve().parents[2]
BASE = parse_timestamp("2026-03-02 00:00:00")
MINUTES = 8 * 1440  # more than the 11,000 points Prometheus returns per series and query
DAY = BASE + 7 * 86_400.0  # the last day, 2026-03-09, is what the backtests replay
SPIKE = DAY + 12 * 3600.0  # 12:00-12:02 on instance "a"
KEY_A = 'demo_latency_seconds{instance="a",job="api"}'
FILE_A = "demo_latency_seconds-instance=a-job=api.csv"
FILE_B = "demo_latency_seconds-instance=b-job=api.csv"
#: A generous budget (50 false alerts a week per series): alerts on the spike's first point.
EAGER = "model: ewma\nalerting: {false_alerts_per_week: 50, cooldown: 1h}\n"
#: The scored series as the service exports it (service/exposition.py), for the dashboard's queries.
EXPORTED_LABELS = {"detector": "latency", "instance": "a", "job": "api", "metric": "demo_latency_seconds"}


def _history() -> tuple[dict[str, np.ndarray], str]:
    t = BASE + 60.0 * np.arange(MINUTES)
    rng = np.random.default_rng(3)
    a = np.round(0.25 + rng.normal(0.0, 0.01, MINUTES), 4)
    a[(t >= SPIKE) & (t < SPIKE + 180)] = 1.0
    b = np.round(0.5 + rng.normal(0.0, 0.02, MINUTES), 4)
    day = t >= DAY
    exported = {**EXPORTED_LABELS}
    series: list[tuple[dict[str, str], np.ndarray, np.ndarray]] = [
        ({"__name__": "demo_latency_seconds", "job": "api", "instance": "a"}, t, a),
        ({"__name__": "demo_latency_seconds", "job": "api", "instance": "b"}, t, b),
        ({"__name__": "demo_edge", "kind": "special"}, t[:4], np.array([1.0, math.nan, math.inf, -math.inf])),
        ({"__name__": "anomaly_score", **exported}, t[day], np.full(day.sum(), 0.5)),
        ({"__name__": "anomaly_expected", **exported}, t[day], np.full(day.sum(), 0.25)),
        ({"__name__": "anomaly_expected_lower", **exported}, t[day], np.full(day.sum(), 0.2)),
        ({"__name__": "anomaly_expected_upper", **exported}, t[day], np.full(day.sum(), 0.3)),
        (
            {"__name__": "anomaly_detector_samples_ingested_total", "detector": "latency", "source": "pull"},
            t[day],
            np.arange(day.sum()) * 60.0,
        ),
        ({"__name__": "anomaly_detector_series_tracked", "detector": "latency"}, t[day], np.ones(day.sum())),
    ]
    for le, share in (("0.1", 0.5), ("1", 0.9), ("+Inf", 1.0)):
        labels = {"__name__": "anomaly_detector_evaluation_duration_seconds_bucket", "detector": "latency"}
        series.append(({**labels, "le": le}, t[day], share * np.arange(day.sum())))
    return {"a": a, "b": b, "t": t}, openmetrics(series)


@pytest.fixture(scope="module")
def history() -> dict[str, np.ndarray]:
    return _history()[0]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusHandle]:
    with start_prometheus(tmp_path_factory.mktemp("prometheus"), backfill=_history()[1]) as handle:
        yield handle


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def _range_options(url: str, query: str = 'demo_latency_seconds{job="api"}') -> list[str]:
    """The last day, with the start as RFC3339 and the end as Unix seconds."""
    end = DAY + 86_400 - 60
    return ["--prometheus", url, "--query", query, "--start", "2026-03-09T00:00:00Z", "--end", f"{end:.0f}"]


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def pulled(prometheus: PrometheusHandle, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``backtest --prometheus`` over the last day, with labels and a report; its directory and stdout."""
    work = tmp_path_factory.mktemp("pulled")
    (work / "eager.yaml").write_text(EAGER)
    window = ["2026-03-09 11:55:00", "2026-03-09 12:10:00"]
    (work / "labels.json").write_text(json.dumps({KEY_A: [window]}))
    argv = ["backtest", *_range_options(prometheus.url), "--step", "1m", "--output", str(work / "out")]
    argv += ["--config", str(work / "eager.yaml"), "--labels", str(work / "labels.json")]
    status, out, err = _run([*argv, "--report", str(work / "report.html")])
    assert status == 0, err
    return work, out


@pytest.mark.live
def test_range_is_stitched_from_chunks_without_duplicates(
    prometheus: PrometheusHandle, history: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = PrometheusReader(prometheus.url)
    end = BASE + 60.0 * (MINUTES - 1)
    series = reader.range('demo_latency_seconds{job="api"}', BASE, end, 60)
    assert [s.key for s in series] == [KEY_A, KEY_A.replace('"a"', '"b"')]
    for s, name in zip(series, "ab", strict=True):
        assert len(s) == MINUTES
        np.testing.assert_array_equal(s.t, history["t"])  # one grid: no gaps or repeats at chunk edges
        np.testing.assert_array_equal(s.x, history[name])
    # Many small chunks give the same answer.
    monkeypatch.setattr(service.prometheus, "MAX_POINTS_PER_QUERY", 997)
    small = reader.range('demo_latency_seconds{job="api"}', BASE, end, 60)
    for s, again in zip(series, small, strict=True):
        np.testing.assert_array_equal(s.t, again.t)
        np.testing.assert_array_equal(s.x, again.x)


@pytest.mark.live
def test_instant_queries_and_special_values(
    prometheus: PrometheusHandle, history: dict[str, np.ndarray]
) -> None:
    reader = PrometheusReader(prometheus.url)
    labels = {"__name__": "demo_latency_seconds", "instance": "b", "job": "api"}
    assert reader.instant('demo_latency_seconds{instance="b"}', at=BASE + 300) == [
        Sample(labels, BASE + 300, float(history["b"][5]))
    ]
    [scalar] = reader.instant("1 + 1")
    assert scalar.labels == {} and scalar.value == 2.0
    [edge] = reader.range("demo_edge", BASE, BASE + 180, 60)
    assert edge.x[0] == 1.0 and math.isnan(edge.x[1]) and edge.x.tolist()[2:] == [math.inf, -math.inf]


@pytest.mark.live
def test_query_errors_quote_prometheus(prometheus: PrometheusHandle) -> None:
    reader = PrometheusReader(prometheus.url)
    with pytest.raises(QueryError, match=r"rejected the query 'rate\(': .*parse error"):
        reader.instant("rate(")
    with pytest.raises(QueryError, match="range vector"):
        reader.instant("demo_latency_seconds[5m]", at=BASE + 600)


def test_unreachable_prometheus_is_named() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(
        PrometheusUnavailable, match=re.escape(url) + r".*Connection refused.*Prometheus is running"
    ):
        PrometheusReader(url, timeout=2).range("up", BASE, BASE + 60, 60)


class _NotPrometheus(BaseHTTPRequestHandler):
    """Range queries fail as an overloaded Prometheus does (503); anything else is a web page."""

    def do_GET(self) -> None:
        if self.path.startswith("/api/v1/query_range"):
            self.send_response(503)
            body = json.dumps({"status": "error", "errorType": "timeout", "error": "query timed out"})
        else:
            self.send_response(200)
            body = "<html>a dashboard</html>"
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


def test_server_errors_and_other_servers_are_told_apart() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotPrometheus)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        reader = PrometheusReader(f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(PrometheusUnavailable, match="failed the query 'up': query timed out; try again"):
            reader.range("up", BASE, BASE + 60, 60)
        with pytest.raises(PrometheusError, match="did not answer like a Prometheus server"):
            reader.instant("up")
    finally:
        server.shutdown()


@pytest.mark.live
def test_backtest_from_prometheus(pulled: tuple[Path, str]) -> None:
    work, out = pulled
    assert "series         2" in out and "points         2880" in out
    assert "labelled       1 of 2 series" in out
    assert "alert rate against the budget, all 2 series together: false alerts" in out
    total = next(line for line in out.splitlines() if line.startswith("total "))
    assert total.split()[1:3] == ["1", "1"]  # the spike's window, detected
    manifest = json.loads((work / "out" / "manifest.json").read_text())
    assert manifest[FILE_A] == {"__name__": "demo_latency_seconds", "instance": "a", "job": "api"}
    assert set(manifest) == {FILE_A, FILE_B}
    rows = _read(work / "out" / FILE_A)
    assert len(rows) == 1440
    assert rows[0]["timestamp"] == "2026-03-09 00:00:00" and rows[-1]["timestamp"] == "2026-03-09 23:59:00"
    assert rows[720]["timestamp"] == "2026-03-09 12:00:00" and rows[720]["alert"] == "1"


@pytest.mark.live
def test_report_from_prometheus(pulled: tuple[Path, str], prometheus: PrometheusHandle) -> None:
    html = (pulled[0] / "report.html").read_text(encoding="utf-8")
    assert html.count("<svg") == 2
    assert f"Source: {prometheus.url}, query demo_latency_seconds{{job=&#34;api&#34;}}" in html
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, flags=re.I)


@pytest.mark.live
def test_exported_recordings_replay_like_the_pull(
    pulled: tuple[Path, str], prometheus: PrometheusHandle
) -> None:
    work = pulled[0]
    status, out, err = _run(["export", *_range_options(prometheus.url), "--output", str(work / "export")])
    assert status == 0, err
    assert "series         2" in out and "points         2880" in out
    manifest = json.loads((work / "export" / "manifest.json").read_text())
    assert set(manifest) == {FILE_A, FILE_B}
    exported = _read(work / "export" / FILE_A)
    assert list(exported[0]) == ["timestamp", "value"] and len(exported) == 1440
    argv = ["backtest", str(work / "export"), "--output", str(work / "replayed"), "--quiet"]
    assert _run([*argv, "--config", str(work / "eager.yaml")])[0] == 0
    for file in (FILE_A, FILE_B):
        replayed, pulled_rows = _read(work / "replayed" / file), _read(work / "out" / file)
        assert [(r["timestamp"], r["value"]) for r in replayed] == [
            (r["timestamp"], r["value"]) for r in pulled_rows
        ]
        assert [r["alert"] for r in replayed] == [r["alert"] for r in pulled_rows]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--start", "yesterday"], "--start: 'yesterday' is not a time; use RFC3339"),
        (["--start", "now", "--end", "now-1h"], "is not before --end now-1h"),
        (["--start", "now-1h", "--step", "5x"], "--step: '5x' is not a duration"),
        (["--start", "now-1h", "--query", "rate("], "rejected the query 'rate(': 1:6: parse error"),
        (["--start", "now-1h", "--query", "no_such_metric"], "returned no series from"),
    ],
)
@pytest.mark.live
def test_bad_requests_are_explained(
    prometheus: PrometheusHandle, tmp_path: Path, options: list[str], message: str
) -> None:
    argv = ["export", "--prometheus", prometheus.url, "--query", "demo_edge", "--output", str(tmp_path)]
    status, _, err = _run([*argv, *options])
    assert status == 2
    assert err.startswith("anomaly-detector: error: ") and message in err, err
    assert "Traceback" not in err


def test_unreachable_prometheus_fails_the_backtest(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    argv = ["backtest", "--prometheus", url, "--query", "up", "--start", "now-1h", "--output", str(tmp_path)]
    status, _, err = _run(argv)
    assert status == 2
    assert f"cannot reach Prometheus at {url}" in err and "Prometheus is running" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--query", "up"], "--query reads from Prometheus; add --prometheus URL"),
        (["--prometheus", "http://127.0.0.1:9"], "--prometheus needs --query and --start"),
        (["--prometheus", "http://127.0.0.1:9", "in.csv"], "or --prometheus http://127.0.0.1:9, not both"),
        ([], "give INPUT files or directories to replay, or --prometheus URL"),
    ],
)
def test_source_options_must_agree(tmp_path: Path, argv: list[str], message: str) -> None:
    status, _, err = _run(["backtest", *argv, "--output", str(tmp_path)])
    assert status == 2 and message in err, err


@pytest.mark.live
def test_relative_times_read_what_was_just_scraped(prometheus: PrometheusHandle, tmp_path: Path) -> None:
    target = prometheus.url.removeprefix("http://")
    with start_prometheus(tmp_path / "scraper", scrape_configs=[scrape_config("peer", [target])]) as scraper:
        reader = PrometheusReader(scraper.url)
        deadline = time.monotonic() + 15
        # A sample at least a second old: "now" counts in whole seconds.
        while not reader.instant('up{job="peer"}', at=time.time() - 1) and time.monotonic() < deadline:
            time.sleep(0.2)
        argv = ["export", "--prometheus", scraper.url, "--query", 'up{job="peer"}', "--start", "now-1m"]
        status, _, err = _run([*argv, "--end", "now", "--step", "1s", "--output", str(tmp_path / "out")])
    assert status == 0, err
    [(file, labels)] = json.loads((tmp_path / "out" / "manifest.json").read_text()).items()
    assert labels == {"__name__": "up", "instance": target, "job": "peer"}
    rows = _read(tmp_path / "out" / file)
    assert rows and {row["value"] for row in rows} == {"1.0"}
    assert abs(parse_timestamp(rows[-1]["timestamp"]) - time.time()) < 30


@pytest.mark.live
def test_dashboard_queries_run(prometheus: PrometheusHandle) -> None:
    """Every query of examples/grafana-dashboard.json is valid PromQL and finds the exported series."""
    reader = PrometheusReader(prometheus.url)
    selected = ",".join(f'{name}="{value}"' for name, value in sorted(EXPORTED_LABELS.items()))
    variables = {
        "$series": selected,
        "$detector": "latency",
        "$metric": "demo_latency_seconds",
        "$__rate_interval": "5m",
    }
    dashboard = json.loads((ROOT / "examples" / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 8
    for expr in exprs:
        for name, value in variables.items():
            expr = expr.replace(name, value)
        found = reader.range(expr, DAY + 3600, DAY + 7200, 60)
        assert found, expr
        if "label_replace" in expr:  # the observed series, joined to the scored one
            [observed] = found
            assert observed.labels["instance"] == "a" and observed.labels["metric"] == "demo_latency_seconds"

"""The pages as HTML, from real detectors fed in-process (the browser test covers the wire)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from fastapi.testclient import TestClient

from detector.alerts import AlertEvent
from service.runtime import DetectorRuntime, series_id
from service.sinks import example_event, format_number
from service.web import format_rate, series_plot
from tests.web.pages import (
    INSTANCES,
    SPIKING,
    STEP,
    FakeSource,
    demo_key,
    demo_samples,
    listed_keys,
    section,
)

END = 1_700_000_000.0


@pytest.fixture
def fed(runtime: DetectorRuntime, source: FakeSource) -> DetectorRuntime:
    runtime.ingest(*demo_samples(END))
    source.now = END + 5.0
    return runtime


def spike_event(runtime: DetectorRuntime) -> AlertEvent:
    event = example_event(detector=runtime.name, description="latency 720 ms against an expected 160 ± 12 ms")
    finding = dataclasses.replace(event.top, key=demo_key(SPIKING), labels=runtime.labels[demo_key(SPIKING)])
    return dataclasses.replace(event, findings=(finding,))


def test_overview_lists_only_the_spiking_series_as_anomalous(
    client: TestClient, fed: DetectorRuntime
) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert listed_keys(page.text) == [demo_key(SPIKING)]
    assert f'href="series/{series_id("rw", demo_key(SPIKING))}"' in page.text
    assert "alert firing" in section(page.text, "anomalous")
    detectors = section(page.text, "detectors")
    assert "{__name__=&#34;demo_latency_ms&#34;}" in detectors and "ewma" in detectors
    assert "No alerts yet." in section(page.text, "alerts")
    assert '<meta http-equiv="refresh" content="15">' in page.text
    assert "http://" not in page.text.replace("http://www.w3.org/2000/svg", "")


def test_overview_before_any_data_says_so(client: TestClient) -> None:
    page = client.get("/")
    assert "Nothing anomalous" in section(page.text, "anomalous")
    assert listed_keys(page.text) == []
    assert "n/a alerts/day (budget 0)" in section(page.text, "detectors")


def test_overview_shows_each_detectors_alerts_a_day_against_its_budget(
    client: TestClient, fed: DetectorRuntime
) -> None:
    onsets = 0
    for instance in INSTANCES:  # every point is kept: count where each series' alert opened
        alert = fed.history.series(fed.engine.series.ids([demo_key(instance)])[0])["alert"]
        onsets += int(alert[0]) + int(np.sum(alert[1:] & ~alert[:-1]))
    assert onsets >= 1  # the spike
    covered = 204 * STEP  # the data's first sample to its newest
    rate = section(client.get("/").text, "detectors")
    # Three series at a budget of a hundred false alerts a week each (see conftest).
    assert f"{format_rate(onsets / covered * 86_400)} alerts/day (budget 42.9)" in rate
    assert "over 51m" in rate  # less than the week the rate is counted over


def test_alert_events_are_listed_and_explained_on_their_series_page(
    client: TestClient, fed: DetectorRuntime, source: FakeSource
) -> None:
    source.events = [spike_event(fed)]
    alerts = section(client.get("/").text, "alerts")
    assert "latency: api_latency_p99 on a is above its expected band" in alerts
    assert f'href="series/{series_id("rw", demo_key(SPIKING))}"' in alerts

    spiking = client.get(f"/series/{series_id('rw', demo_key(SPIKING))}").text
    assert "latency 720 ms against an expected 160 ± 12 ms" in section(spiking, "alert")
    calm = client.get(f"/series/{series_id('rw', demo_key('a'))}").text
    assert "No alert for this series" in section(calm, "alert")


def test_a_resolution_reason_and_late_data_are_shown_with_the_alert(
    client: TestClient, fed: DetectorRuntime, source: FakeSource
) -> None:
    event = spike_event(fed)
    source.events = [event]
    assert "late" not in section(client.get("/").text, "alerts").replace("latency", "")
    source.events = [
        dataclasses.replace(
            event,
            status="resolved",
            change="resolved",
            resolved_at=event.updated_at,
            resolution="accepted as the new normal after 2h",
            late_by=7500.0,
        )
    ]
    alerts = section(client.get("/").text, "alerts")
    assert '<span class="muted resolution">resolved: accepted as the new normal after 2h</span>' in alerts
    assert ">data 2h 5m late</span>" in alerts

    latest = section(client.get(f"/series/{series_id('rw', demo_key(SPIKING))}").text, "alert")
    assert ': <span class="resolution">accepted as the new normal after 2h</span>' in latest
    assert '<span class="badge late">data 2h 5m late</span>' in latest


def test_series_page_shows_labels_band_score_and_a_plot(client: TestClient, fed: DetectorRuntime) -> None:
    page = client.get(f"/series/{series_id('rw', demo_key(SPIKING))}")
    assert page.status_code == 200
    state = fed.series_state(demo_key(SPIKING))
    assert state is not None and state.alert
    assert "alert firing" in page.text and f"<dd>{format_number(state.value)}" in page.text
    assert "<code>instance</code></th><td><code>b</code>" in section(page.text, "labels")
    history = section(page.text, "history")
    assert history.count('<circle class="mark"') >= 2
    for part in ("observed", "band", "score"):
        path = f'<path class="{part}" d="M'
        assert path in history, f"no {part} line in the plot"
    assert "last 205 points kept" in history


@pytest.mark.parametrize("instance", [i for i in INSTANCES if i != SPIKING])
def test_normal_series_pages_show_no_alert(client: TestClient, fed: DetectorRuntime, instance: str) -> None:
    page = client.get(f"/series/{series_id('rw', demo_key(instance))}").text
    assert '<span class="badge ok">normal</span>' in page
    assert "inside it" in page


def test_unknown_series_is_a_404_page(client: TestClient) -> None:
    page = client.get("/series/000000000000")
    assert page.status_code == 404 and "No series <code>000000000000</code>" in page.text


def _points(t: list[float], **columns: list[float]) -> dict[str, np.ndarray]:
    n = len(t)
    nan = [float("nan")] * n
    return {
        "t": np.array(t),
        "value": np.array(columns.get("value", list(range(n))), dtype=np.float32),
        "lower": np.array(columns.get("lower", nan), dtype=np.float32),
        "upper": np.array(columns.get("upper", nan), dtype=np.float32),
        "score": np.array(columns.get("score", [0.5] * n), dtype=np.float32),
        "alert": np.array(columns.get("alert", [False] * n)),
    }


def test_plot_breaks_the_line_at_gaps_and_the_band_where_there_is_none() -> None:
    plot = series_plot(
        _points(
            [0, 15, 30, 45, 300, 315, 330],
            lower=[np.nan, 0, 0, 0, 0, 0, np.nan],
            upper=[np.nan, 9, 9, 9, 9, 9, np.nan],
            alert=[False, False, False, False, False, True, True],
        )
    )
    assert plot is not None
    assert plot.observed.count("M") == 2 and plot.score.count("M") == 2
    assert plot.band.count("M") == 2  # [15, 45] and [300, 315]; 0 and 330 have no band
    assert len(plot.alert_points) == 2 and len(plot.alert_spans) == 1
    assert [label for _, label in plot.score_ticks] == ["0", "0.99", "0.9999", "0.999999"]


def test_plot_of_one_point_and_of_none() -> None:
    assert series_plot(_points([])) is None
    plot = series_plot(_points([1_700_000_000.0], value=[5.0]))
    assert plot is not None and plot.observed.endswith("l0,0") and plot.band == ""

"""The pages in a real headless Chromium, served by the real service fed real remote_write requests."""

from __future__ import annotations

import html
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.runtime import series_id
from service.settings import ServiceSettings
from tests.support.remote_write import HEADERS, write_request
from tests.support.service import serve_in_thread
from tests.web.pages import (
    INSTANCES,
    SPIKING,
    Browser,
    demo_key,
    demo_samples,
    listed_keys,
    section,
)

pytestmark = pytest.mark.browser

#: Samples per request: Prometheus's default ``max_samples_per_send`` is 500.
SAMPLES_PER_REQUEST = 450


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service on 127.0.0.1 (uvicorn in a thread), fed three series of which one spikes."""
    settings = ServiceSettings.model_validate(
        {
            "store": tmp_path_factory.mktemp("web") / "state.db",
            "detectors": [
                {
                    "name": "rw",
                    "source": "remote_write",
                    "match": {"__name__": "demo_latency_ms"},
                    "model": "ewma",
                    "model_params": {"warmup": 10},
                    "calibration": {"warmup": 20},
                    # Generous: a series a few hundred points old may alert on a short spike.
                    "alerting": {"false_alerts_per_week": 100},
                }
            ],
        }
    )
    with serve_in_thread(settings) as url:
        keys, t, x = demo_samples(end=float(int(time.time())))
        with httpx.Client(base_url=url, timeout=10) as client:
            for start in range(0, len(keys), SAMPLES_PER_REQUEST):
                part = slice(start, start + SAMPLES_PER_REQUEST)
                response = client.post(
                    "/api/v1/write",
                    content=write_request(keys[part], t[part], x[part]),
                    headers=HEADERS,
                )
                assert response.status_code == 204, response.text
            alerting = client.get("/api/v1/series", params={"anomalous": "true"}).json()
        assert [s["key"] for s in alerting] == [demo_key(SPIKING)], f"expected one alert; got {alerting}"
        yield url


def test_overview_in_a_browser_lists_only_the_spiking_series(
    service: str, chromium: Browser, artifacts: Path
) -> None:
    dom = chromium(f"{service}/", "--dump-dom")
    assert listed_keys(dom) == [demo_key(SPIKING)], "only the spiking series should be anomalous"
    alerts = html.unescape(section(dom, "alerts"))
    assert not any(demo_key(instance) in alerts for instance in INSTANCES if instance != SPIKING)
    assert "remote_write" in section(dom, "detectors")

    shot = artifacts / "web-overview.png"
    chromium(f"{service}/", f"--screenshot={shot}", "--window-size=1280,900")
    assert shot.stat().st_size > 10_000


def test_series_page_in_a_browser_draws_the_plot(service: str, chromium: Browser, artifacts: Path) -> None:
    page = f"{service}/series/{series_id('rw', demo_key(SPIKING))}"
    dom = chromium(page, "--dump-dom")
    plot = section(dom, "history")
    assert '<svg class="plot" id="plot"' in plot
    for part in ("observed", "band", "score"):
        assert f'<path class="{part}" d="M' in plot, f"no {part} line in the plot"
    assert plot.count('class="mark"') >= 2, "the alerting points should be marked"
    assert "alert firing" in dom
    assert "<code>instance</code></th><td><code>b</code>" in section(dom, "labels")

    shot = artifacts / "web-series.png"
    chromium(page, f"--screenshot={shot}", "--window-size=1280,1250")
    assert shot.stat().st_size > 10_000

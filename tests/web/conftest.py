"""Fixtures for the web page tests: detectors fed in-process, a page source, a headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service import web
from service.runtime import DetectorRuntime
from service.settings import DetectorSpec
from tests.web.pages import Browser, FakeSource

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@pytest.fixture
def runtime() -> DetectorRuntime:
    """A remote_write detector with a short warm-up and a generous budget, keeping history.

    The budget lets a series only a few hundred points old alert on a short spike (at the
    default, a series this young errs towards silence).
    """
    spec = DetectorSpec.model_validate(
        {
            "name": "rw",
            "source": "remote_write",
            "match": {"__name__": "demo_latency_ms"},
            "model": "ewma",
            "model_params": {"warmup": 10},
            "calibration": {"warmup": 20},
            "alerting": {"false_alerts_per_week": 100},
        }
    )
    return DetectorRuntime(spec, clock=lambda: 1_700_000_000.0)


@pytest.fixture
def source(runtime: DetectorRuntime) -> FakeSource:
    return FakeSource({runtime.name: runtime})


@pytest.fixture
def client(source: FakeSource) -> TestClient:
    """The web router alone, reading ``source`` as the service's detection."""
    app = FastAPI()
    app.include_router(web.router)
    app.state.detection = source
    return TestClient(app)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go: ``$ARTIFACTS_DIR`` or ``tests/artifacts`` (git-ignored)."""
    path = Path(os.environ.get("ARTIFACTS_DIR", ROOT / "tests" / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def chromium() -> Browser:
    """``chromium(url, "--dump-dom")`` → the DOM; with ``--screenshot=FILE`` it writes a PNG.

    Fails (not skips) without a browser: CI installs one, so its absence is a broken setup.
    """
    wanted = os.environ.get("CHROMIUM", "chromium")
    binary = shutil.which(wanted)
    if binary is None:
        pytest.fail(
            f"no Chromium ({wanted!r} is not an executable on PATH) for the web page tests; "
            "install it (apt-get install chromium) or point $CHROMIUM at the binary",
            pytrace=False,
        )

    def run(url: str, *flags: str) -> str:
        with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
            done = subprocess.run(
                [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *flags, url],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        if done.returncode != 0:
            raise AssertionError(f"chromium exited with {done.returncode}: {done.stderr[-2000:]}")
        return done.stdout

    return run

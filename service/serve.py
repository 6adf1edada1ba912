"""``anomaly-detector run`` and ``check-config``: start the service, or only validate its file."""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn

from service.app import create_app
from service.settings import ServiceSettings, load_settings


def describe(settings: ServiceSettings) -> list[str]:
    """What a valid configuration will do, one line per part."""
    lines = [f"store: {settings.store} (checkpoint every {settings.checkpoint_interval:g}s)"]
    for spec in settings.detectors:
        if spec.source == "pull":
            source = f"pull {spec.query!r} every {spec.interval:g}s from {settings.prometheus.url}"
        else:
            source = f"remote_write series matching {spec.match or {}} {spec.match_re or {}}".rstrip()
        lines.append(f"detector {spec.name}: model {spec.model}, {source}")
    lines.extend(f"sink {sink.name} ({sink.type})" for sink in settings.sinks)
    lines.extend(
        f"silence {', '.join(rule.matchers)} until {rule.ends_at.isoformat()}" for rule in settings.silences
    )
    return lines


def check_config(path: Path) -> list[str]:
    """Validate a service configuration; raises ConfigError (file, line, key) if it is wrong."""
    return [f"{path}: valid", *describe(load_settings(path))]


def run(path: Path, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM; state is saved on the way out."""
    settings = load_settings(path)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for line in describe(settings):
        logging.getLogger("anomaly-detector").info(line)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")

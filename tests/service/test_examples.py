"""The shipped example configurations are valid, and the annotated one covers every option."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from service.http_config import HTTPClientConfig
from service.settings import ServiceSettings, load_settings
from service.sinks import AlertmanagerConfig, PagerDutyConfig, SlackConfig, WebhookConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("name", ["pull.yaml", "remote-write.yaml", "annotated.yaml"])
def test_example_is_valid(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALERTMANAGER_URL", raising=False)
    settings = load_settings(EXAMPLES / name)
    assert settings.detectors
    assert not settings.sinks, "sinks with an unset address are off"
    monkeypatch.setenv("ALERTMANAGER_URL", "http://127.0.0.1:9093")
    assert [sink.type for sink in load_settings(EXAMPLES / name).sinks][:1] == ["alertmanager"]


def _option_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    paths = set()
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        paths.add(path)
        options = [a for a in (*typing.get_args(field.annotation), field.annotation) if isinstance(a, type)]
        for option in options:
            if issubclass(option, BaseModel):
                paths |= _option_paths(option, f"{path}.")
    return paths


def _written_paths(data: object, prefix: str = "") -> set[str]:
    if isinstance(data, list):
        return set().union(*(_written_paths(item, prefix) for item in data)) if data else set()
    if not isinstance(data, dict):
        return set()
    paths = set()
    for key, value in data.items():
        paths.add(f"{prefix}{key}")
        if key not in ("match", "match_re", "headers", "model_params"):
            paths |= _written_paths(value, f"{prefix}{key}.")
    return paths


def test_annotated_example_covers_every_option() -> None:
    written = _written_paths(yaml.safe_load((EXAMPLES / "annotated.yaml").read_text()))
    expected = _option_paths(ServiceSettings) - {"sinks", "silences", "detectors"}
    expected |= {"sinks", "silences", "detectors"}
    for sink in (AlertmanagerConfig, PagerDutyConfig, SlackConfig, WebhookConfig):
        expected |= _option_paths(sink, "sinks.")
    # Prometheus's http_config keys are the same in prometheus: and every sink: shown once is enough,
    # and a secret is given inline or as a file (password_file, credentials_file), not both.
    shared = _option_paths(HTTPClientConfig)
    shown = {path.partition(".")[2] for path in written}
    shown |= {f"{path}_file" for path in shown}
    expected = {path for path in expected if path.partition(".")[2] not in shared}
    expected |= {f"(prometheus or sinks).{path}" for path in shared - shown}
    missing = sorted(path for path in expected if path not in written)
    assert not missing, f"examples/annotated.yaml does not show: {missing}"

"""The shipped example configurations are valid, and the annotated one covers every option."""

from __future__ import annotations

import shutil
import subprocess
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from service.app import ShardReply
from service.http_config import HTTPClientConfig
from service.serve import describe
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
    # Prometheus's http_config keys are the same in prometheus:, every sink: and outputs.remote_write:
    # shown once is enough, and a secret is given inline or as a file (password_file …), not both.
    shared = _option_paths(HTTPClientConfig)

    def inside(path: str) -> str:  # the path within its http_config section
        if path.startswith("outputs."):
            return path.removeprefix("outputs.remote_write.")
        return path.partition(".")[2]

    shown = {inside(path) for path in written}
    shown |= {f"{path}_file" for path in shown}
    expected = {path for path in expected if inside(path) not in shared}
    expected |= {f"(prometheus or sinks).{path}" for path in shared - shown}
    missing = sorted(path for path in expected if path not in written)
    assert not missing, f"examples/annotated.yaml does not show: {missing}"


HA_SHARDED = EXAMPLES / "ha-sharded"
#: What each replica of examples/ha-sharded sets for itself; the rest is the same in all four.
OWN: dict[str, Any] = {"store": True, "external_url": True, "replica": True, "shard": {"index": True}}


def _port(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1].split("/")[0])


def test_ha_sharded_configs_are_two_identical_replicas_per_shard_routed_by_prometheus() -> None:
    """Each queue of prometheus.yml keeps exactly its shard's series for the replica it sends to."""
    configs = {path.name: load_settings(path) for path in sorted(HA_SHARDED.glob("shard-*.yaml"))}
    assert len(configs) == 4
    by_port = {_port(settings.external_url): settings for settings in configs.values()}
    pairs = sorted((settings.shard.index, settings.replica) for settings in configs.values())
    assert pairs == [(0, "a"), (0, "b"), (1, "a"), (1, "b")]
    for settings in configs.values():
        assert not [line for line in describe(settings) if line.startswith("warning:")]
        # Replicas differ only where they must: their name, state and address, and the shard index.
        assert settings.model_dump(exclude=OWN) == next(iter(configs.values())).model_dump(exclude=OWN)
        (alertmanager,) = settings.sinks
        assert len(getattr(alertmanager, "urls", [])) == 2, "every replica sends to both Alertmanagers"
    assert len({settings.store for settings in configs.values()}) == 4, "each replica its own state"

    prometheus = yaml.safe_load((HA_SHARDED / "prometheus.yml").read_text())
    queues = prometheus["remote_write"]
    assert sorted(_port(queue["url"]) for queue in queues) == sorted(by_port)
    for queue in queues:
        settings = by_port[_port(queue["url"])]
        rules = queue["write_relabel_configs"]
        selection, sharding = rules[:1], rules[1:]
        assert selection == queues[0]["write_relabel_configs"][:1], "every queue selects the same series"
        assert sharding == ShardReply.of(settings.shard).write_relabel_configs, queue["name"]


@pytest.mark.parametrize(
    ("tool", "command"),
    [
        ("/usr/bin/promtool", ["check", "config", "prometheus.yml"]),
        ("/usr/bin/amtool", ["check-config", "alertmanager.yml"]),
    ],
)
def test_ha_sharded_prometheus_and_alertmanager_files_pass_their_own_checks(
    tool: str, command: list[str]
) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (apt-get install prometheus prometheus-alertmanager)")
    done = subprocess.run([tool, *command], cwd=HA_SHARDED, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr

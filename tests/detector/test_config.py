"""Configuration: YAML in, validated settings and an engine out, clear errors otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detector.config import (
    MODELS,
    ConfigError,
    DetectorConfig,
    build_engine,
    load_config,
    parse_duration,
)
from models import AutoModel, RobustEWMA, SeasonalProfile


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(str(path))
    return message


@pytest.mark.parametrize("path", [None, ""])
def test_no_path_means_defaults(path: str | None) -> None:
    assert load_config(path) == DetectorConfig()


@pytest.mark.parametrize("text", ["", "# nothing set yet\n"])
def test_empty_file_means_defaults(tmp_path: Path, text: str) -> None:
    assert load_config(_write(tmp_path, text)) == DetectorConfig()


def test_full_file_is_read(tmp_path: Path) -> None:
    config = load_config(
        _write(
            tmp_path,
            """
model: seasonal
model_params: {bins: 48, weekly: false}
calibration: {memory: 5000, warmup: 50, direction: high}
alerting: {false_alerts_per_week: 0.5, resolve_after: 4m, cooldown: 1h}
protect_below: 0.01
""",
        )
    )
    assert config.model == "seasonal"
    assert config.model_params == {"bins": 48, "weekly": False}
    assert (config.calibration.memory, config.calibration.warmup) == (5000, 50)
    assert config.calibration.direction == "high"
    assert config.alerting.cooldown == 3600.0
    assert (config.alerting.false_alerts_per_week, config.alerting.resolve_after) == (0.5, 240.0)
    assert config.protect_below == 0.01


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("7d", 604800.0), ("90", 90.0), (45, 45.0), (2.5, 2.5)],
)
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5x", "-5m", "m", "1h30m", True, -1])
def test_bad_duration_says_what_is_allowed(tmp_path: Path, text: object) -> None:
    message = _error(tmp_path, f"alerting:\n  cooldown: {str(text).lower()}\n")
    assert "alerting.cooldown:" in message
    assert "is not a duration; use 30s, 5m, 1h, 7d" in message


def test_bad_duration_message_in_full(tmp_path: Path) -> None:
    path = _write(tmp_path, "alerting: {cooldown: 5x}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}:1: alerting.cooldown: '5x' is not a duration; use 30s, 5m, 1h, 7d"


def test_unknown_top_level_key_lists_allowed(tmp_path: Path) -> None:
    message = _error(tmp_path, "modle: ewma\n")
    assert "modle: unknown key" in message
    assert "model, model_params, calibration, alerting, protect_below" in message


def test_unknown_nested_key_lists_allowed(tmp_path: Path) -> None:
    message = _error(tmp_path, "alerting: {cooldwon: 5m}\n")
    assert "alerting.cooldwon: unknown key" in message
    assert "cooldown" in message.split("allowed:")[1]


def test_unknown_model_lists_models(tmp_path: Path) -> None:
    message = _error(tmp_path, "model: prophet\n")
    assert "model: 'prophet' is not a model" in message
    assert "auto, ewma, seasonal, quantile, changepoint" in message


def test_unknown_model_param_lists_constructor_arguments(tmp_path: Path) -> None:
    message = _error(tmp_path, "model: ewma\nmodel_params: {halflfe: 6}\n")
    assert "model_params.halflfe:" in message
    assert "allowed: halflife, scale_halflife, huber, warmup" in message


def test_model_param_of_wrong_type(tmp_path: Path) -> None:
    message = _error(tmp_path, "model: seasonal\nmodel_params: {bins: many}\n")
    assert "model_params.bins: 'many' is not valid" in message


def test_model_param_rejected_by_the_model(tmp_path: Path) -> None:
    message = _error(tmp_path, "model: seasonal\nmodel_params: {period: -1}\n")
    assert "model_params: period must be positive" in message


def test_auto_model_components_are_configured_by_mappings(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "model_params: {flat: {halflife: 6}, seasonal: {bins: 12}}\n"))
    model = build_engine(config).model
    assert isinstance(model, AutoModel)
    assert model.flat.halflife == 6.0
    assert model.seasonal.bins == 12


def test_auto_model_component_param_typo(tmp_path: Path) -> None:
    message = _error(tmp_path, "model_params: {flat: {halflif: 6}}\n")
    assert "model_params.flat.halflif: RobustEWMA has no parameter 'halflif'" in message


def test_point_counting_persistence_is_gone_with_a_hint(tmp_path: Path) -> None:
    message = _error(tmp_path, "alerting: {min_anomalous: 2, window: 3}\n")
    assert "config.yaml:1: alerting: min_anomalous and window are gone" in message
    assert "remove them" in message


def test_alert_durations_are_durations(tmp_path: Path) -> None:
    message = _error(tmp_path, "alerting: {resolve_after: 3}\n")
    assert "resolve_after: 3 has no unit; it is a duration now" in message and "3m" in message
    config = load_config(_write(tmp_path, "alerting: {resolve_after: 90s, accept_shift_after: 1h}\n"))
    policy = build_engine(config).policy
    assert (policy.resolve_after, policy.accept_shift_after) == (90.0, 3600.0)
    assert build_engine(load_config(None)).policy.accept_shift_after == 7200.0


def test_one_budget_or_the_other(tmp_path: Path) -> None:
    message = _error(tmp_path, "alerting:\n  false_alerts_per_week: 1\n  false_alerts_per_day: 2\n")
    assert "are both set; keep one" in message
    config = load_config(_write(tmp_path, "alerting: {false_alerts_per_day: 2}\n"))
    assert build_engine(config).policy.false_alerts_per_day == 2.0


def test_out_of_range_value_shows_input(tmp_path: Path) -> None:
    message = _error(tmp_path, "calibration: {direction: up}\n")
    assert "calibration.direction:" in message and "'up'" in message


def test_environment_substitution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETECTOR_MODEL", "ewma")
    monkeypatch.delenv("DETECTOR_COOLDOWN", raising=False)
    config = load_config(
        _write(tmp_path, "model: ${DETECTOR_MODEL}\nalerting: {cooldown: ${DETECTOR_COOLDOWN:-2h}}\n")
    )
    assert config.model == "ewma"
    assert config.alerting.cooldown == 7200.0


def test_missing_environment_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DETECTOR_UNSET", raising=False)
    path = _write(tmp_path, "model: auto\nprotect_below: ${DETECTOR_UNSET}\n")
    with pytest.raises(ConfigError, match=r"config\.yaml:2: environment variable DETECTOR_UNSET is not set"):
        load_config(path)


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    message = _error(tmp_path, "model: auto\nalerting: {cooldown: 5m\n")
    assert "not valid YAML" in message
    assert message.startswith(f"{tmp_path / 'config.yaml'}:")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert "expected a mapping of settings" in _error(tmp_path, "- model: auto\n")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.yaml: cannot read the configuration"):
        load_config(tmp_path / "absent.yaml")


def test_build_engine_uses_every_section() -> None:
    config = DetectorConfig.model_validate(
        {
            "model": "ewma",
            "model_params": {"halflife": 6},
            "calibration": {"memory": 500, "direction": "low"},
            "alerting": {"false_alerts_per_day": 3, "resolve_after": "5m", "cooldown": "10m"},
            "protect_below": 0.05,
        }
    )
    engine = build_engine(config)
    assert isinstance(engine.model, RobustEWMA) and engine.model.halflife == 6.0
    assert engine.calibrator.memory == 500 and engine.calibrator.direction == "low"
    assert engine.policy.false_alerts_per_day == 3 and engine.policy.false_alerts_per_week is None
    assert engine.policy.resolve_after == 300.0 and engine.policy.cooldown == 600.0
    assert engine.protect_below == 0.05


def test_engines_do_not_share_state() -> None:
    config = DetectorConfig()
    assert build_engine(config).model is not build_engine(config).model


def test_registry_holds_the_models() -> None:
    assert set(MODELS) == {"auto", "ewma", "seasonal", "quantile", "changepoint", "routine"}
    assert MODELS["ewma"] is RobustEWMA and MODELS["seasonal"] is SeasonalProfile


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_runs_with_defaults(name: str) -> None:
    engine = build_engine(DetectorConfig(model=name))
    ids = engine.register(["a", "b"])
    out = engine.process(ids, np.array([0.0, 0.0]), np.array([1.0, np.nan]))
    assert out.anomaly_score.shape == (2,)

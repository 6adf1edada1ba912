"""A detector's configuration, read from YAML, and the engine built from it.

The file is small and every key is optional::

    model: auto            # auto, ewma, seasonal, quantile, changepoint or routine
    model_params: {}       # the model's constructor arguments; for auto, {routine: true, patterns: true}
                           # adds the opt-in pattern detectors (models/patterns.py)
    calibration: {memory: 10000, warmup: 100}
    alerting: {false_alerts_per_week: 1.0,   # or false_alerts_per_day: N (whole detector)
               resolve_after: 2m, cooldown: 30m, accept_shift_after: 2h, direction: both,
               min_deviation: 0, min_relative_deviation: 0,
               group_by: [job], group_window: 2m, refresh_interval: 1m, late_after: 5m}
    protect_below: 0.001

``${VAR}`` and ``${VAR:-default}`` are replaced from the environment in the
text before it is parsed.  Durations are ``30s``, ``5m``, ``1h``, ``7d`` or a
number of seconds.  Unknown keys are errors, so a typo never silently falls
back to a default; every error is a :class:`ConfigError` naming the file, the
key path and what is allowed.

>>> config = parse_config({"model": "ewma", "model_params": {"halflife": 6},
...                        "alerting": {"cooldown": "1h"}})
>>> config.alerting.cooldown
3600.0
>>> build_engine(config).model
RobustEWMA(halflife=6.0, scale_halflife=144.0, huber=3.0, warmup=30)
>>> parse_config({"alerting": {"cooldown": "5x"}}, source="config.yaml")
Traceback (most recent call last):
...
detector.config.ConfigError: config.yaml: alerting.cooldown: '5x' is not a duration; use 30s, 5m, 1h, 7d
"""

from __future__ import annotations

import inspect
import math
import os
import re
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from detector.calibration import TailCalibrator
from detector.engine import Engine
from detector.incidents import IncidentTracker, Links
from detector.policy import AlertPolicy
from models import AutoModel, DailyRoutine, RobustEWMA, SeasonalProfile
from models.base import OnlineModel
from models.changepoint import LevelShift
from models.quantile import RobustQuantile

#: Model names a configuration may use.  A model's hyper-parameters are its
#: constructor arguments, so registering a class is all a new model needs.
MODELS: dict[str, type[OnlineModel]] = {
    "auto": AutoModel,
    "ewma": RobustEWMA,
    "seasonal": SeasonalProfile,
    "quantile": RobustQuantile,
    "changepoint": LevelShift,
    "routine": DailyRoutine,
}

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)")
_UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: ``${NAME}`` or the start of ``${NAME:-default}`` (the default is scanned for balanced braces).
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:\}|(:-))")
SettingsT = TypeVar("SettingsT", bound=BaseModel)
#: Component hints such as ``RobustEWMA | None`` may hold an instance.
_ANY_TYPE = ConfigDict(arbitrary_types_allowed=True)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names file, key and remedy."""


def parse_duration(value: object) -> float:
    """Seconds from ``30s``, ``5m``, ``1h``, ``7d`` or a number of seconds.

    >>> parse_duration("5m"), parse_duration(90), parse_duration("1.5h")
    (300.0, 90.0, 5400.0)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value) and value >= 0:
            return float(value)
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match:
            return float(match[1]) * _UNIT_SECONDS[match[2]]
    raise ValueError(f"{value!r} is not a duration; use 30s, 5m, 1h, 7d")


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CalibrationConfig(_Section):
    """Arguments of :class:`detector.calibration.TailCalibrator`.

    Examples
    --------
    >>> CalibrationConfig(direction="high").memory
    10000.0
    """

    memory: Annotated[float, Field(ge=10)] = 10_000.0
    warmup: Annotated[int, Field(ge=0)] = 100
    direction: Literal["both", "high", "low"] = "both"


#: The alerting keys that configure the :class:`IncidentTracker`; the others are the policy's.
_INCIDENT_KEYS = {"group_by", "group_window", "refresh_interval", "late_after"}
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class AlertingConfig(_Section):
    """When a series alerts (:class:`detector.policy.AlertPolicy`) and how alerts group into incidents.

    ``group_by``, ``group_window``, ``refresh_interval`` and ``late_after``
    are the arguments of :class:`detector.incidents.IncidentTracker`; every
    other key is the policy's.  Series group by ``job`` unless told otherwise: one page per
    service in trouble, not one per instance.  ``direction`` is the one to set
    for one-sided alerting; the calibration follows it (see
    :class:`DetectorConfig`).

    Examples
    --------
    >>> AlertingConfig(cooldown="2h", false_alerts_per_day=2).cooldown
    7200.0
    >>> AlertingConfig().group_by, AlertingConfig(group_window="5m").group_window
    (['job'], 300.0)
    """

    false_alerts_per_week: Annotated[float, Field(gt=0)] | None = None
    false_alerts_per_day: Annotated[float, Field(gt=0)] | None = None
    resolve_after: Duration = 120.0
    cooldown: Duration = 1800.0
    accept_shift_after: Duration = 7200.0
    direction: Literal["both", "high", "low"] = "both"
    min_deviation: Annotated[float, Field(ge=0)] = 0.0
    min_relative_deviation: Annotated[float, Field(ge=0)] = 0.0
    group_by: list[str] = Field(default_factory=lambda: ["job"])
    group_window: Duration = 120.0
    refresh_interval: Duration = 60.0
    late_after: Duration = 300.0

    @field_validator("group_by")
    @classmethod
    def _label_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not _LABEL_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a label name; use letters, digits and _, e.g. [job]")
        return names

    @field_validator("refresh_interval")
    @classmethod
    def _positive_refresh(cls, seconds: float) -> float:
        if seconds <= 0:
            raise ValueError(
                "refresh_interval must be positive; use e.g. 1m (Alertmanager resolves alerts not re-sent)"
            )
        return seconds

    @model_validator(mode="before")
    @classmethod
    def _no_point_counting(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        if {"min_anomalous", "window"} & set(data):
            raise ValueError(
                "min_anomalous and window are gone: how much persistence a series needs is now measured "
                "on the series itself (see detector/policy.py); remove them and set the budget "
                "(false_alerts_per_week or false_alerts_per_day)"
            )
        resolve_after = data.get("resolve_after")
        # A bare integer is how point counts were written (a parsed duration is a float).
        if isinstance(resolve_after, int) and not isinstance(resolve_after, bool) and resolve_after:
            raise ValueError(
                f"resolve_after: {resolve_after} has no unit; it is a duration now (it used to count "
                f"points): write e.g. {resolve_after}m for {resolve_after} points a minute apart, "
                f"or {resolve_after}s for seconds"
            )
        return data

    @model_validator(mode="after")
    def _one_budget(self) -> AlertingConfig:
        if self.false_alerts_per_week is not None and self.false_alerts_per_day is not None:
            raise ValueError(
                f"false_alerts_per_week ({self.false_alerts_per_week:g}, per series) and "
                f"false_alerts_per_day ({self.false_alerts_per_day:g}, for the whole detector) are both set; "
                "keep one: "
                "false_alerts_per_day for a page rate that does not grow with the number of series"
            )
        return self


class DetectorConfig(_Section):
    """Everything :func:`build_engine` needs; see the module docstring for the YAML.

    Examples
    --------
    The alert ``direction`` is the one users set: ``alerting.direction``.
    The calibration measures the same tail(s) unless ``calibration.direction``
    is given, so a one-sided budget means what it says; a one-sided
    calibration given alone makes alerting one-sided too, and the two may not
    disagree.  (A two-sided calibration under one-sided alerting is allowed: it
    alerts about half as often as the budget.)

    Examples
    --------
    >>> config = DetectorConfig(model="seasonal", model_params={"bins": 48})
    >>> config.alerting.cooldown, config.calibration.direction
    (1800.0, 'both')
    >>> DetectorConfig(alerting={"direction": "high"}).calibration.direction
    'high'
    """

    model: str = "auto"
    model_params: dict[str, Any] = Field(default_factory=dict)
    calibration: CalibrationConfig = CalibrationConfig()
    alerting: AlertingConfig = AlertingConfig()
    protect_below: Annotated[float, Field(gt=0, le=1)] = 1e-3

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        if name not in MODELS:
            raise ValueError(f"{name!r} is not a model; use one of {', '.join(MODELS)}")
        return name

    @model_validator(mode="after")
    def _model_params_fit(self) -> DetectorConfig:
        # Building the model is the only complete check of its arguments, and cheap.
        _build(MODELS[self.model], self.model_params, "model_params")
        return self

    @model_validator(mode="after")
    def _directions_agree(self) -> DetectorConfig:
        alerting, calibration = self.alerting.direction, self.calibration.direction
        if "direction" not in self.calibration.model_fields_set:
            self.calibration = self.calibration.model_copy(update={"direction": alerting})
        elif calibration != "both" and "direction" not in self.alerting.model_fields_set:
            self.alerting = self.alerting.model_copy(update={"direction": calibration})
        elif calibration not in ("both", alerting):
            raise ValueError(
                f"alerting.direction: {alerting!r} disagrees with calibration.direction {calibration!r}, "
                f"which measures only {calibration} deviations; "
                "drop calibration.direction (it follows alerting.direction)"
            )
        return self


def _component_class(hint: Any) -> type | None:
    """The class in a hint like ``RobustEWMA | None``: a mapping may build it."""
    options = typing.get_args(hint) or (hint,)
    classes = [o for o in options if isinstance(o, type) and o.__module__ != "builtins"]
    return classes[0] if len(classes) == 1 else None


def _build(cls: type, params: Mapping[str, Any], where: str) -> Any:
    """``cls(**params)`` with each key and value checked against its signature."""
    allowed = {
        name: Any if parameter.annotation is parameter.empty else parameter.annotation
        for name, parameter in inspect.signature(cls, eval_str=True).parameters.items()
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    }
    arguments = {}
    for key, value in params.items():
        path = f"{where}.{key}"
        if key not in allowed:
            raise ValueError(
                f"{path}: {cls.__name__} has no parameter {key!r}; allowed: {', '.join(allowed)}"
            )
        hint = allowed[key]
        component = _component_class(hint)
        if component is not None and isinstance(value, Mapping):
            arguments[key] = _build(component, value, path)
            continue
        if component is not None and value is not None:
            raise ValueError(f"{path}: expected a mapping of {component.__name__} parameters, got {value!r}")
        try:
            arguments[key] = TypeAdapter(hint, config=_ANY_TYPE).validate_python(value)
        except ValidationError as error:
            raise ValueError(f"{path}: {value!r} is not valid; {error.errors()[0]['msg']}") from None
    try:
        return cls(**arguments)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None


def _describe(error: Mapping[str, Any], root: type[BaseModel]) -> str:
    """One pydantic error as ``key.path: what is wrong; what is allowed``."""
    loc = [str(part) for part in error["loc"]]
    if error["type"] == "value_error":
        message = str(error["ctx"]["error"])
    elif error["type"] == "extra_forbidden":
        allowed = _fields_at(root, error["loc"][:-1])
        message = f"unknown key; allowed: {', '.join(allowed)}" if allowed else "unknown key"
    else:
        message = f"{error['msg']}, got {error['input']!r}"
    # Errors raised by a whole-config check (model_params) carry their own key path.
    return f"{'.'.join(loc)}: {message}" if loc else message


def _fields_at(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed in the section at ``loc`` (list indexes and union tags skipped)."""
    section: Any = root
    for part in loc:
        if isinstance(part, int) or not (isinstance(section, type) and issubclass(section, BaseModel)):
            continue
        if part not in section.model_fields:
            return []
        hint = section.model_fields[part].annotation
        options = [
            a for a in (*typing.get_args(hint), hint) if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        section = options[0] if options else hint
    return list(section.model_fields) if isinstance(section, type) and issubclass(section, BaseModel) else []


def validate_settings(
    model: type[SettingsT],
    data: Any,
    source: str,
    lines: Callable[[tuple[Any, ...]], int | None] | None = None,
    context: Mapping[str, Any] | None = None,
) -> SettingsT:
    """``model.model_validate(data, context=context)`` with errors as one :class:`ConfigError`.

    Each error line names the source (and the YAML line of the key when
    ``lines`` can find it), the key path, what is wrong and what is allowed.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of settings, got a {type(data).__name__}")
    try:
        return model.model_validate(data, context=context)
    except ValidationError as error:
        messages = []
        for problem in error.errors():
            line = lines(tuple(problem["loc"])) if lines is not None else None
            where = f"{source}:{line}" if line is not None else source
            messages.append(f"{where}: {_describe(problem, model)}")
        raise ConfigError("\n".join(messages)) from None


def parse_config(data: Mapping[str, Any] | None, source: str = "config") -> DetectorConfig:
    """Validate already-parsed settings; errors are :class:`ConfigError` naming ``source``."""
    if data is None:
        return DetectorConfig()
    return validate_settings(DetectorConfig, data, source)


def _expand_environment(text: str, source: str) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}``; a default may hold balanced braces (PromQL).

    >>> _expand_environment('q: ${UNSET_Q:-up{job="a"}} x', "c.yaml")
    'q: up{job="a"} x'
    """
    out: list[str] = []
    position = 0
    while (match := _ENV_REFERENCE.search(text, position)) is not None:
        out.append(text[position : match.start()])
        name, end = match[1], match.end()
        default = None
        if match[2] is not None:
            depth, cursor = 1, end
            while cursor < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[cursor], 0)
                cursor += 1
            if depth:
                line = text.count("\n", 0, match.start()) + 1
                raise ConfigError(f"{source}:{line}: ${{{name}:-...}} is not closed; add the missing }}")
            default, end = text[end : cursor - 1], cursor
        if name in os.environ:
            out.append(os.environ[name])
        elif default is not None:
            out.append(default)
        else:
            line = text.count("\n", 0, match.start()) + 1
            raise ConfigError(
                f"{source}:{line}: environment variable {name} is not set; "
                f"set it or give a default: ${{{name}:-value}}"
            )
        position = end
    out.append(text[position:])
    return "".join(out)


class YamlDocument:
    r"""A YAML file read with ``${VAR:-default}`` expanded, that knows where each key is.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "c.yaml"
    >>> _ = path.write_text("model: auto\nalerting:\n  window: 5x\n")
    >>> document = YamlDocument.read(path)
    >>> document.data["alerting"], document.line_of(("alerting", "window"))
    ({'window': '5x'}, 3)
    """

    def __init__(self, data: Any, source: str, root: yaml.Node | None) -> None:
        self.data = data
        self.source = source
        self._root = root

    @classmethod
    def read(cls, path: Path) -> YamlDocument:
        """Raises :class:`ConfigError` for a missing file, an unset variable or invalid YAML."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(
                f"{path}: cannot read the configuration ({error.strerror}); give an existing YAML file"
            ) from None
        text = _expand_environment(text, str(path))
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            problem = getattr(error, "problem", None) or error
            raise ConfigError(f"{where}: not valid YAML ({problem})") from None
        return cls(data, str(path), root)

    def line_of(self, loc: tuple[Any, ...]) -> int | None:
        """1-based line of the deepest key of ``loc`` that exists in the file."""
        node, line = self._root, None
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                found = next(((k, v) for k, v in node.value if k.value == str(part)), None)
                if found is None:
                    break
                line, node = found[0].start_mark.line + 1, found[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line

    def validate(self, model: type[SettingsT]) -> SettingsT:
        """The settings as ``model``; errors name this file, the line and the key.

        Validators find the file's directory as ``directory`` in the validation
        context: a relative path in the file is relative to it.
        """
        context = {"directory": Path(self.source).parent}
        return validate_settings(model, self.data, self.source, self.line_of, context)


def load_config(path: Path | str | None) -> DetectorConfig:
    """Read a YAML configuration; no path (``None`` or ``""``) means the defaults.

    Raises :class:`ConfigError` for a missing file, an unset environment
    variable, invalid YAML or invalid settings.
    """
    if path is None or str(path) == "":
        return DetectorConfig()
    document = YamlDocument.read(Path(path))
    if document.data is None:
        return DetectorConfig()
    return document.validate(DetectorConfig)


def build_engine(config: DetectorConfig) -> Engine:
    """A fresh engine (no series yet) as the configuration describes."""
    return Engine(
        model=_build(MODELS[config.model], config.model_params, "model_params"),
        calibrator=TailCalibrator(**config.calibration.model_dump()),
        policy=AlertPolicy(**config.alerting.model_dump(exclude=_INCIDENT_KEYS)),
        protect_below=config.protect_below,
    )


def build_tracker(config: DetectorConfig, detector: str, links: Links | None = None) -> IncidentTracker:
    """The incident tracker for a detector's alerts, as the configuration describes.

    >>> build_tracker(DetectorConfig(), "latency").group_by
    ['job']
    """
    return IncidentTracker(detector, links=links, **config.alerting.model_dump(include=_INCIDENT_KEYS))

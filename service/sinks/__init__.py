"""Where alert events go: Alertmanager, PagerDuty, Slack and a signed webhook.

A sink turns an :class:`~detector.alerts.AlertEvent` into one HTTP request in
its receiver's exact wire format; it never sends anything itself.  The
:class:`~service.outbox.Outbox` stores every event before any network call,
asks each sink whether it :meth:`~Sink.wants` the event, and sends the
:class:`OutgoingRequest` the sink builds, retrying until the receiver accepts
it.  Every request carries a key derived from the incident (PagerDuty's
``dedup_key``, Alertmanager's label set, the webhook's ``X-Delivery-Id``), so a
retried delivery is a no-op at the receiver.

Routing is per sink: ``match`` requires exact label values and ``match_re``
requires labels to fully match a regular expression.  The labels are the
event's group labels, ``detector`` and, for each contributing series, that
series' labels; an event matches when the group and any one series satisfy
every matcher together.  A missing label reads as the empty string, as in
Alertmanager.  Sinks that page people (Slack, PagerDuty) ignore ``refreshed``
events, the periodic re-sends that keep Alertmanager's lease alive.

Sinks are built from configuration: a list of mappings, each tagged by
``type``.  Each also takes Prometheus's ``http_config`` keys (``basic_auth``,
``authorization``, ``tls_config``; see :mod:`service.http_config`), which the
outbox's client for that sink uses.  Secrets are kept as
:class:`pydantic.SecretStr`, so neither a configuration nor a sink prints
them, and a secret left at a placeholder such as ``change-me`` is refused.
An ``alertmanager`` sink with ``urls`` sends every alert to each of them, one
sink per Alertmanager named ``<name>.1``, ``<name>.2`` …, each retried on its own.

The service's ``replica`` name, when set, says which replica of a pair sent a
request: an Alertmanager annotation, a field of the webhook body, a PagerDuty
custom detail, a line of the Slack message.  Never a label: an alert's
identity must be the same from every replica, so that Alertmanager and
PagerDuty keep one.

>>> sinks = build_sinks([
...     {"type": "alertmanager", "url": "http://127.0.0.1:9093"},
...     {"type": "slack", "webhook_url": "https://hooks.slack.com/services/T0/B0/XXXX",
...      "match": {"job": "api"}},
... ])
>>> [sink.name for sink in sinks]
['alertmanager', 'slack']
>>> event = example_event(change="refreshed")
>>> [sink.wants(event) for sink in sinks]
[True, False]
>>> sinks[0].request(event, "api-1/2/alertmanager").url
'http://127.0.0.1:9093/api/v2/alerts'
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from detector.alerts import AlertEvent, Change, SeriesFinding
from detector.config import ConfigError, Duration
from service.http_config import HTTPClientConfig, check_secret, http_url

#: Every kind of event; lease-based receivers need all of them.
ALL_CHANGES: frozenset[Change] = frozenset({"opened", "updated", "refreshed", "resolved"})
#: What people are told about: a refresh says nothing new, so paging sinks skip it.
PAGING_CHANGES: frozenset[Change] = frozenset({"opened", "updated", "resolved"})

_SINK_NAME = r"^[A-Za-z0-9_.-]+$"
#: What to do about an empty or placeholder webhook secret or PagerDuty key.
_SECRET_ADVICE = "set a long random string and give the receiver the same one"
_ROUTING_KEY_ADVICE = "use the service integration's 32-character key"


@dataclass(frozen=True)
class OutgoingRequest:
    """One HTTP request a sink wants sent; the outbox sends it.

    Examples
    --------
    >>> request = OutgoingRequest("POST", "http://127.0.0.1:9/hook", {"Content-Type": "text/plain"}, b"hi")
    >>> request.method, len(request.body)
    ('POST', 2)
    """

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes


@runtime_checkable
class Sink(Protocol):
    """A receiver of alert events, described by the request it expects.

    ``name`` is unique among the configured sinks and part of every delivery
    id; ``timeout`` bounds one request in seconds; ``http`` holds the
    credentials and TLS settings the outbox's client for this sink uses.
    :meth:`request` is called again for every attempt, so a sink may put the
    send time in it (the webhook's signature does).
    """

    name: str
    timeout: float
    http: HTTPClientConfig

    def wants(self, event: AlertEvent) -> bool:
        """Whether this sink receives ``event`` (its labels and its kind of change)."""
        ...

    def request(self, event: AlertEvent, delivery_id: str) -> OutgoingRequest:
        """The request that delivers ``event``; ``delivery_id`` is stable across retries."""
        ...


class Route:
    """Which events a sink takes: label matchers and the kinds of change it acts on.

    Parameters
    ----------
    match
        Label name to exact value.
    match_re
        Label name to a regular expression the whole value must match.
    changes
        The event changes (``opened``, ``updated``, ``refreshed``, ``resolved``) taken.

    Examples
    --------
    >>> route = Route(match={"detector": "latency"}, match_re={"instance": "a|b"}, changes=PAGING_CHANGES)
    >>> route.matches(example_event())
    True
    >>> route.matches(example_event(change="refreshed")), Route(match={"job": "web"}).matches(example_event())
    (False, False)
    """

    def __init__(
        self,
        match: Mapping[str, str] | None = None,
        match_re: Mapping[str, str] | None = None,
        changes: Iterable[Change] = ALL_CHANGES,
    ) -> None:
        self.match = dict(match or {})
        self.match_re = dict(match_re or {})
        self.changes = frozenset(changes)
        self._patterns = {name: _compile(name, pattern) for name, pattern in self.match_re.items()}

    def matches(self, event: AlertEvent) -> bool:
        """True when the event's change is taken and its labels satisfy every matcher."""
        if event.change not in self.changes:
            return False
        if not self.match and not self.match_re:
            return True
        common = {**event.group_labels, "detector": event.detector}
        candidates = [{**finding.labels, **common} for finding in event.findings] or [common]
        return any(self._satisfied(labels) for labels in candidates)

    def _satisfied(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(name, "") == value for name, value in self.match.items()) and all(
            pattern.fullmatch(labels.get(name, "")) for name, pattern in self._patterns.items()
        )

    def __repr__(self) -> str:
        return f"Route(match={self.match!r}, match_re={self.match_re!r}, changes={sorted(self.changes)!r})"


class RoutedSink:
    """What every sink shares: name, request timeout, :class:`Route` and ``http`` (credentials, TLS).

    Subclasses set ``changes`` (paging sinks skip ``refreshed``) and add
    ``request``; ``replica`` names the replica that sends (``""``: not said).

    >>> class Quiet(RoutedSink):
    ...     changes = PAGING_CHANGES
    >>> Quiet("q", match={"job": "web"}, match_re=None, timeout=5).wants(example_event())
    False
    """

    changes: frozenset[Change] = ALL_CHANGES

    def __init__(
        self,
        name: str,
        match: Mapping[str, str] | None,
        match_re: Mapping[str, str] | None,
        timeout: float,
        http: HTTPClientConfig | None = None,
        replica: str = "",
    ) -> None:
        self.name = name
        self.timeout = float(timeout)
        self.route = Route(match, match_re, self.changes)
        self.http = http if http is not None else HTTPClientConfig()
        self.replica = replica

    def wants(self, event: AlertEvent) -> bool:
        """Whether this sink takes the event (its change kind and labels)."""
        return self.route.matches(event)


def _compile(name: str, pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ValueError(f"match_re.{name}: {pattern!r} is not a regular expression ({error})") from None


# --- formatting shared by the sinks ----------------------------------------------------------------


def rfc3339(timestamp: float) -> str:
    """Unix seconds as an RFC 3339 UTC time with milliseconds.

    >>> rfc3339(1700000000.25)
    '2023-11-14T22:13:20.250Z'
    """
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_number(value: float) -> str:
    """A metric value for people: six significant digits, ``n/a`` when not finite.

    >>> format_number(950.0), format_number(0.000123456789), format_number(float("nan"))
    ('950', '0.000123457', 'n/a')
    """
    return f"{value:.6g}" if math.isfinite(value) else "n/a"


def format_band(finding: SeriesFinding) -> str:
    """The expected band of a finding as ``[lower, upper]``.

    >>> format_band(example_event().top)
    '[300, 500]'
    """
    return f"[{format_number(finding.lower)}, {format_number(finding.upper)}]"


def format_rarity(p_value: float) -> str:
    """How unusual a tail probability is, in words.

    >>> format_rarity(2e-6), format_rarity(0.03), format_rarity(0.6)
    ('p = 2e-06, about 1 in 500,000', 'p = 0.03, about 1 in 33', 'p = 0.6, not unusual')
    """
    if not math.isfinite(p_value):
        return "p = n/a"
    if p_value <= 0:
        return "p = 0, beyond anything in the series' history"
    if p_value >= 0.5:
        return f"p = {p_value:.2g}, not unusual"
    odds = 1.0 / p_value
    rounded = float(f"{odds:.2g}")
    return f"p = {p_value:.2g}, about 1 in {rounded:,.0f}"


def format_duration(seconds: float) -> str:
    """A duration for people, two units at most.

    >>> format_duration(45), format_duration(750), format_duration(90061)
    ('45s', '12m 30s', '1d 1h')
    """
    remaining = max(0, round(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, size)
        if count or (unit == "s" and not parts):
            parts.append(f"{count}{unit}")
    return " ".join(parts[:2])


def format_labels(labels: Mapping[str, str]) -> str:
    """Labels in PromQL selector syntax, sorted by name.

    >>> format_labels({"job": "api", "instance": "a"})
    '{instance="a",job="api"}'
    """
    inner = ",".join(f'{name}="{json.dumps(value)[1:-1]}"' for name, value in sorted(labels.items()))
    return "{" + inner + "}"


def json_bytes(data: Any) -> bytes:
    """Compact, key-sorted UTF-8 JSON; non-finite floats become ``null`` so every parser accepts it.

    >>> json_bytes({"b": float("inf"), "a": [1.5, "é"]})
    b'{"a":[1.5,"\\xc3\\xa9"],"b":null}'
    """
    return json.dumps(_finite(data), separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def _finite(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, Mapping):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(value) for value in data]
    return data


def example_event(**changes: Any) -> AlertEvent:
    """A small, realistic single-series event (now-ish times) for examples and tests.

    Keyword arguments replace fields of the event.

    >>> event = example_event(status="resolved", change="resolved")
    >>> event.status, event.top.key
    ('resolved', 'api_latency_p99{instance="a",job="api"}')
    """
    now = float(int(time.time()))
    finding = SeriesFinding(
        key='api_latency_p99{instance="a",job="api"}',
        labels={"__name__": "api_latency_p99", "instance": "a", "job": "api"},
        observed=950.0,
        expected=400.0,
        lower=300.0,
        upper=500.0,
        p_value=2e-6,
        direction="high",
        started_at=now - 180.0,
        model="auto",
        warming=False,
    )
    event = AlertEvent(
        incident_id="latency-api-1",
        status="firing",
        change="opened",
        detector="latency",
        group_labels={"job": "api"},
        opened_at=now - 120.0,
        resolved_at=None,
        updated_at=now,
        sequence=1,
        findings=(finding,),
        summary="latency: api_latency_p99 on a is above its expected band",
        description="p99 latency 950 ms against an expected 300–500 ms for the last 3 minutes.",
        links={"graph": "http://127.0.0.1:9090/graph?g0.expr=api_latency_p99&g0.tab=0"},
    )
    if changes.get("status") == "resolved" and "resolved_at" not in changes:
        changes["resolved_at"] = now
    return replace(event, **changes)


# --- configuration ---------------------------------------------------------------------------------


class _SinkConfig(HTTPClientConfig):
    model_config = ConfigDict(extra="forbid", frozen=True)

    match: dict[str, str] = Field(default_factory=dict)
    match_re: dict[str, str] = Field(default_factory=dict)
    timeout: Annotated[Duration, Field(gt=0)] = 10.0

    @field_validator("match_re")
    @classmethod
    def _patterns_compile(cls, patterns: dict[str, str]) -> dict[str, str]:
        for name, pattern in patterns.items():
            _compile(name, pattern)
        return patterns


class AlertmanagerConfig(_SinkConfig):
    """An Alertmanager (API v2) or, with ``urls``, each of a cluster.

    ``lease`` is how long a firing alert lives without a refresh: keep it at
    about three refresh intervals, so one lost refresh does not resolve the
    alert.  Give ``url`` or ``urls``: like Prometheus, the detector sends every
    alert to every Alertmanager of a cluster.

    Examples
    --------
    >>> AlertmanagerConfig(url="http://127.0.0.1:9093", lease="5m").lease
    300.0
    >>> AlertmanagerConfig(urls=["http://am-1:9093", "http://am-2:9093"]).urls
    ['http://am-1:9093', 'http://am-2:9093']
    """

    type: Literal["alertmanager"] = "alertmanager"
    name: Annotated[str, Field(pattern=_SINK_NAME)] = "alertmanager"
    url: str | None = None
    urls: list[str] = Field(default_factory=list)
    lease: Annotated[Duration, Field(gt=0)] = 300.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else http_url(value, "url")

    @field_validator("urls", mode="before")
    @classmethod
    def _skip_unset(cls, values: object) -> object:
        """An empty entry is off, as an empty ``url`` is: ``urls: [$AM_1, "${AM_2:-}"]``."""
        return [value for value in values if value not in ("", None)] if isinstance(values, list) else values

    @field_validator("urls")
    @classmethod
    def _urls(cls, values: list[str]) -> list[str]:
        for index, value in enumerate(values):
            http_url(value, f"urls[{index}]")
            if value in values[:index]:
                raise ValueError(f"urls[{index}]: {value!r} is listed twice; list each Alertmanager once")
        return values

    @model_validator(mode="after")
    def _one_address(self) -> AlertmanagerConfig:
        if (self.url is None) == (not self.urls):
            raise ValueError("needs url (one Alertmanager) or urls (every one of a cluster), one of them")
        return self

    def addresses(self) -> list[str]:
        """The base URL of each Alertmanager to send to."""
        return [self.url] if self.url is not None else list(self.urls)


class PagerDutyConfig(_SinkConfig):
    """A PagerDuty service integration (Events API v2).

    Examples
    --------
    >>> config = PagerDutyConfig(routing_key="R0UT1NGKEY")
    >>> config.severity, config.routing_key
    ('error', SecretStr('**********'))
    """

    type: Literal["pagerduty"] = "pagerduty"
    name: Annotated[str, Field(pattern=_SINK_NAME)] = "pagerduty"
    routing_key: SecretStr
    url: str = "https://events.pagerduty.com/v2/enqueue"
    severity: Literal["critical", "error", "warning", "info"] = "error"

    @field_validator("routing_key")
    @classmethod
    def _key_given(cls, value: SecretStr) -> SecretStr:
        check_secret(value.get_secret_value(), "routing_key", _ROUTING_KEY_ADVICE)
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return http_url(value, "url")


class SlackConfig(_SinkConfig):
    """A Slack incoming webhook.

    Examples
    --------
    >>> SlackConfig(webhook_url="https://hooks.slack.com/services/T0/B0/XXXX").webhook_url
    SecretStr('**********')
    """

    type: Literal["slack"] = "slack"
    name: Annotated[str, Field(pattern=_SINK_NAME)] = "slack"
    webhook_url: SecretStr

    @field_validator("webhook_url")
    @classmethod
    def _url(cls, value: SecretStr) -> SecretStr:
        # The URL is the secret: never quote it back.
        http_url(value.get_secret_value(), "webhook_url", quote=False)
        return value


class WebhookConfig(_SinkConfig):
    """Any HTTP receiver; bodies are signed with HMAC-SHA256 under ``secret``.

    Examples
    --------
    >>> WebhookConfig(url="http://127.0.0.1:8080/alerts", secret="s3cret-s3cret").name
    'webhook'
    >>> WebhookConfig(url="http://127.0.0.1:8080/alerts", secret="")
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for WebhookConfig
    secret
      Value error, secret is empty; set a long random string and give the receiver the same one ...
    """

    type: Literal["webhook"] = "webhook"
    name: Annotated[str, Field(pattern=_SINK_NAME)] = "webhook"
    url: str
    secret: SecretStr

    @field_validator("secret")
    @classmethod
    def _secret_given(cls, value: SecretStr) -> SecretStr:
        check_secret(value.get_secret_value(), "secret", _SECRET_ADVICE)
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return http_url(value, "url")


#: One sink's configuration, chosen by its ``type``.
SinkConfig = Annotated[
    AlertmanagerConfig | PagerDutyConfig | SlackConfig | WebhookConfig, Field(discriminator="type")
]
_SINK_CONFIG: TypeAdapter[SinkConfig] = TypeAdapter(SinkConfig)


_CONFIG_TYPES: dict[str, type[BaseModel]] = {
    "alertmanager": AlertmanagerConfig,
    "pagerduty": PagerDutyConfig,
    "slack": SlackConfig,
    "webhook": WebhookConfig,
}


def _describe(problem: Mapping[str, Any]) -> str:
    """One pydantic error as ``key: what is wrong; what is allowed``."""
    kinds = ", ".join(_CONFIG_TYPES)
    if problem["type"] == "union_tag_invalid":
        return f"type: {problem['ctx']['tag']!r} is not a sink type; use one of {kinds}"
    if problem["type"] == "union_tag_not_found":
        return f"type: missing; use one of {kinds}"
    tag, *path = problem["loc"]  # The union tag (the sink type) is noise in a key path.
    key = ".".join(str(part) for part in path)
    if problem["type"] == "value_error":
        # A check of the whole sink (url or urls, basic_auth or authorization) has no key of its own.
        return f"{key}: {problem['ctx']['error']}" if key else str(problem["ctx"]["error"])
    if problem["type"] == "extra_forbidden" and len(path) == 1:
        # The sink's own keys first, then the http_config keys every sink takes.
        fields = list(_CONFIG_TYPES[str(tag)].model_fields)
        shared = list(HTTPClientConfig.model_fields)
        allowed = ", ".join([name for name in fields if name not in shared] + shared)
        return f"{key}: unknown key; allowed: {allowed}"
    return f"{key}: {problem['msg']}"


def _parse(index: int, config: SinkConfig | Mapping[str, Any]) -> SinkConfig:
    if isinstance(config, BaseModel):
        return config
    try:
        return _SINK_CONFIG.validate_python(config)
    except ValidationError as error:
        raise ConfigError("\n".join(f"sinks[{index}]: {_describe(p)}" for p in error.errors())) from None


def build_sinks(configs: Iterable[SinkConfig | Mapping[str, Any]], replica: str = "") -> list[Sink]:
    """The sinks the configurations describe, in order, each saying it was sent by ``replica``.

    Mappings are validated here; errors are one :class:`~detector.config.ConfigError`
    naming ``sinks[i]`` and the key.  Names must be unique: they key deliveries.

    >>> build_sinks([{"type": "webhook", "url": "http://127.0.0.1:8080/", "secret": "k"}] * 2)
    Traceback (most recent call last):
    ...
    detector.config.ConfigError: sinks[1]: name 'webhook' is already used by sinks[0]; give each ...
    """
    sinks: list[Sink] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(configs):
        config = _parse(index, raw)
        for sink in _build(config, replica):
            if sink.name in seen:
                raise ConfigError(
                    f"sinks[{index}]: name {sink.name!r} is already used by sinks[{seen[sink.name]}]; "
                    "give each sink its own name"
                )
            seen[sink.name] = index
            sinks.append(sink)
    return sinks


def _build(config: SinkConfig, replica: str) -> list[Sink]:
    common: dict[str, Any] = {
        "name": config.name,
        "match": config.match,
        "match_re": config.match_re,
        "timeout": config.timeout,
        "http": config,
        "replica": replica,
    }
    if isinstance(config, AlertmanagerConfig):
        urls = config.addresses()
        if len(urls) == 1:
            return [AlertmanagerSink(urls[0], lease=config.lease, **common)]
        return [
            AlertmanagerSink(url, lease=config.lease, **{**common, "name": f"{config.name}.{number}"})
            for number, url in enumerate(urls, start=1)
        ]
    if isinstance(config, PagerDutyConfig):
        key = config.routing_key.get_secret_value()
        return [PagerDutySink(key, url=config.url, severity=config.severity, **common)]
    if isinstance(config, SlackConfig):
        return [SlackSink(config.webhook_url.get_secret_value(), **common)]
    return [WebhookSink(config.url, config.secret.get_secret_value(), **common)]


# The sink modules import the protocol, Route and formatting helpers above, so they load last.
from service.sinks.alertmanager import AlertmanagerSink  # noqa: E402
from service.sinks.pagerduty import PagerDutySink  # noqa: E402
from service.sinks.slack import SlackSink  # noqa: E402
from service.sinks.webhook import WebhookSink, verify_signature  # noqa: E402

__all__ = [
    "ALL_CHANGES",
    "PAGING_CHANGES",
    "AlertmanagerConfig",
    "AlertmanagerSink",
    "OutgoingRequest",
    "PagerDutyConfig",
    "PagerDutySink",
    "Route",
    "Sink",
    "SinkConfig",
    "SlackConfig",
    "SlackSink",
    "WebhookConfig",
    "WebhookSink",
    "build_sinks",
    "example_event",
    "format_band",
    "format_duration",
    "format_labels",
    "format_number",
    "format_rarity",
    "json_bytes",
    "rfc3339",
    "verify_signature",
]

"""The service's YAML configuration: where data comes from, detectors, store, sinks.

A minimal pull configuration::

    prometheus: {url: "${PROMETHEUS_URL:-http://127.0.0.1:9090}"}
    store: anomaly-detector.db
    detectors:
      - name: cpu
        query: sum by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[1m]))
        interval: 15s

Each detector takes every key of :class:`detector.config.DetectorConfig`
(``model``, ``calibration``, ``alerting`` …) beside its source settings.

>>> settings = ServiceSettings.model_validate(
...     {"detectors": [{"name": "cpu", "query": "up", "interval": "30s"}]})
>>> settings.detectors[0].interval, settings.detectors[0].model
(30.0, 'auto')
>>> from detector.config import validate_settings
>>> validate_settings(ServiceSettings, {"detectors": [{"name": "cpu"}]}, "run.yaml")
... # doctest: +ELLIPSIS
Traceback (most recent call last):
...
detector.config.ConfigError: run.yaml: detectors.0: a pull detector needs a query (PromQL); or set ...
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from detector.config import DetectorConfig, Duration, YamlDocument
from detector.silences import MaintenanceWindow, Matcher, Silence
from service.http_config import HTTPClientConfig, http_url
from service.sharding import hashmod
from service.sinks import SinkConfig

_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_:.-]*$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PrometheusSettings(HTTPClientConfig):
    """Where the Prometheus HTTP API is, for pull detectors, warm starts and links, and how to reach it.

    ``basic_auth``, ``authorization`` and ``tls_config`` are Prometheus's
    ``http_config`` (:mod:`service.http_config`); ``headers`` are sent as they
    are, so credentials go in ``authorization``, which keeps them secret.
    """

    url: str = "http://127.0.0.1:9090"
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: Duration = 30.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return http_url(value, "url")

    @field_validator("headers")
    @classmethod
    def _no_credentials(cls, headers: dict[str, str]) -> dict[str, str]:
        if any(name.lower() == "authorization" for name in headers):
            raise ValueError(
                "Authorization is not set in headers (it would be shown); "
                "use authorization: {credentials_file: ...} or basic_auth: {username, password_file}"
            )
        return headers


class DetectorSpec(DetectorConfig):
    """One detector: its source of series and the model, calibration and policy for them.

    ``source: pull`` runs ``query`` every ``interval``; a new series is warm-started
    from ``lookback`` of its own history.  ``source: remote_write`` scores the
    remote-written series whose labels match ``match`` (equality) and
    ``match_re`` (fully anchored regular expressions).  A series not seen for
    ``expire_after`` is dropped.
    """

    name: str
    source: Literal["pull", "remote_write"] = "pull"
    query: str | None = None
    interval: Duration = 15.0
    lookback: Duration = 86400.0
    expire_after: Duration = 3600.0
    match: dict[str, str] = Field(default_factory=dict)
    match_re: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"{name!r} is not a usable detector name; use letters, digits, _ : . -")
        return name

    @field_validator("match_re")
    @classmethod
    def _valid_patterns(cls, patterns: dict[str, str]) -> dict[str, str]:
        for label, pattern in patterns.items():
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"{label}: {pattern!r} is not a regular expression ({error})") from None
        return patterns

    @model_validator(mode="after")
    def _source_complete(self) -> DetectorSpec:
        if self.source == "pull" and not self.query:
            raise ValueError("a pull detector needs a query (PromQL); or set source: remote_write")
        if self.source == "remote_write" and self.query:
            raise ValueError("a remote_write detector takes series from match/match_re, not a query")
        return self

    def engine_config(self) -> DetectorConfig:
        """Only the settings that shape the engine's state."""
        return DetectorConfig.model_validate(self.model_dump(include=set(DetectorConfig.model_fields)))

    def fingerprint(self) -> str:
        """Changes when a setting that shapes model state changes (then its series start cold)."""
        text = self.engine_config().model_dump_json()
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def accepts(self, labels: dict[str, str]) -> bool:
        """Whether a remote-written series belongs to this detector.

        >>> spec = DetectorSpec(name="d", source="remote_write", match_re={"__name__": "node_.*"})
        >>> spec.accepts({"__name__": "node_load1"}), spec.accepts({"__name__": "up"})
        (True, False)
        """
        return all(labels.get(k) == v for k, v in self.match.items()) and all(
            re.fullmatch(p, labels.get(k, "")) for k, p in self.match_re.items()
        )


class SilenceSettings(_Section):
    """A silence or maintenance window from the file: ``matchers`` like ``job="db"``, times as RFC3339.

    ``maintenance: true`` also keeps the data out of learning; ``weekly: true``
    repeats a maintenance window every week from its first occurrence.
    """

    matchers: Annotated[list[str], Field(min_length=1)]
    starts_at: datetime
    ends_at: datetime
    comment: str = ""
    maintenance: bool = False
    weekly: bool = False

    def rule(self) -> Silence:
        """The :class:`detector.silences.Silence` (or MaintenanceWindow) this describes."""
        matchers = [Matcher.parse(text) for text in self.matchers]
        start, end = self.starts_at.timestamp(), self.ends_at.timestamp()
        if self.maintenance:
            return MaintenanceWindow(
                matchers, start, end, comment=self.comment, created_by="config", weekly=self.weekly
            )
        return Silence(matchers, start, end, comment=self.comment, created_by="config")

    @model_validator(mode="after")
    def _valid_rule(self) -> SilenceSettings:
        if self.weekly and not self.maintenance:
            raise ValueError("weekly repeats only maintenance windows; set maintenance: true")
        self.rule()
        return self


class RemoteWriteSettings(_Section):
    """Limits of the remote_write receiver, and how it batches requests for scoring.

    Requests are decoded as they arrive and scored together, one engine call
    per detector, once ``batch_samples`` samples are queued or the oldest
    queued request has waited ``batch_wait``; each is answered after that.
    ``series_cache``: series whose labels the decoder remembers (about 300
    bytes each, only for series seen); keep it above the series pushed, or
    the rest are decoded again in every request.
    """

    max_bytes: Annotated[int, Field(gt=0)] = 32 << 20
    batch_samples: Annotated[int, Field(gt=0)] = 10_000
    batch_wait: Duration = 0.05
    series_cache: Annotated[int, Field(gt=0)] = 1 << 21


#: The per-series outputs: each scored sample's calibrated score, expected band and alert state.
SCORE_METRICS = (
    "anomaly_score",
    "anomaly_expected",
    "anomaly_expected_lower",
    "anomaly_expected_upper",
    "anomaly_alert_firing",
)


class MetricsOutputSettings(_Section):
    """Which series ``/metrics`` shows scores and bands of (:data:`SCORE_METRICS`).

    ``series: all`` shows every series while a detector has at most
    ``max_series``; beyond that, and always with ``series: anomalous``, only
    the series alerting or scoring as anomalous (at most ``max_series``, the
    highest scores first).  A scrape costs about 100 bytes and 10 µs per series
    line: at a million series it would be ~500 MB and outlast the scrape
    interval, so send scores by ``outputs.remote_write`` instead.
    """

    series: Literal["all", "anomalous", "none"] = "all"
    max_series: Annotated[int, Field(ge=0)] = 10_000


class RemoteWriteOutputSettings(HTTPClientConfig):
    """Send every live scored sample's :data:`SCORE_METRICS` to a remote_write receiver.

    Prometheus (``--web.enable-remote-write-receiver``), Mimir, Thanos Receive,
    VictoriaMetrics … receive remote write 1.0.  Samples leave in requests of
    up to ``max_samples_per_send``; while the receiver is down or slow they
    wait in a queue of at most ``queue_samples``, and when it is full the
    oldest are dropped and counted (``anomaly_detector_output_samples_dropped_total``).
    A request is retried with backoff after a 5xx, 429 or a network error, and
    dropped (and counted) after any other 4xx, as Prometheus does.
    """

    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: Duration = 30.0
    #: Added to every output series, as Prometheus's external_labels (an HA pair: ``replica: a``).
    labels: dict[str, str] = Field(default_factory=dict)
    metrics: Annotated[list[Literal[SCORE_METRICS]], Field(min_length=1)] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(SCORE_METRICS)
    )
    max_samples_per_send: Annotated[int, Field(gt=0)] = 5_000
    queue_samples: Annotated[int, Field(gt=0)] = 5_000_000
    min_backoff: Duration = 0.5
    max_backoff: Duration = 30.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return http_url(value, "url")

    @field_validator("headers")
    @classmethod
    def _no_credentials(cls, headers: dict[str, str]) -> dict[str, str]:
        return PrometheusSettings._no_credentials(headers)


class OutputSettings(_Section):
    """Where scores and bands go besides alerts: ``/metrics`` to be scraped, and remote_write."""

    metrics: MetricsOutputSettings = MetricsOutputSettings()
    remote_write: RemoteWriteOutputSettings | None = None

    @field_validator("remote_write", mode="before")
    @classmethod
    def _unset_url(cls, value: object) -> object:
        """``url: ${SCORES_URL:-}`` means no remote_write output while the variable is unset."""
        return None if isinstance(value, dict) and value.get("url") in ("", None) else value


_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class ShardSettings(_Section):
    """Which share of the series this instance owns: those whose ``hashmod`` over ``labels`` is ``index``.

    ``labels`` must be the ``source_labels`` and ``count`` the ``modulus`` of
    the ``hashmod`` rule in Prometheus's ``write_relabel_configs`` (the
    separator is Prometheus's default ``;``), so that a series Prometheus sends
    to shard *i* is one shard *i* owns (:mod:`service.sharding`).  The default,
    one shard, owns every series.

    The default ``labels``, ``instance`` and ``job``, keep a target's series
    together, as Prometheus's own ``hashmod`` over ``__address__`` does for
    scraping.  Incidents group series within a shard only: where a detector's
    ``alerting.group_by`` lacks a shard label (:meth:`spread`), the series of
    one group can be scored by two shards, whose incidents of several series
    then carry the same labels at Alertmanager.

    >>> shard = ShardSettings(index=1, count=2)
    >>> shard.owns({"__name__": "up", "instance": "a:9100", "job": "node"})
    False
    >>> ShardSettings(index=2, count=2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for ShardSettings
      Value error, index 2 is not a shard of 2; indexes run from 0 to 1 ...
    """

    index: Annotated[int, Field(ge=0)] = 0
    count: Annotated[int, Field(ge=1)] = 1
    labels: Annotated[list[str], Field(min_length=1)] = Field(default_factory=lambda: ["instance", "job"])

    @field_validator("labels")
    @classmethod
    def _label_names(cls, labels: list[str]) -> list[str]:
        bad = [name for name in labels if not _LABEL_NAME.match(name)]
        if bad:
            raise ValueError(f"{', '.join(map(repr, bad))}: not a label name; use letters, digits and _")
        return labels

    @model_validator(mode="after")
    def _index_in_range(self) -> ShardSettings:
        if self.index >= self.count:
            raise ValueError(
                f"index {self.index} is not a shard of {self.count}; indexes run from 0 to {self.count - 1}"
            )
        return self

    def owns(self, labels: Mapping[str, str]) -> bool:
        """Whether the series with these labels is this shard's."""
        return self.count == 1 or hashmod(labels, self.labels, self.count) == self.index

    def spread(self, group_by: Sequence[str]) -> list[str]:
        """The shard labels missing from ``group_by``: by them one incident group spans shards.

        >>> ShardSettings(index=0, count=2).spread(["job"])
        ['instance']
        >>> ShardSettings().spread([])  # one shard: nothing spans shards
        []
        """
        return [] if self.count == 1 else [name for name in self.labels if name not in group_by]


class ServiceSettings(_Section):
    """Everything ``anomaly-detector run`` needs (see the module docstring)."""

    prometheus: PrometheusSettings = PrometheusSettings()
    store: Path = Path("anomaly-detector.db")
    checkpoint_interval: Duration = 60.0
    external_url: str = "http://127.0.0.1:8080"
    remote_write: RemoteWriteSettings = RemoteWriteSettings()
    shard: ShardSettings = ShardSettings()
    detectors: Annotated[list[DetectorSpec], Field(min_length=1)]
    sinks: list[SinkConfig] = Field(default_factory=list)
    silences: list[SilenceSettings] = Field(default_factory=list)
    history_points: Annotated[int, Field(ge=0)] = 240
    #: Series per detector with plot history (6 KB each at 240 points): every series while there
    #: are no more, beyond that the ones alerting, anomalous or looked at (service/history.py).
    history_series: Annotated[int, Field(ge=1)] = 10_000
    outputs: OutputSettings = OutputSettings()
    outbox_retention: Duration = 7 * 86400.0
    #: TLS and basic auth, in Prometheus's web config format (service/web_config.py); empty: none.
    web_config_file: Path | None = None
    #: Serve writes without credentials on a non-loopback address (the network protects them).
    unauthenticated_writes: bool = False
    #: This replica's name in an HA pair (``a``, ``${HOSTNAME}`` …): sent in annotations, never
    #: in labels, so the replicas' alerts stay identical and Alertmanager keeps one.  Empty: unnamed.
    replica: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]*$", max_length=253)] = ""

    @field_validator("web_config_file", mode="before")
    @classmethod
    def _unset_web_config(cls, path: object) -> object:
        """``web_config_file: ${WEB_CONFIG:-}`` means none while the variable is unset."""
        return None if path == "" else path

    @field_validator("replica", mode="before")
    @classmethod
    def _unset_replica(cls, name: object) -> object:
        """``replica: ${REPLICA:-}`` (YAML null while the variable is unset) means unnamed."""
        return "" if name is None else name

    @field_validator("sinks", mode="before")
    @classmethod
    def _skip_unset_sinks(cls, sinks: object) -> object:
        """A sink whose address is empty is off: ``url: ${ALERTMANAGER_URL:-}`` sends only when set."""
        if not isinstance(sinks, list):
            return sinks

        def unset(sink: object) -> bool:
            if not isinstance(sink, dict):
                return False
            keys = ("url", "webhook_url", "routing_key")
            no_urls = isinstance(sink.get("urls"), list) and not any(sink["urls"])
            return no_urls or any(key in sink and sink[key] in ("", None) for key in keys)

        return [sink for sink in sinks if not unset(sink)]

    @field_validator("detectors")
    @classmethod
    def _unique_names(cls, detectors: list[DetectorSpec]) -> list[DetectorSpec]:
        names = [d.name for d in detectors]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"detector names must be unique; repeated: {', '.join(repeated)}")
        return detectors


def load_settings(path: Path) -> ServiceSettings:
    """Read and validate a service configuration; relative ``store`` and ``web_config_file`` are
    relative to the file.

    Raises :class:`detector.config.ConfigError` naming the file, line and key.
    """
    document = YamlDocument.read(path)
    settings = document.validate(ServiceSettings)
    if not settings.store.is_absolute():
        settings.store = path.parent / settings.store
    if settings.web_config_file is not None and not settings.web_config_file.is_absolute():
        settings.web_config_file = path.parent / settings.web_config_file
    return settings

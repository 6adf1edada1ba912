"""The FastAPI shell around :class:`service.detection.Detection`: routes, lifespan, nothing else.

Routes::

    GET  /                        web page: detectors, anomalous series, recent alerts
    GET  /series/{id}             web page: one series' plot, band, score and explanation
    POST /api/v1/write            Prometheus remote_write receiver (snappy + protobuf)
    GET  /metrics                 scores, bands and self-metrics for Prometheus
    GET  /-/healthy, /-/ready     liveness; readiness (state restored, first evaluation done)
    GET  /api/v1/detectors        detectors, series counts, alert budget and realized alert rate
    GET  /api/v1/shard            the shard this instance owns, and Prometheus's rules that route it
    GET  /api/v1/series           series, optionally ?detector=…&anomalous=true
    GET  /api/v1/series/{id}      one series: latest value, band, score, warm-up status, quiet or speaking
    GET  /api/v1/alerts           recent alert events (newest first) and delivery counts
    POST /api/v1/alerts/{incident_id}/feedback   {"verdict": "false_positive" | "incident" | "new_normal"}
    GET/POST /api/v1/silences, DELETE /api/v1/silences/{id}   silences and maintenance windows

Every request passes :class:`service.access.AccessControl` first: with
``basic_auth_users`` configured all need credentials; without, writes
(anything but GET and HEAD) answer only on a loopback address.  Silences and
feedback record who made them.

The engine, store and loops are built in the lifespan handler and kept on
``app.state``; tests build the app with their own settings and reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, replace
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from detector.evaluation import Budget
from detector.silences import Silence
from service import web
from service.access import Access, AccessControl, actor
from service.detection import Detection, WriteFailed
from service.prometheus import PrometheusReader
from service.remote_write import RemoteWriteError, SeriesCache, decode_write_request, read_body
from service.runtime import DetectorRuntime, SeriesState
from service.settings import ServiceSettings, ShardSettings, SilenceSettings
from service.sharding import SEPARATOR
from service.store import Store

log = logging.getLogger(__name__)


def _detection(request: Request) -> Detection:
    detection: Detection = request.app.state.detection
    return detection


DetectionDep = Annotated[Detection, Depends(_detection)]
#: Who made the request: the basic-auth user, else ``anonymous@<client address>``.
ActorDep = Annotated[str, Depends(actor)]


def _finite(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None


def _series_json(state: SeriesState) -> dict[str, Any]:
    data = asdict(state)
    return {name: _finite(value) if isinstance(value, float) else value for name, value in data.items()}


def _json_safe(value: Any) -> Any:
    """``value`` with what JSON cannot carry as text: NaN and ±Infinity, bytes that are not UTF-8."""
    if isinstance(value, float) and _finite(value) is None:
        return str(value)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


async def _invalid_request(request: Request, error: Exception) -> JSONResponse:
    """422 with what was wrong, as FastAPI's own handler, which echoes the input: a body with NaN
    (Python's JSON parser takes it) or bytes not in UTF-8 would make that echo a 500."""
    assert isinstance(error, RequestValidationError)
    return JSONResponse({"detail": jsonable_encoder(_json_safe(error.errors()))}, status_code=422)


class BudgetReply(BaseModel):
    """A detector's alert budget as configured, and said both ways for the series it watches now."""

    false_alerts_per_week: float | None = Field(description="per series; null when per detector")
    false_alerts_per_day: float | None = Field(description="for the whole detector; null when per series")
    per_day: float = Field(description="false alerts a day the whole detector may send")
    per_series_per_day: float | None = Field(description="false alerts a day each series may send")


class AlertRateReply(BaseModel):
    """The alerts a detector opened over the last 7 days of its data: its realized rate, for the budget.

    Every alert onset counts, real incidents included.  Until the detector has
    scored a week of live data (kept across restarts) the count covers less:
    ``window_seconds`` says how much.
    """

    onsets: int = Field(description="alert onsets (one per series whose alert opened) in the window")
    window_seconds: float = Field(description="data time the count covers: 7 days, or less since it started")
    per_day: float | None = Field(description="onsets a day, all series together; null before any data")
    per_series_per_day: float | None = Field(description="per_day shared over the series watched now")


class DetectorReply(BaseModel):
    """One detector: what it watches, how far it is, its alert budget and how often it alerted."""

    name: str
    source: str
    query: str | None
    model: str
    series: int
    warming: int
    quiet: int = Field(description="series that send no alert events yet: warming up, or just restored")
    restored: bool
    last_evaluation: float | None
    budget: BudgetReply
    alert_rate: AlertRateReply

    @classmethod
    def of(cls, runtime: DetectorRuntime) -> DetectorReply:
        series = len(runtime.engine.series.active())
        budget = Budget.of(runtime.engine.policy)
        onsets = runtime.onsets
        return cls(
            name=runtime.name,
            source=runtime.spec.source,
            query=runtime.spec.query,
            model=runtime.spec.model,
            series=series,
            warming=runtime.warming_count(),
            quiet=runtime.quiet_count(),
            restored=runtime.restored,
            last_evaluation=runtime.last_eval,
            budget=BudgetReply(
                false_alerts_per_week=budget.false_alerts_per_week,
                false_alerts_per_day=budget.false_alerts_per_day,
                per_day=budget.per_day(series),
                per_series_per_day=_finite(budget.per_series_day(series)),
            ),
            alert_rate=AlertRateReply(
                onsets=onsets.count,
                window_seconds=onsets.window_seconds,
                per_day=_finite(onsets.per_day),
                per_series_per_day=_finite(onsets.per_day / series) if series else None,
            ),
        )


class ShardReply(BaseModel):
    """The share of the series this instance owns, and the Prometheus rules that send it exactly that."""

    index: int
    count: int
    labels: list[str] = Field(description="hashmod's source_labels, joined with separator")
    separator: str
    write_relabel_configs: list[dict[str, Any]] = Field(
        description="for this shard's remote_write queue in prometheus.yml"
    )

    @classmethod
    def of(cls, shard: ShardSettings) -> ShardReply:
        rules: list[dict[str, Any]] = [
            {
                "source_labels": shard.labels,
                "modulus": shard.count,
                "target_label": "__tmp_shard",
                "action": "hashmod",
            },
            {"source_labels": ["__tmp_shard"], "regex": str(shard.index), "action": "keep"},
            # write_relabel_configs keep __ labels: without this one it would join the series' labels.
            {"regex": "__tmp_shard", "action": "labeldrop"},
        ]
        return cls(
            index=shard.index,
            count=shard.count,
            labels=shard.labels,
            separator=SEPARATOR,
            write_relabel_configs=rules if shard.count > 1 else [],
        )


class FeedbackRequest(BaseModel):
    """On-call's verdict on an alert.

    ``false_positive`` halves the series' budget that way, ``incident``
    restores it and keeps the incident out of learning (and from being
    accepted as a new normal), ``new_normal`` adopts the series' current level
    at once and resolves its alert with that reason.
    """

    verdict: Literal["false_positive", "incident", "new_normal"]


class SilenceRequest(SilenceSettings):
    """A silence (or, with ``maintenance: true``, a maintenance window) made through the API.

    It records who made it: the authenticated user (else ``anonymous@<address>``);
    a ``created_by`` given in the request is kept beside that, as ``ana (via bot)``.
    """

    created_by: str | None = None

    def made_by(self, by: str) -> Silence:
        name = by if self.created_by in (None, "", by) else f"{self.created_by} (via {by})"
        return replace(self.rule(), created_by=name)


def create_app(
    settings: ServiceSettings,
    reader: PrometheusReader | None = None,
    clock: Callable[[], float] = time.time,
    access: Access | None = None,
) -> FastAPI:
    """The service as an ASGI app; starting it restores state and starts the loops.

    ``access`` is who may read and write (:mod:`service.access`); the default,
    no credentials on a loopback address, suits tests and local use.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = Store(settings.store)
        detection = Detection(settings, store, reader=reader, clock=clock)
        detection.restore()
        app.state.detection = detection
        tasks = [asyncio.create_task(detection.pull_loop(r)) for r in detection.pull_detectors]
        tasks.append(asyncio.create_task(detection.checkpoint_loop()))
        tasks.append(asyncio.create_task(detection.outbox.run(keep_finished=settings.outbox_retention)))
        if detection.score_writer is not None:
            tasks.append(asyncio.create_task(detection.score_writer.run()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await detection.checkpoint()
            detection.outbox.close()
            store.close()
            log.info("state saved to %s", settings.store)

    app = FastAPI(title="incident-anomaly-detector", lifespan=lifespan)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.include_router(web.router)

    def refused(reason: str) -> None:
        detection: Detection | None = getattr(app.state, "detection", None)
        if detection is not None:
            detection.metrics.auth_failures.labels(reason).inc()

    app.add_middleware(AccessControl, access=access or Access(), refused=refused)

    series_cache = SeriesCache(settings.remote_write.series_cache)

    @app.post("/api/v1/write", status_code=204)
    async def remote_write(request: Request, detection: DetectionDep) -> Response:
        try:
            limit = settings.remote_write.max_bytes
            body = await read_body(request.stream(), request.headers.get("content-length"), limit)
            decoded = decode_write_request(
                body,
                request.headers.get("content-type"),
                request.headers.get("content-encoding"),
                settings.remote_write.max_bytes,
                cache=series_cache,
            )
        except RemoteWriteError as error:
            detection.metrics.dropped.labels("bad_request").inc()
            return PlainTextResponse(f"{error}\n", status_code=error.status)
        try:
            await detection.write(decoded)  # answered once scored, with the requests queued beside it
        except WriteFailed as error:
            return PlainTextResponse(f"{error}\n", status_code=error.status)
        return Response(status_code=204)

    @app.get("/metrics")
    def metrics(detection: DetectionDep) -> Response:
        detection.metrics.observe_series(detection.runtimes.values())
        return Response(generate_latest(detection.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/-/healthy", response_class=PlainTextResponse)
    def healthy() -> str:
        return "anomaly-detector is healthy.\n"

    @app.get("/-/ready", response_class=PlainTextResponse)
    def ready(detection: DetectionDep) -> PlainTextResponse:
        if detection.ready:
            return PlainTextResponse("anomaly-detector is ready.\n")
        waiting = [r.name for r in detection.pull_detectors if r.name not in detection.evaluated]
        reason = "restoring state" if not detection.restored else f"waiting for first evaluation of {waiting}"
        return PlainTextResponse(f"not ready: {reason}\n", status_code=503)

    @app.get("/api/v1/detectors")
    def detectors(detection: DetectionDep) -> list[DetectorReply]:
        return [DetectorReply.of(runtime) for runtime in detection.runtimes.values()]

    @app.get("/api/v1/shard")
    def shard() -> ShardReply:
        return ShardReply.of(settings.shard)

    @app.get("/api/v1/series")
    def series(
        detection: DetectionDep, detector: str | None = None, anomalous: bool = False
    ) -> list[dict[str, Any]]:
        if detector is not None and detector not in detection.runtimes:
            raise HTTPException(404, f"no detector {detector!r}; see /api/v1/detectors")
        states = [
            state
            for runtime in detection.runtimes.values()
            if detector is None or runtime.name == detector
            for state in runtime.all_series()
            if not anomalous or state.alert
        ]
        states.sort(key=lambda s: -s.anomaly_score if s.anomaly_score == s.anomaly_score else 0.0)
        return [_series_json(state) for state in states]

    @app.get("/api/v1/series/{series_id}")
    def one_series(series_id: str, detection: DetectionDep) -> JSONResponse:
        found = web.find_series(detection, series_id)
        if found is not None:
            runtime, state, _ = found
            return JSONResponse({**_series_json(state), "model": runtime.model_name})
        raise HTTPException(404, f"no series {series_id!r}; list them at /api/v1/series")

    @app.get("/api/v1/alerts")
    def alerts(
        detection: DetectionDep, limit: Annotated[int, Query(ge=0, le=10_000)] = 100
    ) -> dict[str, Any]:
        deliveries = [
            {"sink": sink, "state": state, "count": count}
            for (sink, state), count in detection.outbox.stats().items()
        ]
        return {"events": [e.to_dict() for e in detection.recent_alerts(limit)], "deliveries": deliveries}

    @app.post("/api/v1/alerts/{incident_id}/feedback")
    async def feedback(
        incident_id: str, body: FeedbackRequest, detection: DetectionDep, by: ActorDep
    ) -> dict[str, Any]:
        # On the event loop, like all engine work: a new normal moves models and alert state.
        try:
            event = detection.feedback(incident_id, body.verdict, by)
        except KeyError:
            raise HTTPException(404, f"no recent incident {incident_id!r}; see /api/v1/alerts") from None
        runtime = detection.runtimes[event.detector]
        scales = {}
        for finding in event.findings:
            row = runtime.engine.series.get(finding.key)
            if row is not None:
                high, low = runtime.engine.policy.arrays["budget_scale"][row].tolist()
                scales[finding.key] = {"high": high, "low": low}
        return {"incident_id": incident_id, "verdict": body.verdict, "budget_scale": scales}

    @app.get("/api/v1/silences")
    def list_silences(detection: DetectionDep) -> list[dict[str, object]]:
        return detection.silences.listing(clock())

    @app.post("/api/v1/silences", status_code=201)
    def add_silence(body: SilenceRequest, detection: DetectionDep, by: ActorDep) -> dict[str, object]:
        # The request model already built the rule once: a bad one is a 422 with the reason.
        rule = detection.silences.add(body.made_by(by))
        log.info("silence %s %s added by %s", rule.id, rule.describe_matchers(), rule.created_by)
        return {"id": rule.id}

    @app.delete("/api/v1/silences/{rule_id}", status_code=204)
    def delete_silence(rule_id: str, detection: DetectionDep, by: ActorDep) -> Response:
        if not detection.silences.remove(rule_id):
            raise HTTPException(
                404, f"no API-made silence {rule_id!r} (config silences are edited in the file)"
            )
        log.info("silence %s deleted by %s", rule_id, by)
        return Response(status_code=204)

    return app

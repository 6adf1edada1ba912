"""What an alert says: the data passed from the alert policy to the sinks.

An :class:`AlertEvent` is one state of one incident (opened, still firing,
resolved).  It is plain data with a JSON round trip, so the outbox can store it
and a restart can deliver it later, and every sink formats the same facts.

>>> finding = SeriesFinding(
...     key='{instance="a",job="api"}', labels={"instance": "a", "job": "api"},
...     observed=950.0, expected=400.0, lower=300.0, upper=500.0, p_value=2e-6,
...     direction="high", started_at=1700000000.0, model="auto", warming=False)
>>> event = AlertEvent(
...     incident_id="api-1", status="firing", change="opened", detector="latency",
...     group_labels={"job": "api"}, opened_at=1700000000.0, resolved_at=None,
...     updated_at=1700000060.0, sequence=1, findings=(finding,),
...     summary="latency: api above its expected band", description="…", links={})
>>> AlertEvent.from_dict(event.to_dict()) == event
True
>>> event.top.observed
950.0

An event stored before ``resolution`` and ``late_by`` existed loads with their
defaults: resolved the ordinary way, data on time.

>>> old = {k: v for k, v in event.to_dict().items() if k not in ("resolution", "late_by")}
>>> restored = AlertEvent.from_dict(old)
>>> restored.resolution, restored.late_by
('', 0.0)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Direction = Literal["high", "low"]
Status = Literal["firing", "resolved"]
#: Why an event was emitted: sinks that page people (Slack, PagerDuty) act on
#: opened/updated/resolved; lease-based receivers (Alertmanager) also need
#: the periodic ``refreshed`` re-sends of a still-firing incident.
Change = Literal["opened", "updated", "refreshed", "resolved"]


@dataclass(frozen=True)
class SeriesFinding:
    """One series' part in an alert: what was expected, what was seen, how unusual.

    ``p_value`` is calibrated: the probability, under the series' own recent
    normal behaviour, of a deviation at least this large (score = 1 - p).
    ``interval`` is the series' sampling interval in seconds (0 if unknown):
    with ``p_value`` it says how often such a deviation recurs.  ``pattern``
    names what the p-value is about when it is not the point's own deviation
    (one of :data:`models.base.PATTERN_KINDS`: ``flat``, ``routine``,
    ``spikes``, ``spread``), with ``pattern_seen`` and ``pattern_usual`` the
    statistic's value and its usual value (see :class:`models.base.Pattern`),
    and ``pattern_at`` the time of the point they were read at (0: not known).
    """

    key: str
    labels: dict[str, str]
    observed: float
    expected: float
    lower: float
    upper: float
    p_value: float
    direction: Direction
    started_at: float
    model: str
    warming: bool
    interval: float = 0.0
    pattern: str = ""
    pattern_seen: float = 0.0
    pattern_usual: float = 0.0
    pattern_at: float = 0.0


@dataclass(frozen=True)
class AlertEvent:
    """One state of one incident, as the sinks deliver it.

    ``incident_id`` is deterministic (detector, group and opening time), so a
    retried delivery is a no-op at the receiver; ``sequence`` counts the
    incident's events, so ``(incident_id, sequence)`` identifies a delivery.
    ``findings`` are ranked, most unusual first.

    ``resolution`` says, for a resolved event, why the incident resolved, as a
    short sentence ("accepted as the new normal after 2 hours"); empty means the
    ordinary reason, the series came back inside its expected band.
    ``late_by`` is how many seconds after its own time the onset sample
    reached the detector, when that exceeded the detector's ``late_after``;
    0 means the data was on time.

    >>> AlertEvent(
    ...     incident_id="api-1", status="firing", change="updated", detector="latency",
    ...     group_labels={}, opened_at=0.0, resolved_at=None, updated_at=60.0, sequence=2,
    ...     findings=(), summary="", description="", links={}, resolution="by feedback")
    Traceback (most recent call last):
    ...
    ValueError: resolution 'by feedback' is set on a firing event; only a resolved event has one
    """

    incident_id: str
    status: Status
    change: Change
    detector: str
    group_labels: dict[str, str]
    opened_at: float
    resolved_at: float | None
    updated_at: float
    sequence: int
    findings: tuple[SeriesFinding, ...]
    summary: str
    description: str
    links: dict[str, str]
    correlated: tuple[str, ...] = field(default=())
    resolution: str = ""
    late_by: float = 0.0

    def __post_init__(self) -> None:
        if self.resolution and self.status != "resolved":
            raise ValueError(
                f"resolution {self.resolution!r} is set on a {self.status} event; "
                "only a resolved event has one"
            )
        if not (math.isfinite(self.late_by) and self.late_by >= 0.0):
            raise ValueError(f"late_by {self.late_by!r} is not a number of seconds >= 0; use 0 when on time")

    @property
    def top(self) -> SeriesFinding:
        """The most unusual contributing series."""
        return self.findings[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (floats and strings only)."""
        data = asdict(self)
        data["findings"] = [asdict(finding) for finding in self.findings]
        data["correlated"] = list(self.correlated)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlertEvent:
        """Inverse of :meth:`to_dict`."""
        values = dict(data)
        values["findings"] = tuple(SeriesFinding(**finding) for finding in data["findings"])
        values["correlated"] = tuple(data.get("correlated", ()))
        return cls(**values)

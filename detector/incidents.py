"""From per-series alert state to incidents: grouping, updates, refreshes, resolution.

The policy decides per series; people want one page per problem.  After each
engine batch :meth:`IncidentTracker.observe` turns the batch's alert state
into :class:`~detector.alerts.AlertEvent` s:

* series whose alerts open within ``group_window`` of each other (each within
  the window of the incident's span, from its opening to its latest arrival)
  and share the values of the ``group_by`` labels form **one** incident, its
  findings ranked by p-value;
* a series that starts alerting in an open incident's group and window joins
  it: one ``updated`` event per batch, whatever the number of newcomers;
* a firing incident is re-sent as ``refreshed`` every ``refresh_interval``
  (lease-based receivers such as Alertmanager resolve what is not re-sent);
* when every member's alert has resolved, the incident is ``resolved``.

Each event carries a new ``sequence``.  The ``incident_id`` is a hash of the
detector, the group labels and the opening time, which is the onset's sample
time: replaying the same data after a restart gives the same ids, so
receivers deduplicate retries.  Series of the same group that were unusual
(p at most ``correlate_below``) without alerting when the incident opened or
grew are listed as ``correlated``, those moving the incident's way first.

A batch may hold several points of a series (a backlog, a catch-up, a client
that batches): they are taken in time order, so every opening and resolution
the policy decided reaches the events, and an incident that opened and ended
inside one batch is delivered as opened, then resolved, with its real times
(:func:`transition_points` picks the points that matter out of a large
batch).  A resolution says why when the reason is not the ordinary one (the
series came back inside its band): a shift accepted as the new normal, after
how long or by whom.  An alert whose onset sample arrived more than
``late_after`` after its own time is marked late, with by how much.

A silenced point, or a gap, is no decision: it neither resolves a member nor
adds one.  The tracker's state is plain JSON (:meth:`IncidentTracker.state_dict`),
for the service to checkpoint beside the engine.

A restored tracker vouches for none of its incidents until it is given a
point of one of their series (:meth:`IncidentTracker.load_state_dict`): an
unconfirmed incident is not refreshed, and a series that goes away
(:meth:`~IncidentTracker.forget`) or comes back without its alert
(:meth:`~IncidentTracker.withdraw`) leaves it silently.  Another replica may
still see that incident, or may have resolved it long ago; either way a
replica that was not watching has nothing to say about it, and Alertmanager
ends an alert nobody refreshes when its lease runs out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detector.alerts import AlertEvent, Change, SeriesFinding
from detector.engine import ScoredBatch
from detector.explain import describe, format_duration, summarize
from models.base import PATTERN_KINDS

Links = Callable[[Sequence[SeriesFinding]], dict[str, str]]


def incident_id(detector: str, group_labels: Mapping[str, str], opened_at: float) -> str:
    """The deterministic id of an incident.

    >>> incident_id("latency", {"job": "api"}, 1700000000.0)
    '0507bac9a181c7fc'
    """
    text = json.dumps([detector, sorted(group_labels.items()), repr(float(opened_at))])
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def transition_points(ids: np.ndarray, scored: ScoredBatch, firing: np.ndarray) -> np.ndarray:
    """The points of a batch the tracker must see, in time order.

    ``ids`` are the points' series rows (a series may repeat, its points in
    time order) and ``firing`` says, per row, whether the tracker holds the
    series as alerting before the batch.  Kept: every decided point where the
    series' alert state changes (openings, resolutions, acceptances), each
    series' most extreme alerting point (its finding) and its last decided
    point (the state it is left in); the rest would tell the tracker nothing.

    >>> from types import SimpleNamespace
    >>> alert = np.array([False, True, True, True, False, False])
    >>> scored = SimpleNamespace(
    ...     alert=alert, decided=np.ones(6, bool), onset=np.array([0, 1, 0, 0, 0, 0], bool),
    ...     accepted=np.zeros(6, bool), p_value=np.array([0.5, 1e-3, 1e-6, 1e-4, 0.4, 0.6]))
    >>> transition_points(np.zeros(6, np.int64), scored, np.zeros(1, bool)).tolist()
    [1, 2, 4, 5]
    """
    decided = np.nonzero(scored.decided)[0]
    if not len(decided):
        return decided
    rows = ids[decided]
    alert = scored.alert[decided]
    by_series = np.argsort(rows, kind="stable")
    rows_sorted, alert_sorted = rows[by_series], alert[by_series]
    first = np.r_[True, rows_sorted[1:] != rows_sorted[:-1]]
    last = np.r_[rows_sorted[1:] != rows_sorted[:-1], True]
    before = np.where(first, firing[rows_sorted], np.r_[False, alert_sorted[:-1]])
    keep = np.zeros(len(decided), dtype=bool)
    keep[by_series] = (alert_sorted != before) | last
    keep |= scored.onset[decided] | scored.accepted[decided]
    alerting = np.nonzero(alert)[0]
    if len(alerting):
        extreme = np.lexsort((scored.p_value[decided][alerting], rows[alerting]))
        ordered_rows = rows[alerting][extreme]
        keep[alerting[extreme][np.r_[True, ordered_rows[1:] != ordered_rows[:-1]]]] = True
    return decided[keep]


@dataclass
class _Member:
    finding: SeriesFinding
    firing: bool = True


@dataclass
class _Incident:
    incident_id: str
    group: tuple[str, ...]
    group_labels: dict[str, str]
    opened_at: float
    last_arrival: float
    sequence: int = 0
    last_sent: float = -math.inf
    resolved_at: float | None = None
    resolution: str = ""
    late_by: float = 0.0
    members: dict[str, _Member] = field(default_factory=dict)
    #: key -> (rank, p): the best showing of each correlated series.
    correlated: dict[str, tuple[int, float]] = field(default_factory=dict)

    def firing(self) -> bool:
        return any(member.firing for member in self.members.values())

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["group"] = list(self.group)
        data["last_sent"] = None if math.isinf(self.last_sent) else self.last_sent
        data["correlated"] = {key: list(value) for key, value in self.correlated.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _Incident:
        values = dict(data)
        values["group"] = tuple(data["group"])
        values["last_sent"] = -math.inf if data["last_sent"] is None else data["last_sent"]
        values["members"] = {
            key: _Member(SeriesFinding(**member["finding"]), member["firing"])
            for key, member in data["members"].items()
        }
        values["correlated"] = {key: (int(rank), float(p)) for key, (rank, p) in data["correlated"].items()}
        return cls(**values)


class IncidentTracker:
    """Groups per-series alerts of one detector into incidents and emits their events.

    Parameters
    ----------
    detector
        The detector's name, carried by every event and part of the incident id.
    group_by
        Labels whose values put series into the same incident (``[]``: one group).
    group_window
        Seconds between alert onsets within which series join one incident.
    refresh_interval
        Seconds between ``refreshed`` re-sends of a firing incident.
    links
        Builds an event's links (graph, runbook …) from its ranked findings.
    correlate_below, max_correlated
        Non-alerting series of the group with p at most ``correlate_below`` are
        candidates for ``correlated``; at most ``max_correlated`` are listed.
    late_after
        Seconds after its own time an onset sample may arrive before its
        alert is marked late (``late_by``).

    Examples
    --------
    >>> import numpy as np
    >>> from detector.engine import ScoredBatch
    >>> def batch(t, alert, p):
    ...     n = len(alert)
    ...     return ScoredBatch(
    ...         anomaly_score=1 - np.array(p), p_value=np.array(p), deviation=np.full(n, 5.0),
    ...         expected=np.full(n, 10.0), lower=np.full(n, 8.0), upper=np.full(n, 12.0),
    ...         warming=np.zeros(n, bool), alert=np.array(alert), onset=np.array(alert),
    ...         decided=np.ones(n, bool), accepted=np.zeros(n, bool),
    ...         since=np.where(alert, t, np.nan), lowest_p=np.array(p),
    ...         alert_sign=np.ones(n, np.int8), interval=np.full(n, 60.0))
    >>> keys = ["a", "b"]
    >>> labels = {"a": {"job": "api"}, "b": {"job": "api"}}
    >>> tracker = IncidentTracker("latency", group_by=["job"], group_window=120, refresh_interval=60)
    >>> events = tracker.observe(0.0, keys, labels, np.zeros(2), np.full(2, 20.0),
    ...                          batch(0.0, [True, True], [1e-6, 1e-5]), "auto")
    >>> [(e.change, e.sequence, [f.key for f in e.findings]) for e in events]
    [('opened', 1, ['a', 'b'])]
    >>> events = tracker.observe(60.0, keys, labels, np.full(2, 60.0), np.full(2, 10.0),
    ...                          batch(60.0, [False, False], [0.5, 0.5]), "auto")
    >>> [(e.change, e.status, e.resolved_at) for e in events]
    [('resolved', 'resolved', 60.0)]
    """

    def __init__(
        self,
        detector: str,
        group_by: Sequence[str],
        group_window: float,
        refresh_interval: float,
        links: Links | None = None,
        correlate_below: float = 0.01,
        max_correlated: int = 5,
        late_after: float = 300.0,
    ) -> None:
        if group_window < 0 or refresh_interval <= 0:
            raise ValueError(
                f"group_window must not be negative and refresh_interval must be positive, "
                f"got {group_window} and {refresh_interval}"
            )
        self.detector = detector
        self.group_by = list(group_by)
        self.group_window = group_window
        self.refresh_interval = refresh_interval
        self.links = links
        self.correlate_below = correlate_below
        self.max_correlated = max_correlated
        self.late_after = late_after
        self._incidents: dict[str, _Incident] = {}
        #: Firing member key -> its incident's id.
        self._firing: dict[str, str] = {}
        #: Ids of restored incidents none of whose series has been observed since.
        self._unconfirmed: set[str] = set()

    @property
    def firing_keys(self) -> list[str]:
        """Keys of the series alerting in an open incident."""
        return list(self._firing)

    def firing_members(self, incident_id: str) -> list[str]:
        """Keys of the series still alerting in this incident."""
        return [key for key, owner in self._firing.items() if owner == incident_id]

    @property
    def open_incidents(self) -> list[str]:
        """Ids of the incidents not yet resolved, oldest first."""
        return sorted(self._incidents, key=lambda i: (self._incidents[i].opened_at, i))

    @property
    def unconfirmed(self) -> list[str]:
        """Ids of restored incidents not confirmed since: none of their series was observed."""
        return sorted(self._unconfirmed)

    def _group(self, labels: Mapping[str, str]) -> tuple[str, ...]:
        return tuple(labels.get(name, "") for name in self.group_by)

    def observe(
        self,
        now: float,
        keys: Sequence[str],
        labels: Mapping[str, Mapping[str, str]],
        t: np.ndarray,
        x: np.ndarray,
        scored: ScoredBatch,
        model: str,
    ) -> list[AlertEvent]:
        """Take one engine batch (aligned ``keys``, ``t``, ``x``, ``scored``); return the events due.

        ``labels`` maps each key to its label set; ``now`` is the time the
        events are stamped with, refreshes are scheduled by and lateness is
        measured from.  A key may appear several times, its points in time
        order: the batch is taken in time order, in rounds that hold each key
        at most once.
        """
        if len(set(keys)) == len(keys):
            return self._observe_round(now, keys, labels, t, x, scored, model)
        events = []
        for round_ in _rounds(keys, t):
            part = scored.take(round_)
            chosen = round_.tolist()
            events += self._observe_round(
                now, [keys[i] for i in chosen], labels, t[round_], x[round_], part, model
            )
        return events

    def _observe_round(
        self,
        now: float,
        keys: Sequence[str],
        labels: Mapping[str, Mapping[str, str]],
        t: np.ndarray,
        x: np.ndarray,
        scored: ScoredBatch,
        model: str,
    ) -> list[AlertEvent]:
        changes: dict[str, Change] = {}
        arrivals = []
        if self._unconfirmed:
            self._unconfirmed -= {self._firing[key] for key in keys if key in self._firing}
        for i in np.nonzero(scored.alert & scored.decided)[0].tolist():
            owner = self._firing.get(keys[i])
            if owner is None:
                arrivals.append(i)
            else:
                self._refine(self._incidents[owner].members[keys[i]], scored, t, x, i)
        if self._firing:
            position = dict(zip(keys, range(len(keys)), strict=True))
            for key in list(self._firing):
                row = position.get(key)
                if row is not None and scored.decided[row] and not scored.alert[row]:
                    reason = ""
                    if scored.accepted[row]:
                        began = self._incidents[self._firing[key]].members[key].finding.started_at
                        reason = f"accepted as the new normal after {format_duration(float(t[row]) - began)}"
                    self._resolve(key, float(t[row]), reason)
        arrivals.sort(key=lambda i: (self._group(labels[keys[i]]), _onset(scored, t, i), keys[i]))
        for i in arrivals:
            key = keys[i]
            onset = _onset(scored, t, i)
            group = self._group(labels[key])
            incident = self._joinable(group, onset)
            if incident is None:
                incident = self._open(group, onset)
                changes[incident.incident_id] = "opened"
            else:
                changes.setdefault(incident.incident_id, "updated")
            incident.last_arrival = max(incident.last_arrival, onset)
            if changes[incident.incident_id] == "opened" and now - onset > self.late_after:
                incident.late_by = now - onset
            incident.members[key] = _Member(self._finding(key, labels[key], scored, t, x, i, model))
            self._firing[key] = incident.incident_id
            self._unconfirmed.discard(incident.incident_id)
        if changes:
            unusual: dict[tuple[str, ...], list[int]] = {}
            quiet = ~scored.alert & scored.decided & (scored.p_value <= self.correlate_below)
            for i in np.nonzero(quiet)[0].tolist():
                unusual.setdefault(self._group(labels[keys[i]]), []).append(i)
            for opened_or_updated in changes:
                incident = self._incidents[opened_or_updated]
                self._correlate(incident, keys, unusual.get(incident.group, []), scored)
        return self._emit(now, changes)

    def forget(
        self, keys: Sequence[str], now: float, last_seen: Mapping[str, float] | None = None
    ) -> list[AlertEvent]:
        """Series that are gone (expired, dropped): their alerts resolve when their data ended.

        ``last_seen`` maps a key to its last sample's time, the resolution time
        (the data's, so replicas agree); a key without one resolves at ``now``.
        A member of an unconfirmed incident leaves it silently (see :meth:`withdraw`).
        """
        last_seen = last_seen or {}
        self.withdraw([key for key in keys if self._firing.get(key) in self._unconfirmed])
        for key in keys:
            at = last_seen.get(key, now)
            self._resolve(key, at if math.isfinite(at) else now, "the series stopped reporting")
        return self._emit(now, {})

    def withdraw(self, keys: Iterable[str]) -> None:
        """Drop these series from the unconfirmed incidents they alert in, without an event.

        For a replica that restarted: a restored alert its series no longer
        shows (or a series that never came back) is not its to resolve; another
        replica that kept watching did, or still sees it.  An unconfirmed
        incident left with no firing member ends silently.  Members of
        confirmed incidents are left alone.

        >>> finding = SeriesFinding("a", {}, 9.0, 1.0, 0.0, 2.0, 1e-6, "high", 0.0, "ewma", False)
        >>> saved = _Incident("i1", (), {}, 0.0, 0.0, members={"a": _Member(finding)})
        >>> tracker = IncidentTracker("cpu", [], 120.0, 60.0)
        >>> tracker.load_state_dict({"incidents": [saved.to_dict()]})
        >>> tracker.unconfirmed, tracker.firing_keys
        (['i1'], ['a'])
        >>> tracker.withdraw(["a"])
        >>> tracker.open_incidents, tracker.unconfirmed
        ([], [])
        """
        for key in keys:
            owner = self._firing.get(key)
            if owner is None or owner not in self._unconfirmed:
                continue
            del self._firing[key]
            incident = self._incidents[owner]
            del incident.members[key]
            if not incident.firing():
                del self._incidents[owner]
                self._unconfirmed.discard(owner)

    def continue_sequences(self, used: Mapping[str, int]) -> None:
        """Number each open incident's next event after ``used[incident_id]``, if that is higher.

        A checkpoint can be older than the last events sent (the outbox keeps
        them): a restored incident must not reuse their sequence numbers.
        """
        for incident in self._incidents.values():
            incident.sequence = max(incident.sequence, used.get(incident.incident_id, 0))

    def resolve(self, resolved: Mapping[str, float], reason: str, now: float) -> list[AlertEvent]:
        """Resolve these series' alerts (key -> the data's time of the resolution) for ``reason``.

        For resolutions decided outside a batch, such as on-call accepting a
        shift as the new normal; returns the events due.
        """
        for key, at in resolved.items():
            self._resolve(key, at, reason)
        return self._emit(now, {})

    def _resolve(self, key: str, at: float, reason: str = "") -> None:
        owner = self._firing.pop(key, None)
        if owner is not None:
            incident = self._incidents[owner]
            incident.members[key].firing = False
            if incident.resolved_at is None or at >= incident.resolved_at:
                incident.resolved_at = at
                incident.resolution = reason

    def _open(self, group: tuple[str, ...], onset: float) -> _Incident:
        labels = {name: value for name, value in zip(self.group_by, group, strict=True) if value}
        incident = _Incident(incident_id(self.detector, labels, onset), group, labels, onset, onset)
        self._incidents[incident.incident_id] = incident
        return incident

    def _joinable(self, group: tuple[str, ...], onset: float) -> _Incident | None:
        """The open incident of this group that an alert opening at ``onset`` joins, if any."""
        # Within the window of the incident's span, so an onset equal to its opening
        # time (same id) always joins it, however late it is reported.
        # And not one that had ended by then (resolved earlier in the same batch): what the
        # incidents are must not depend on how the data was cut into requests.
        candidates = [
            incident
            for incident in self._incidents.values()
            if incident.group == group
            and incident.opened_at - self.group_window <= onset <= incident.last_arrival + self.group_window
            and (incident.firing() or incident.resolved_at is None or onset < incident.resolved_at)
        ]
        return max(candidates, key=lambda incident: incident.last_arrival, default=None)

    @staticmethod
    def _finding(
        key: str,
        labels: Mapping[str, str],
        scored: ScoredBatch,
        t: np.ndarray,
        x: np.ndarray,
        i: int,
        model: str,
    ) -> SeriesFinding:
        return SeriesFinding(
            key=key,
            labels=dict(labels),
            observed=float(x[i]),
            expected=float(scored.expected[i]),
            lower=float(scored.lower[i]),
            upper=float(scored.upper[i]),
            p_value=float(scored.p_value[i]),
            direction="low" if scored.alert_sign[i] < 0 else "high",
            started_at=float(scored.since[i]),
            model=model,
            warming=bool(scored.warming[i]),
            interval=float(scored.interval[i]),
            **_pattern(scored, t, i),
        )

    @staticmethod
    def _refine(member: _Member, scored: ScoredBatch, t: np.ndarray, x: np.ndarray, i: int) -> None:
        """Keep the member's most extreme point so far as its finding."""
        p = float(scored.p_value[i])
        if p < member.finding.p_value:
            member.finding = dataclasses.replace(
                member.finding,
                observed=float(x[i]),
                expected=float(scored.expected[i]),
                lower=float(scored.lower[i]),
                upper=float(scored.upper[i]),
                p_value=p,
                direction="low" if scored.alert_sign[i] < 0 else "high",
                warming=bool(scored.warming[i]),
                interval=float(scored.interval[i]),
                **_pattern(scored, t, i),
            )

    def _correlate(
        self, incident: _Incident, keys: Sequence[str], unusual: list[int], scored: ScoredBatch
    ) -> None:
        """Remember the group's unusual but quiet series of this batch, those moving the same way first."""
        direction = 1 if self._ranked(incident)[0].direction == "high" else -1
        for i in unusual:
            key = keys[i]
            if key not in incident.members:
                rank = (0 if np.sign(scored.deviation[i]) == direction else 1, float(scored.p_value[i]))
                incident.correlated[key] = min(rank, incident.correlated.get(key, rank))
        best = sorted(incident.correlated.items(), key=lambda item: (item[1], item[0]))
        incident.correlated = dict(best[: self.max_correlated])

    @staticmethod
    def _ranked(incident: _Incident) -> tuple[SeriesFinding, ...]:
        findings = (member.finding for member in incident.members.values())
        return tuple(sorted(findings, key=lambda f: (f.p_value, f.key)))

    def _emit(self, now: float, changes: Mapping[str, Change]) -> list[AlertEvent]:
        events = []
        for key in self.open_incidents:
            incident = self._incidents[key]
            change: Change | None
            if not incident.firing():
                change = "resolved"
                del self._incidents[key]
            elif key in changes:
                change = changes[key]
            elif now - incident.last_sent >= self.refresh_interval and key not in self._unconfirmed:
                change = "refreshed"
            else:
                change = None
            if change is not None:
                events.append(self._event(incident, change, now))
        return events

    def _event(self, incident: _Incident, change: Change, now: float) -> AlertEvent:
        incident.sequence += 1
        incident.last_sent = now
        findings = self._ranked(incident)
        event = AlertEvent(
            incident_id=incident.incident_id,
            status="resolved" if change == "resolved" else "firing",
            change=change,
            detector=self.detector,
            group_labels=dict(incident.group_labels),
            opened_at=incident.opened_at,
            resolved_at=incident.resolved_at if change == "resolved" else None,
            resolution=incident.resolution if change == "resolved" else "",
            late_by=incident.late_by,
            updated_at=now,
            sequence=incident.sequence,
            findings=findings,
            summary="",
            description="",
            links=self.links(findings) if self.links is not None else {},
            correlated=tuple(incident.correlated),
        )
        return dataclasses.replace(event, summary=summarize(event), description=describe(event))

    def state_dict(self) -> dict[str, Any]:
        """The open incidents as JSON-ready data.

        >>> tracker = IncidentTracker("cpu", ["job"], 120.0, 60.0)
        >>> copy = IncidentTracker("cpu", ["job"], 120.0, 60.0)
        >>> copy.load_state_dict(json.loads(json.dumps(tracker.state_dict())))
        >>> copy.open_incidents
        []
        """
        return {"incidents": [incident.to_dict() for incident in self._incidents.values()]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; every incident is unconfirmed until one of its series is observed."""
        incidents = [_Incident.from_dict(data) for data in state["incidents"]]
        self._incidents = {incident.incident_id: incident for incident in incidents}
        self._firing = {
            key: incident.incident_id
            for incident in incidents
            for key, member in incident.members.items()
            if member.firing
        }
        self._unconfirmed = set(self._incidents)


def _rounds(keys: Sequence[str], t: np.ndarray) -> list[np.ndarray]:
    """Positions in time order, cut into consecutive rounds in which no key repeats.

    >>> [r.tolist() for r in _rounds(["a", "b", "a", "a"], np.array([0.0, 5.0, 1.0, 9.0]))]
    [[0], [2, 1], [3]]
    """
    order = np.argsort(t, kind="stable").tolist()
    rounds: list[list[int]] = [[]]
    taken: set[str] = set()
    for i in order:
        if keys[i] in taken:
            rounds.append([])
            taken.clear()
        rounds[-1].append(i)
        taken.add(keys[i])
    return [np.array(r, dtype=np.int64) for r in rounds if r]


def _pattern(scored: ScoredBatch, t: np.ndarray, i: int) -> dict[str, Any]:
    """The finding's pattern fields from point ``i`` (what its p-value is about)."""
    kind = int(scored.pattern[i])
    return {
        "pattern": PATTERN_KINDS[kind],
        "pattern_seen": float(np.nan_to_num(scored.pattern_seen[i])),
        "pattern_usual": float(np.nan_to_num(scored.pattern_usual[i])),
        "pattern_at": float(t[i]) if kind else 0.0,
    }


def _onset(scored: ScoredBatch, t: np.ndarray, i: int) -> float:
    """When the series' alert opened: the policy's record, else this point's time."""
    since = float(scored.since[i])
    return since if math.isfinite(since) else float(t[i])

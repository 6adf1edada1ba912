"""Live detection: samples from Prometheus (pulled or remote-written) through each detector's engine.

One :class:`DetectorRuntime` per configured detector holds its engine, the
labels of its series, their latest results and the onsets of the alerts it
opened (:class:`~service.alert_rate.RecentOnsets`: its realized alert rate).
Everything that mutates an engine runs on one thread (the service's event
loop), so no locks are needed; only network and disk I/O leave that thread.

History is replayed through the same engine with alerts quieted afterwards:
a new pull series is warm-started from ``lookback`` of its own history, and
after a restart the gap since the last evaluation is caught up before going
live, so nothing in between is missed.

A series whose state this process cannot vouch for yet (new to it, or
restored from a checkpoint that missed data) is scored but quiet: its points
reach no incident until it is warm again (:mod:`service.speaking`), so a
replica that just started neither opens nor resolves what its partner sees.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from detector.alerts import AlertEvent
from detector.config import build_engine, build_tracker
from detector.engine import ScoredBatch
from detector.incidents import Links, transition_points
from detector.silences import SilenceSet
from models.base import ArrayState, FieldSpecs
from service.alert_rate import RecentOnsets
from service.history import RecentHistory
from service.remote_write import RowCache
from service.series_index import SeriesIds, SeriesLabels, series_id
from service.settings import DetectorSpec
from service.speaking import SpeakingGate
from service.store import Checkpoint

log = logging.getLogger(__name__)


class LatestResults(ArrayState):
    """Each series' most recent sample and verdict, one row per engine row."""

    fields: ClassVar[FieldSpecs] = {
        "t": (np.float64, (), np.nan),
        "value": (np.float64, (), np.nan),
        "score": (np.float64, (), np.nan),
        "p_value": (np.float64, (), np.nan),
        "expected": (np.float64, (), np.nan),
        "lower": (np.float64, (), np.nan),
        "upper": (np.float64, (), np.nan),
        "warming": (np.bool_, (), True),
        "alert": (np.bool_, (), False),
        "seen": (np.float64, (), np.nan),
        "ended": (np.bool_, (), False),
    }


@dataclass(frozen=True)
class SeriesState:
    """One series as the API shows it."""

    detector: str
    id: str
    key: str
    labels: dict[str, str]
    t: float
    value: float
    anomaly_score: float
    p_value: float
    expected: float
    lower: float
    upper: float
    warming: bool
    alert: bool
    ended: bool
    last_seen: float
    #: False while the series is quiet: scored, but opening and resolving no alert (see ``quiet_reason``).
    speaking: bool = True
    quiet_reason: str = ""


def last_positions(ids: np.ndarray) -> np.ndarray:
    """Index of each id's last occurrence in a batch.

    >>> last_positions(np.array([3, 1, 3, 2])).tolist()
    [1, 3, 2]
    """
    reversed_ids = ids[::-1]
    _, first_in_reversed = np.unique(reversed_ids, return_index=True)
    return len(ids) - 1 - first_in_reversed


class DetectorRuntime:
    """A detector's live state: engine, series labels, latest results, pull watermark.

    Examples
    --------
    >>> spec = DetectorSpec(name="cpu", query="up")
    >>> runtime = DetectorRuntime(spec, clock=lambda: 1000.0)
    >>> keys = ['up{job="a"}'] * 3
    >>> _ = runtime.ingest(keys, np.array([0.0, 15.0, 30.0]), np.array([1.0, 1.0, 1.0]))
    >>> state = runtime.series_state('up{job="a"}')
    >>> state.value, state.warming, state.labels
    (1.0, True, {'__name__': 'up', 'job': 'a'})
    """

    def __init__(
        self,
        spec: DetectorSpec,
        clock: Callable[[], float],
        links: Links | None = None,
        history_points: int = 240,
        history_series: int | None = None,
        checkpoint_interval: float = 60.0,
    ) -> None:
        self.spec = spec
        self.clock = clock
        self.engine = build_engine(spec.engine_config())
        self.latest = LatestResults()
        #: Which series speak (send alert events) and why the others are quiet.
        self.gate = SpeakingGate(checkpoint_interval, spec.alerting.resolve_after)
        #: Plot history of up to ``history_series`` series (None: all); see :mod:`service.history`.
        self.history = RecentHistory(history_points, history_series)
        #: Alert onsets of the last week of data: the realized rate beside the budget.
        self.onsets = RecentOnsets()
        self.tracker = build_tracker(spec, spec.name, links)
        #: Labels and URL ids of the series, read from the engine's series table (service/series_index.py).
        self.labels = SeriesLabels(lambda: self.engine.series)
        self.ids = SeriesIds(spec.name, lambda: self.engine.series)
        self._accepts: dict[str, bool] = {}
        #: Engine rows of remote-written series, kept in step with the engine's series table.
        self.rows = RowCache()
        #: Called with (runtime, rows, t, scored) for every live scored batch (outputs.remote_write).
        self.outputs: list[Callable[[DetectorRuntime, np.ndarray, np.ndarray, ScoredBatch], None]] = []
        #: Prometheus time of the newest evaluation that was scored (pull detectors).
        self.last_eval: float | None = None
        self.restored = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def model_name(self) -> str:
        return self.spec.model

    def accepts(self, key: str, labels: dict[str, str]) -> bool:
        """Whether a remote-written series belongs here (cached per series)."""
        found = self._accepts.get(key)
        if found is None:
            if len(self._accepts) > 100_000:  # the row cache remembers the answer too
                self._accepts.clear()
            found = self._accepts[key] = self.spec.accepts(labels)
        return found

    def known(self, key: str) -> bool:
        return key in self.engine.series

    def register(self, keys: list[str]) -> np.ndarray:
        """Engine rows of these series, creating the state of new ones."""
        ids = self.engine.register(keys)
        self.latest.resize(len(self.engine.series))
        self.gate.resize(len(self.engine.series))
        new = self.engine.series.new_rows
        if new:
            self.ids.assign(new)
            self.latest.reset(np.array(new))
            self.gate.reset(np.array(new))
            self.history.reset(np.array(new))
        return ids

    def ingest(
        self,
        keys: list[str],
        t: np.ndarray,
        x: np.ndarray,
        live: bool = True,
        rules: SilenceSet | None = None,
    ) -> list[AlertEvent]:
        """Score samples (any order of series, each series in time order); returns alert events.

        ``rules``: silenced points do not alert; points in a maintenance window
        are not learned either.  ``live=False`` replays history: the models
        learn, alert state is cleared afterwards (history is not news).
        """
        return self.ingest_rows(self.register(keys), t, x, live, rules)

    def ingest_rows(
        self,
        ids: np.ndarray,
        t: np.ndarray,
        x: np.ndarray,
        live: bool = True,
        rules: SilenceSet | None = None,
    ) -> list[AlertEvent]:
        """:meth:`ingest` for series already registered, by engine row."""
        keys = self.engine.series.keys
        learn = silenced = None
        if rules is not None and rules.rules:
            rows, each = np.unique(ids, return_inverse=True)
            per_row = [self.labels[keys[row]] for row in rows.tolist()]
            labels = [per_row[i] for i in each.tolist()]
            silenced = rules.silenced(labels, t)
            learn = ~rules.maintenance(labels, t)
        scored = self.engine.process(ids, t, x, learn=learn, silenced=silenced)
        if not live:
            self.engine.quiet(np.unique(ids))
            scored = replace(scored, alert=np.zeros_like(scored.alert), onset=np.zeros_like(scored.onset))
        self._remember(ids, t, x, scored)
        if not live or not len(ids):
            return []
        for output in self.outputs:
            output(self, ids, t, scored)
        self.onsets.observe(t, scored.onset)
        admitted = self.gate.admit(ids, t, scored.warming, scored.interval)
        # A stale restored alert its series no longer shows is not this replica's to resolve.
        gone = admitted.rejoined[~scored.alert[admitted.rejoined]]
        if len(gone):
            self.tracker.withdraw([keys[row] for row in ids[gone].tolist()])
        # Every opening and resolution in the batch, in time order; the points between tell nothing.
        firing = np.zeros(len(keys), dtype=bool)
        firing[[row for row in map(self.engine.series.get, self.tracker.firing_keys) if row is not None]] = (
            True
        )
        if admitted.speaking.all():
            chosen = transition_points(ids, scored, firing)
        else:
            heard = np.nonzero(admitted.speaking)[0]
            chosen = heard[transition_points(ids[heard], scored.take(heard), firing)]
        part = scored.take(chosen)
        return self.tracker.observe(
            self.clock(),
            [keys[row] for row in ids[chosen].tolist()],
            self.labels,
            t[chosen],
            x[chosen],
            part,
            self.model_name,
        )

    def _remember(self, ids: np.ndarray, t: np.ndarray, x: np.ndarray, scored: ScoredBatch) -> None:
        self.history.record(ids, t, x, scored)
        valid = np.isfinite(x)
        if not valid.any():
            return
        where = np.nonzero(valid)[0]
        last = where[last_positions(ids[where])]
        rows = ids[last]
        arrays = self.latest.arrays
        columns = {
            "t": t,
            "value": x,
            "score": scored.anomaly_score,
            "p_value": scored.p_value,
            "expected": scored.expected,
            "lower": scored.lower,
            "upper": scored.upper,
            "warming": scored.warming,
            "alert": scored.alert,
        }
        for name, column in columns.items():
            arrays[name][rows] = column[last]
        arrays["seen"][rows] = self.clock()
        arrays["ended"][rows] = False

    def accept_new_normal(self, incident_id: str, reason: str) -> list[AlertEvent]:
        """Adopt the current level of the incident's alerting series and resolve it for ``reason``.

        Returns the events.  The resolution is stamped with each series' latest
        sample time (the data's, not the clock's).
        """
        keys = self.tracker.firing_members(incident_id)
        known = [(key, row) for key in keys if (row := self.engine.series.get(key)) is not None]
        if not known:
            return []
        rows = np.array([row for _, row in known], dtype=np.int64)
        at = self.latest.arrays["t"][rows]
        alerting = self.engine.accept_new_normal(rows, at)
        self.latest.arrays["alert"][rows[alerting]] = False
        resolved = {key: float(when) for (key, _), when, was in zip(known, at, alerting, strict=True) if was}
        return self.tracker.resolve(resolved, reason, self.clock())

    def end(self, keys: Iterable[str]) -> None:
        """Mark series as ended (Prometheus's stale marker): no value, kept until they expire."""
        rows = [row for row in (self.engine.series.get(key) for key in keys) if row is not None]
        if rows:
            self.latest.arrays["ended"][rows] = True
            self.latest.arrays["alert"][rows] = False

    def expire(self) -> list[AlertEvent]:
        """Forget series not seen for ``expire_after``; their open alerts resolve at their last sample."""
        cutoff = self.clock() - self.spec.expire_after
        seen = self.latest.arrays["seen"]
        active = self.engine.series.active()
        stale = [key for key, row in active.items() if seen[row] < cutoff]
        if not stale:
            return []
        last_t = self.latest.arrays["t"]
        events = self.tracker.forget(stale, self.clock(), {key: float(last_t[active[key]]) for key in stale})
        if stale:
            rows = np.array([active[key] for key in stale])
            self.engine.forget(stale)
            self.rows.forget(rows)
            self.history.reset(rows)
            for key in stale:
                self._accepts.pop(key, None)
        return events

    def series_state(self, key: str) -> SeriesState | None:
        """The latest results of one series, or None if this detector does not track it."""
        row = self.engine.series.get(key)
        if row is None:
            return None
        a = self.latest.arrays
        return SeriesState(
            detector=self.name,
            id=series_id(self.name, key),
            key=key,
            labels=self.labels[key],
            t=float(a["t"][row]),
            value=float(a["value"][row]),
            anomaly_score=float(a["score"][row]),
            p_value=float(a["p_value"][row]),
            expected=float(a["expected"][row]),
            lower=float(a["lower"][row]),
            upper=float(a["upper"][row]),
            warming=bool(a["warming"][row]),
            alert=bool(a["alert"][row]),
            ended=bool(a["ended"][row]),
            last_seen=float(a["seen"][row]),
            speaking=bool(self.gate.arrays["speaking"][row]),
            quiet_reason=self.gate.reason(
                row, bool(a["warming"][row]), float(self.engine.policy.arrays["interval"][row])
            ),
        )

    def all_series(self) -> list[SeriesState]:
        states = (self.series_state(key) for key in self.engine.series.active())
        return [state for state in states if state is not None]

    def warming_count(self) -> int:
        rows = list(self.engine.series.active().values())
        return int(self.latest.arrays["warming"][rows].sum()) if rows else 0

    def quiet_count(self) -> int:
        """Series that send no alert events yet (see :mod:`service.speaking`)."""
        return self.gate.quiet_count(np.fromiter(self.engine.series.active().values(), dtype=np.int64))

    def checkpoint(self) -> Checkpoint:
        arrays = self.engine.state_dict()
        arrays.update({f"latest.{name}": value for name, value in self.latest.state_dict().items()})
        return Checkpoint(
            detector=self.name,
            fingerprint=self.spec.fingerprint(),
            saved_at=self.clock(),
            arrays=arrays,
            extra={
                "last_eval": self.last_eval,
                "incidents": self.tracker.state_dict(),
                "onsets": self.onsets.state_dict(),
            },
        )

    def restore(self, checkpoint: Checkpoint) -> bool:
        """Load a checkpoint; False (and cold state) if the detector's settings changed since."""
        self.rows.clear()
        if checkpoint.fingerprint != self.spec.fingerprint():
            log.warning(
                "detector %s: settings changed since the checkpoint; its series start cold", self.name
            )
            return False
        try:
            self.engine.load_state_dict(checkpoint.arrays)
            self.latest.load_state_dict(
                {k[len("latest.") :]: v for k, v in checkpoint.arrays.items() if k.startswith("latest.")}
            )
        except (KeyError, ValueError) as error:
            log.warning("detector %s: checkpoint unusable (%s); its series start cold", self.name, error)
            self.engine = build_engine(self.spec.engine_config())
            self.latest = LatestResults()
            return False
        self.ids.rebuild()
        rows = np.fromiter(self.engine.series.active().values(), dtype=np.int64)
        self.gate.resize(len(self.engine.series))
        self.gate.restore(rows, self.latest.arrays["t"][rows])
        self.last_eval = checkpoint.extra.get("last_eval")
        if "incidents" in checkpoint.extra:
            self.tracker.load_state_dict(checkpoint.extra["incidents"])
        if "onsets" in checkpoint.extra:  # checkpoints from before the realized rate have none
            self.onsets.load_state_dict(checkpoint.extra["onsets"])
        self.restored = True
        return True

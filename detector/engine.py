"""The streaming engine: samples in, calibrated scores and alert state out.

One direction of flow, for a whole batch at once::

    series table -> repeat filter (a sample seen before is not new evidence)
                 -> model.assess -> whitening (the deviation's own autocorrelation)
                 -> calibration -> the model's pattern, if rarer -> alert policy
                 -> model.learn (weighted: don't learn from what you flag)
                 -> calibration.learn -> band (clipped to the series' domain)
                 -> model.adopt (a shift the policy accepted as the new normal)

Backtest and live service call the same :meth:`Engine.process`; only where the
samples come from and where the results go differ.  The live service adds two
masks the backtest does not need: points inside a maintenance window or a
confirmed incident are not learned as normal (``learn=False``), and silenced
points are scored but never open or keep an alert (``silenced=True``).

A model may also report a *pattern* beside its point deviation
(:class:`models.base.Pattern`: a flat run, a missing daily burst, spikes or a
spread unusual for the series).  Its tail is already calibrated against the
series' own past, and a pattern persists by nature, so it is neither whitened
(the whitening would forecast it away) nor recalibrated: the alert policy
takes its tail as a level of evidence (see :mod:`detector.policy`), the
point's ``p_value`` is the smaller of the point's calibrated one and the
pattern's, and its deviation, sign and ``pattern`` fields are those of
whichever was rarer (the ``anomaly_score`` stays the point's own).  The
calibration and whitening keep learning the point deviation only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from numba import njit
from scipy.special import ndtr

from detector.calibration import Direction, TailCalibrator
from detector.domain import ValueDomain
from detector.policy import HIGH, LOW, AlertPolicy
from detector.repeats import RepeatFilter
from detector.whitening import ResidualWhitener
from models.base import Assessment, OnlineModel


@dataclass(frozen=True)
class ScoredBatch:
    """Per-point results of :meth:`Engine.process`, aligned with its input.

    ``alert`` is whether the point's series is alerting after it, ``onset``
    whether this point opened the alert, ``accepted`` whether it resolved the
    alert by accepting a persistent shift as the new normal.  ``decided`` is false where the policy
    made no decision (a gap, a repeated sample, or a silenced point): there the
    alert state is as it was, and a silenced point reports no alert.  A
    repeated sample (see :mod:`detector.repeats`) is scored for display but
    neither learned nor counted.  For alerting series,
    ``since`` is when the alert opened, ``lowest_p`` its most extreme p-value
    so far and ``alert_sign`` that point's side (+1 high, -1 low); NaN, NaN and
    0 otherwise.  ``interval`` is the series' estimated sampling interval in
    seconds (0 until known), which turns a p-value into a recurrence time.
    ``anomaly_score`` is ``1 - p`` of the point's own calibrated deviation;
    ``p_value`` is the smaller of that p and the model's pattern tail (what an
    alert on the point is about), and ``pattern`` says which it is (an index
    into :data:`models.base.PATTERN_KINDS`; 0: the point's own deviation),
    with ``pattern_seen`` and ``pattern_usual`` as in
    :class:`models.base.Pattern`.  (A pattern's tail stays small for as long
    as the pattern lasts; the score is the point's, so that a threshold on
    it keeps meaning "a point this unusual".)
    """

    anomaly_score: np.ndarray
    p_value: np.ndarray
    deviation: np.ndarray
    expected: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    warming: np.ndarray
    alert: np.ndarray
    onset: np.ndarray
    decided: np.ndarray
    accepted: np.ndarray
    since: np.ndarray
    lowest_p: np.ndarray
    alert_sign: np.ndarray
    interval: np.ndarray
    pattern: np.ndarray = None  # type: ignore[assignment]
    pattern_seen: np.ndarray = None  # type: ignore[assignment]
    pattern_usual: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        # Built without the pattern fields (a model without patterns, a test): nothing to say.
        n = len(self.p_value)
        if self.pattern is None:
            object.__setattr__(self, "pattern", np.zeros(n, dtype=np.int8))
        for name in ("pattern_seen", "pattern_usual"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.full(n, np.nan))

    def take(self, index: np.ndarray) -> ScoredBatch:
        """These points only (an index or a mask into the batch)."""
        return ScoredBatch(**{name: getattr(self, name)[index] for name in ScoredBatch.__dataclass_fields__})


def series_seed(key: str) -> int:
    """A stable 64-bit seed for a series key (the same across restarts)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


@njit(cache=True)
def occurrence_rank(ids: np.ndarray) -> np.ndarray:
    """For each entry, how many earlier entries of the batch share its id.

    >>> occurrence_rank(np.array([4, 7, 4, 4, 7])).tolist()
    [0, 0, 1, 2, 1]
    """
    seen = np.zeros(ids.max() + 1 if len(ids) else 0, dtype=np.int64)
    rank = np.empty(len(ids), dtype=np.int64)
    for i in range(len(ids)):
        rank[i] = seen[ids[i]]
        seen[ids[i]] += 1
    return rank


def _pack_keys(keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Keys as their UTF-8 bytes end to end, and where each ends.

    Not a numpy string array: its width is the longest key's, for every key,
    so one series with a long label value would make the checkpoint (and the
    memory to build it) that long times the number of series.

    >>> blob, ends = _pack_keys(["up{}", "", 'é{a="b"}'])
    >>> ends.tolist(), _unpack_keys(blob, ends)
    ([4, 4, 13], ['up{}', '', 'é{a="b"}'])
    """
    encoded = [key.encode("utf-8", "surrogatepass") for key in keys]
    ends = np.cumsum([len(key) for key in encoded], dtype=np.int64)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), ends


def _unpack_keys(keys: np.ndarray, ends: np.ndarray | None) -> list[str]:
    """Inverse of :func:`_pack_keys`; without ``ends``, a string array (checkpoints before it)."""
    if ends is None:
        return [str(key) for key in keys]
    blob = np.asarray(keys, dtype=np.uint8).tobytes()
    bounds = np.asarray(ends, dtype=np.int64).tolist()
    return [
        blob[start:end].decode("utf-8", "surrogatepass")
        for start, end in zip([0, *bounds[:-1]], bounds, strict=True)
    ]


class SeriesTable:
    """Maps series keys (sorted label sets, file paths …) to dense row ids.

    A released key's row is reused by the next new key, so a service whose
    series come and go does not grow without bound.  Free rows have key ``""``.

    >>> table = SeriesTable()
    >>> table.ids(["b", "a", "b"]).tolist()
    [0, 1, 0]
    >>> table.keys
    ['b', 'a']
    >>> table.release(["b"]).tolist(), table.ids(["c"]).tolist(), table.keys
    ([0], [0], ['c', 'a'])
    """

    def __init__(self, keys: list[str] | None = None) -> None:
        self.keys: list[str] = list(keys or [])
        self._ids: dict[str, int] = {key: row for row, key in enumerate(self.keys) if key}
        self._free: list[int] = [row for row, key in enumerate(self.keys) if not key][::-1]
        #: Rows handed to keys that had none before, since the last :meth:`take_new`.
        self.new_rows: list[int] = []

    def __len__(self) -> int:
        """Rows in use or free: the size per-series state must have."""
        return len(self.keys)

    def __contains__(self, key: str) -> bool:
        return key in self._ids

    def get(self, key: str) -> int | None:
        """The row of ``key``, or None if it has none."""
        return self._ids.get(key)

    def active(self) -> dict[str, int]:
        """Every key with a row, and its row."""
        return dict(self._ids)

    def ids(self, keys: list[str]) -> np.ndarray:
        out = np.empty(len(keys), dtype=np.int64)
        for position, key in enumerate(keys):
            found = self._ids.get(key)
            if found is None:
                if not key:
                    raise ValueError("a series key must not be empty")
                found = self._free.pop() if self._free else len(self.keys)
                if found == len(self.keys):
                    self.keys.append(key)
                else:
                    self.keys[found] = key
                self._ids[key] = found
                self.new_rows.append(found)
            out[position] = found
        return out

    def release(self, keys: list[str]) -> np.ndarray:
        """Free the rows of these keys (unknown keys are ignored); returns the rows."""
        rows = [self._ids.pop(key) for key in keys if key in self._ids]
        for row in rows:
            self.keys[row] = ""
        self._free.extend(sorted(rows, reverse=True))
        return np.array(rows, dtype=np.int64)


class Engine:
    """Scores batches of samples for many series with one model, calibrator and policy.

    Parameters
    ----------
    model
        Any :class:`models.base.OnlineModel`.
    calibrator
        Turns deviations into tail probabilities.
    policy
        Decides when a series is alerting.
    protect_below
        Points with a p-value below this teach the model proportionally less
        (weight ``p / protect_below``): the baseline is not learned from what
        is flagged.  Points that together build up to an alert teach it less
        too (fully up to half the series' alert level, nothing from it on),
        and while an alert is open the calibration learns nothing, so an
        outage keeps looking like one for as long as it lasts.

    Examples
    --------
    >>> import numpy as np
    >>> from models import RobustEWMA
    >>> engine = Engine(RobustEWMA(), TailCalibrator(warmup=50), AlertPolicy())
    >>> rng = np.random.default_rng(1)
    >>> ids = engine.register(["cpu{host='a'}"])
    >>> for step in range(500):
    ...     out = engine.process(ids, np.array([60.0 * step]), rng.normal(50, 2, 1))
    >>> out = engine.process(ids, np.array([30000.0]), np.array([90.0]))
    >>> bool(out.anomaly_score[0] > 0.99)
    True
    """

    def __init__(
        self,
        model: OnlineModel,
        calibrator: TailCalibrator,
        policy: AlertPolicy,
        protect_below: float = 1e-3,
    ) -> None:
        self.model = model
        self.calibrator = calibrator
        self.policy = policy
        self.protect_below = protect_below
        self.repeats = RepeatFilter()
        self.whitener = ResidualWhitener()
        self.domain = ValueDomain()
        self.series = SeriesTable()
        self.integer_valued = np.zeros(0, dtype=bool)

    def register(self, keys: list[str]) -> np.ndarray:
        """Row ids for these series keys, creating cold state for new ones."""
        before = len(self.series)
        self.series.new_rows.clear()
        ids = self.series.ids(keys)
        after = len(self.series)
        if after > before:
            for component in self._components().values():
                component.resize(after)
            grown = np.ones(after, dtype=bool)
            grown[:before] = self.integer_valued[:before]
            self.integer_valued = grown
        if self.series.new_rows:
            new = np.array(self.series.new_rows, dtype=np.int64)
            reused = new[new < before]
            if len(reused):
                self._reset(reused)
            seeds = np.array([series_seed(self.series.keys[i]) for i in new], dtype=np.uint64)
            self.calibrator.set_seeds(new, seeds)
            self.policy.set_series_count(len(self.series.active()))
        return ids

    def _reset(self, ids: np.ndarray) -> None:
        for component in self._components().values():
            component.reset(ids)
        self.integer_valued[ids] = True

    def forget(self, keys: list[str]) -> None:
        """Drop these series (expired, or their config changed): their rows start cold when reused."""
        rows = self.series.release(keys)
        if len(rows):
            self._reset(rows)
            self.policy.set_series_count(len(self.series.active()))

    def quiet(self, ids: np.ndarray) -> None:
        """Clear alert state (not learning) of these series, e.g. after replaying their history."""
        self.policy.quiet(np.asarray(ids, dtype=np.int64))

    def mark_false_positive(self, ids: np.ndarray, direction: Direction) -> None:
        """Feedback: these series alerted in ``direction`` on something that was not a problem.

        Each false positive halves the series' budget in that direction (down
        to 1/64 of the configured one), so it needs a rarer deviation that way
        before it alerts again.  The scales are the policy's ``budget_scale``
        state (columns high, low): checkpointed with the engine, shown by the
        API's state.
        """
        self.policy.scale_budget(np.asarray(ids, dtype=np.int64), direction, 0.5)

    def mark_incident(self, ids: np.ndarray, direction: Direction) -> None:
        """Feedback: an alert of these series in ``direction`` was a real incident.

        Doubles the series' budget in that direction back towards the
        configured one (undoing one false positive), and keeps an open alert
        from being accepted as a new normal however long it lasts.  Points
        inside the incident should also be passed to :meth:`process` with
        ``learn=False``, so the incident is not learned as normal.
        """
        rows = np.asarray(ids, dtype=np.int64)
        self.policy.scale_budget(rows, direction, 2.0)
        self.policy.hold(rows)

    def accept_new_normal(self, ids: np.ndarray, at: np.ndarray) -> np.ndarray:
        """Feedback: these series' open alerts are a new normal; adopt their level and resolve them now.

        ``at`` is each series' latest sample time (the resolution's time and
        the start of its cool-down).  Returns which series were alerting (and
        are now resolved).
        """
        rows = np.asarray(ids, dtype=np.int64)
        shift = self.policy.accept(rows, np.asarray(at, dtype=np.float64))
        alerting = ~np.isnan(shift)
        self._adopt(rows[alerting], shift[alerting])
        return alerting

    def _adopt(self, ids: np.ndarray, shift: np.ndarray) -> None:
        """Move these series' baseline by ``shift`` (the series' units): their shift is the new normal."""
        if len(ids):
            self.model.adopt(ids, shift)
            self.whitener.forget_deviations(ids)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The whole engine as named arrays: series keys plus every component's state.

        >>> from models import RobustEWMA
        >>> engine = Engine(RobustEWMA(), TailCalibrator(), AlertPolicy())
        >>> ids = engine.register(["a", "b"])
        >>> _ = engine.process(ids, np.array([0.0, 0.0]), np.array([1.0, 2.0]))
        >>> copy = Engine(RobustEWMA(), TailCalibrator(), AlertPolicy())
        >>> copy.load_state_dict(engine.state_dict())
        >>> copy.series.keys, copy.register(["b"]).tolist()
        (['a', 'b'], [1])
        """
        keys, key_ends = _pack_keys(self.series.keys)
        state = {
            "engine.keys": keys,
            "engine.key_ends": key_ends,
            "engine.integer_valued": self.integer_valued.copy(),
        }
        for prefix, component in self._components().items():
            state.update({f"{prefix}.{name}": value for name, value in component.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore :meth:`state_dict`; raises ValueError if it came from a different setup."""
        for prefix, component in self._components().items():
            start = len(prefix) + 1
            component.load_state_dict({k[start:]: v for k, v in state.items() if k.startswith(prefix + ".")})
        self.series = SeriesTable(_unpack_keys(state["engine.keys"], state.get("engine.key_ends")))
        self.integer_valued = np.asarray(state["engine.integer_valued"], dtype=bool).copy()
        self.policy.set_series_count(len(self.series.active()))

    def _components(
        self,
    ) -> dict[
        str, OnlineModel | TailCalibrator | AlertPolicy | RepeatFilter | ResidualWhitener | ValueDomain
    ]:
        return {
            "model": self.model,
            "calibrator": self.calibrator,
            "policy": self.policy,
            "repeats": self.repeats,
            "whitener": self.whitener,
            "domain": self.domain,
        }

    def _count_dither(self, ids: np.ndarray, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Uniform half-unit noise for series that have only ever been integers.

        Counts (errors per scrape, queue lengths) are discrete: dithering them
        makes their deviations continuous, so a calibrated p-value stays
        uniform on normal data (the randomised probability integral transform).
        """
        integral = self.integer_valued[ids] & (~valid | (x == np.round(x)))
        self.integer_valued[ids] = integral
        return np.where(integral & valid, self.calibrator.noise(ids, stream=2) - 0.5, 0.0)

    def process(
        self,
        ids: np.ndarray,
        t: np.ndarray,
        x: np.ndarray,
        learn: np.ndarray | None = None,
        silenced: np.ndarray | None = None,
    ) -> ScoredBatch:
        """Score a batch; a series may appear several times (taken in order).

        NaN or infinite values are gaps: they are scored 0, teach nothing and
        leave the alert state as it was.  ``learn`` (default all true) false
        marks points that teach neither the model nor the calibration
        (maintenance windows, confirmed incidents); ``silenced`` (default all
        false) marks points that are scored but that the policy does not judge:
        they never open or keep an alert, and leave its state as it was.
        """
        ids = np.asarray(ids, dtype=np.int64)
        t = np.asarray(t, dtype=np.float64)
        x = np.asarray(x, dtype=np.float64)
        learn = np.ones(len(ids), dtype=bool) if learn is None else np.asarray(learn, dtype=bool)
        silenced = np.zeros(len(ids), dtype=bool) if silenced is None else np.asarray(silenced, dtype=bool)
        if not len(ids) == len(t) == len(x) == len(learn) == len(silenced):
            raise ValueError(
                f"ids, t, x, learn and silenced differ in length: "
                f"{len(ids)}, {len(t)}, {len(x)}, {len(learn)}, {len(silenced)}"
            )
        rank = occurrence_rank(ids)
        if len(ids) == 0 or rank.max() == 0:
            return self._process_round(ids, t, x, learn, silenced)
        parts = [np.nonzero(rank == r)[0] for r in range(int(rank.max()) + 1)]
        results = [self._process_round(ids[p], t[p], x[p], learn[p], silenced[p]) for p in parts]
        order = np.concatenate(parts)
        merged = {}
        for name in ScoredBatch.__dataclass_fields__:
            values = np.concatenate([getattr(r, name) for r in results])
            out = np.empty_like(values)
            out[order] = values
            merged[name] = out
        return ScoredBatch(**merged)

    def _process_round(
        self, ids: np.ndarray, t: np.ndarray, x: np.ndarray, learn: np.ndarray, silenced: np.ndarray
    ) -> ScoredBatch:
        valid = np.isfinite(x)
        repeat = ~self.repeats.new(ids, t, x)
        fresh = valid & ~repeat
        self.domain.observe(ids, np.where(fresh, x, np.nan))
        raw_x = np.where(valid, x, 0.0)
        safe_x = raw_x + self._count_dither(ids, raw_x, valid)
        # A model that watches exact repeats (a stuck series) must see them without the dither.
        raw = {"raw": raw_x} if getattr(self.model, "takes_raw", False) else {}
        assessment = self.model.assess(ids, t, safe_x, **raw)
        model_warm = valid & ~assessment.warming
        model_z = np.where(model_warm, assessment.deviation, 0.0)
        innovation, forecast = self.whitener.whiten(ids, model_z)
        z = np.where(model_warm, innovation, 0.0)
        scale = assessment.scale
        expected = assessment.expected + np.where(model_warm, forecast, 0.0) * scale
        p = np.where(model_warm, self.calibrator.p_value(ids, z), 1.0)
        pattern = _pattern_tail(assessment, model_warm)
        p = np.where(valid, p, np.nan)
        decided = fresh & ~silenced
        decision = self.policy.decide(
            ids, t, np.where(decided, p, np.nan), sign=z, observed=x, expected=expected, pattern=pattern
        )
        point_p = p
        p, judged, kind, kind_seen, kind_usual = _described(assessment, pattern, p, z)
        # Don't learn from what is flagged: neither a rare point, nor points that together are
        # building up to an alert (full weight until halfway to the alert level, none from it on).
        trust = np.clip(2.0 * (1.0 - decision.suspicion), 0.0, 1.0)
        # While an alert is open, the series is judged against its behaviour from before the onset.
        alert_open = decision.suspicion >= 1.0
        weight = np.where(model_warm, np.clip(p / self.protect_below, 0.0, 1.0) * trust, 1.0)
        # A shift accepted as the new normal is adopted below, not learned point by point.
        weight = np.where(decision.accepted, 0.0, weight)
        self.model.learn(ids, t, safe_x, np.where(fresh & learn, weight, 0.0), seen=fresh & learn, **raw)
        self.whitener.learn(
            ids,
            np.where(model_warm & fresh, model_z, np.nan),
            np.where(learn, weight, 0.0),
            follow=np.where(alert_open, 0.0, 1.0),
        )
        two_sided = 2.0 if self.calibrator.direction == "both" else 1.0
        upper_z, lower_z = self.calibrator.learn_and_band(
            ids,
            z,
            np.where(model_warm & fresh & learn & ~alert_open & ~decision.accepted, 1.0, 0.0),
            decision.band_p[:, HIGH] / two_sided,
            decision.band_p[:, LOW] / two_sided,
        )
        self._adopt(ids[decision.accepted], decision.shift[decision.accepted])
        # No band until both the model and the calibration have something to say.
        banded = ~assessment.warming & (self.calibrator.effective_count(ids) > 0)
        alert = decision.firing & ~silenced
        floor, ceiling = self.domain.bounds(ids)
        return ScoredBatch(
            anomaly_score=np.where(valid, 1.0 - np.nan_to_num(point_p, nan=1.0), 0.0),
            p_value=p,
            deviation=np.where(model_warm, judged, np.nan),
            expected=np.clip(expected, floor, ceiling),
            lower=np.clip(np.where(banded, expected + lower_z * scale, np.nan), floor, ceiling),
            upper=np.clip(np.where(banded, expected + upper_z * scale, np.nan), floor, ceiling),
            warming=assessment.warming | self.calibrator.warming(ids),
            alert=alert,
            onset=decision.onset,
            decided=decided,
            accepted=decision.accepted,
            since=np.where(alert, decision.since, np.nan),
            lowest_p=np.where(alert, decision.lowest_p, np.nan),
            alert_sign=np.where(alert, decision.alert_sign, 0).astype(np.int8),
            interval=self.policy.arrays["interval"][ids],
            pattern=kind,
            pattern_seen=kind_seen,
            pattern_usual=kind_usual,
        )


def _pattern_tail(assessment: Assessment, warm: np.ndarray) -> np.ndarray:
    """Each point's pattern tail probability, signed by its side (0 where there is none)."""
    pattern = assessment.pattern
    if pattern is None:
        return np.zeros(len(warm))
    deviation = np.where(warm, pattern.deviation, 0.0)
    return np.sign(deviation) * ndtr(-np.abs(deviation))


def _described(
    assessment: Assessment, pattern_tail: np.ndarray, p: np.ndarray, z: np.ndarray
) -> tuple[np.ndarray, ...]:
    """The point's p-value and deviation, or its pattern's where that is rarer, and what they are about.

    Returns p, deviation, pattern kind, and the kind's seen and usual values.
    """
    n = len(p)
    pattern = assessment.pattern
    if pattern is None:
        nothing = np.full(n, np.nan)
        return p, z, np.zeros(n, dtype=np.int8), nothing, nothing
    tail = np.abs(pattern_tail)
    rarer = (pattern_tail != 0) & (tail < p)
    kind = np.where(rarer, pattern.kind, 0).astype(np.int8)
    return (
        np.where(rarer, tail, p),
        np.where(rarer, pattern.deviation, z),
        kind,
        np.where(rarer, pattern.seen, np.nan),
        np.where(rarer, pattern.usual, np.nan),
    )

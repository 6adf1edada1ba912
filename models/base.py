"""The protocol every online univariate model follows, and the array store behind it.

A model keeps one row of state per series in plain numpy arrays and works on a
*batch*: ``ids`` (which rows), ``t`` (Unix seconds) and ``x`` (values), one
entry per series, each series at most once per batch (the engine splits a
batch into such rounds).  Scoring is two calls, so the caller can decide how
much the model may learn from a point after seeing how unusual it was:

>>> import numpy as np
>>> from models import RobustEWMA
>>> model = RobustEWMA(warmup=3)
>>> model.resize(2)
>>> ids = np.array([0, 1])
>>> for step in range(5):
...     t = np.full(2, 60.0 * step)
...     x = np.array([10.0, 200.0]) + step % 2
...     assessment = model.assess(ids, t, x)
...     model.learn(ids, t, x, np.ones(2))
>>> assessment.expected.round(2).tolist()
[10.5, 200.5]

A one-sample path is the same call with arrays of length one; the conformance
tests check that both paths agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

FloatArray = np.ndarray
#: name -> (dtype, trailing shape, initial value) of each per-series array.
FieldSpecs = dict[str, tuple[type, tuple[int, ...], float]]
IdArray = np.ndarray
#: One boolean per point of a batch.
Mask = np.ndarray

#: Smallest scale any model reports, so a perfectly flat series still yields
#: finite deviations (a change on it is then very large, which is right).
SCALE_FLOOR = 1e-9


def scale_floor(level: np.ndarray) -> np.ndarray:
    """The smallest scale a model may report around ``level`` (relative above 1)."""
    return SCALE_FLOOR * np.maximum(1.0, np.abs(level))


#: Multiplying a mean absolute deviation by this gives a standard deviation
#: for Gaussian data (sqrt(pi/2)); it keeps deviations comparable across models.
MEAN_ABS_TO_SIGMA = 1.2533141373155003


#: What a :class:`Pattern` is about; its ``kind`` indexes this tuple ("" for nothing).
PATTERN_KINDS = ("", "flat", "routine", "spikes", "spread")
FLAT, ROUTINE, SPIKES, SPREAD = 1, 2, 3, 4


@dataclass(frozen=True)
class Pattern:
    """What a model saw in the recent *pattern* of each point's series, beside the point itself.

    Some incidents have no extreme point in them: a series that stops
    changing, a burst that should come at this time of day and does not, a
    series twice as noisy or spiking ten times as often around the same mean.
    ``deviation`` is the most unusual such statistic (0 where none is), signed
    (negative: less than usual, as a flat series or a missing burst;
    positive: more, as a noisier or spikier one) and already standardised on
    the standard normal scale: its one-sided tail ``Phi(-|deviation|)`` is
    (an upper bound of) the share of the series' own past points whose
    statistic was at least this extreme.  It is not a forecast error, so the
    engine neither whitens it nor passes it through the point calibration
    (see :mod:`detector.engine`).

    ``kind`` says which statistic (an index into :data:`PATTERN_KINDS`) and
    ``seen`` and ``usual`` its value now and its usual value, for the
    explanation: for ``flat``, seconds unchanged and the longest flat stretch
    in the model's memory (seconds); for ``routine``, the share of the daily
    routine recently missed (1: a burst that did not come at all) and the
    value the routine expected; for ``spikes``, spikes in the recent window and how many
    such a window usually holds; for ``spread``, the recent spread as a
    multiple of the usual one, and the largest multiple ordinarily seen.
    """

    deviation: FloatArray
    kind: np.ndarray
    seen: FloatArray
    usual: FloatArray


@dataclass(frozen=True)
class Assessment:
    """What a model thought of a batch of points before learning from them.

    ``deviation`` is signed and in units of ``scale`` (a z-like number, not a
    probability): calibration turns it into one.  ``warming`` is true for series
    the model has not yet seen enough of to trust its own forecast.  A model
    that also watches patterns (:class:`Pattern`) reports them in ``pattern``;
    None means it does not.
    """

    expected: FloatArray
    scale: FloatArray
    deviation: FloatArray
    warming: np.ndarray
    pattern: Pattern | None = None


@runtime_checkable
class OnlineModel(Protocol):
    """An online model over many series at once.  It never thresholds.

    The engine dithers count-valued series by up to half a unit before a
    model sees them (so their deviations are continuous).  A model that also
    needs each sample exactly as scraped (a stuck series repeats it) sets a
    true ``takes_raw`` attribute: the engine then passes it as ``raw=`` to
    :meth:`assess` and :meth:`learn`, beside the dithered ``x``.
    """

    def resize(self, n_series: int) -> None:
        """Grow the state to hold ``n_series`` rows (new rows start cold)."""

    def assess(self, ids: IdArray, t: FloatArray, x: FloatArray) -> Assessment:
        """Forecast and deviation for each point, without learning from it."""

    def reset(self, ids: IdArray) -> None:
        """Return these series to cold state."""

    def learn(
        self, ids: IdArray, t: FloatArray, x: FloatArray, weight: FloatArray, seen: Mask | None = None
    ) -> None:
        """Update each series with its point, each weighted in [0, 1].

        ``seen`` marks the points that are real new samples to follow
        (default: those with a positive weight).  A point may be seen and
        still teach nothing (weight 0: it is flagged, or inside an open
        alert): a model may then follow it in what it tracks of the present
        (the current run of equal values, a recent window), not in what it
        learns as normal (one exception, argued where it is made:
        :class:`models.routine.DailyRoutine`).  Gaps, repeated samples and
        points inside maintenance windows are not seen.
        """

    def adopt(self, ids: IdArray, shift: FloatArray) -> None:
        """Move these series' baseline by ``shift`` (in the series' units): a new normal.

        Called when a persistent shift is accepted (by the alert policy after
        ``accept_shift_after``, or by on-call): the next forecast is the old
        one plus ``shift``; what the model knows of the series' shape and
        spread stays.
        """

    def state_dict(self) -> dict[str, np.ndarray]:
        """All state as named arrays (no pickle needed to store them)."""

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned."""


class ArrayState:
    """Named per-series arrays that grow together, with a pickle-free round trip.

    Subclasses declare ``fields``: name -> (dtype, trailing shape, initial value).

    >>> import numpy as np
    >>> class Counter(ArrayState):
    ...     fields = {"n": (np.int64, (), 0)}
    >>> c = Counter()
    >>> c.resize(3)
    >>> c.arrays["n"].tolist()
    [0, 0, 0]
    """

    fields: ClassVar[FieldSpecs] = {}

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {
            name: np.full((0, *shape), initial, dtype=dtype)
            for name, (dtype, shape, initial) in self.field_specs().items()
        }

    def field_specs(self) -> FieldSpecs:
        """The fields of this instance; override when shapes depend on parameters."""
        return dict(self.fields)

    @property
    def n_series(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    def resize(self, n_series: int) -> None:
        old = self.n_series
        if n_series <= old:
            return
        # A quarter more, not double: at a million series each spare row costs ~2 KB of resident
        # memory (np.full writes every page), against five copies per row instead of two while growing.
        capacity = max(n_series, old + old // 4)
        for name, (dtype, shape, initial) in self.field_specs().items():
            grown = np.full((capacity, *shape), initial, dtype=dtype)
            grown[:old] = self.arrays[name][:old]
            self.arrays[name] = grown

    def reset(self, ids: np.ndarray) -> None:
        """Return these series to cold state (a series that vanished, or a reused row)."""
        for name, (_, _, initial) in self.field_specs().items():
            self.arrays[name][ids] = initial

    def state_dict(self) -> dict[str, np.ndarray]:
        return {name: array.copy() for name, array in self.arrays.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        specs = self.field_specs()
        missing = set(specs) - set(state)
        if missing:
            raise ValueError(
                f"{type(self).__name__} state lacks {sorted(missing)}; "
                "it was saved by a different model or version, start this series cold"
            )
        for name, (dtype, shape, _) in specs.items():
            array = np.asarray(state[name], dtype=dtype)
            if array.shape[1:] != shape:
                raise ValueError(
                    f"{type(self).__name__} field {name!r} has shape {array.shape[1:]}, "
                    f"expected {shape}; the model's parameters changed since it was saved"
                )
            self.arrays[name] = array.copy()

    def nbytes_per_series(self) -> int:
        """Bytes of state one series costs."""
        return sum(
            int(np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64)))
            for dtype, shape, _ in self.field_specs().values()
        )


def as_floats(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each array as float64, what the compiled kernels take (no copy when it already is)."""
    return tuple(np.asarray(a, dtype=np.float64) for a in arrays)


def learning_rate(halflife: float) -> float:
    """Per-sample EWMA weight whose memory halves every ``halflife`` samples.

    >>> round(learning_rate(1.0), 3)
    0.5
    """
    if halflife <= 0:
        raise ValueError(f"halflife must be a positive number of samples, got {halflife}")
    return float(1.0 - 0.5 ** (1.0 / halflife))


def warmup_rate(rate: float, seen: np.ndarray) -> np.ndarray:
    """A running mean until ``1/rate`` points are seen, the EWMA rate afterwards.

    This makes the first estimates the plain average of what was seen, instead
    of being dragged towards the initial zero.
    """
    return np.maximum(rate, 1.0 / (seen + 1.0))

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

#: Smallest scale any model reports, so a perfectly flat series still yields
#: finite deviations (a change on it is then very large, which is right).
SCALE_FLOOR = 1e-9


def scale_floor(level: np.ndarray) -> np.ndarray:
    """The smallest scale a model may report around ``level`` (relative above 1)."""
    return SCALE_FLOOR * np.maximum(1.0, np.abs(level))


#: Multiplying a mean absolute deviation by this gives a standard deviation
#: for Gaussian data (sqrt(pi/2)); it keeps deviations comparable across models.
MEAN_ABS_TO_SIGMA = 1.2533141373155003


@dataclass(frozen=True)
class Assessment:
    """What a model thought of a batch of points before learning from them.

    ``deviation`` is signed and in units of ``scale`` (a z-like number, not a
    probability): calibration turns it into one.  ``warming`` is true for series
    the model has not yet seen enough of to trust its own forecast.
    """

    expected: FloatArray
    scale: FloatArray
    deviation: FloatArray
    warming: np.ndarray


@runtime_checkable
class OnlineModel(Protocol):
    """An online model over many series at once.  It never thresholds."""

    def resize(self, n_series: int) -> None:
        """Grow the state to hold ``n_series`` rows (new rows start cold)."""

    def assess(self, ids: IdArray, t: FloatArray, x: FloatArray) -> Assessment:
        """Forecast and deviation for each point, without learning from it."""

    def reset(self, ids: IdArray) -> None:
        """Return these series to cold state."""

    def learn(self, ids: IdArray, t: FloatArray, x: FloatArray, weight: FloatArray) -> None:
        """Update each series with its point, each weighted in [0, 1]."""

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

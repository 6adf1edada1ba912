"""Realistic, anomaly-free production metrics for a fleet of services, and incidents to inject.

These stand in for what a detector watches in production and must not page
on.  Every service has one load curve of its own (a daily shape peaking in the
afternoon, a weekend dip, day-to-day drift) that drives its six metrics
(:data:`FLEET_KINDS`), each with randomised levels, amplitudes, phases and
noise that is neither Gaussian nor independent:

* ``request_rate`` (req/s): Poisson counts per scrape around the load, with
  slow multiplicative wander and short bursts;
* ``latency_p99`` (s): log-normal, AR(1) in log space (phi 0.7-0.9 per
  minute) with Student-t innovations, higher at busy hours, noisier at night;
* ``cpu_percent``: idle plus load, AR(1) noise, in [0, 100]; a third of the
  services also run a short job at a fixed minute of every hour;
* ``error_ratio``: errors / requests from integer Binomial counts, so
  discrete and often exactly 0 at night;
* ``queue_length``: zero-inflated integer counts (small bursts that drain);
* ``memory_bytes``: a GC sawtooth (growth at the allocation rate, which follows
  load, then a drop; 20-90 min cycles with jitter) over a slow drift.

Two more kinds carry habits that only a pattern reveals, for the pattern
benchmark (:func:`pattern_fleet`, :data:`PATTERN_INCIDENTS`):

* ``backup_write_bytes`` (B/s): a few MB/s of background writes and a nightly
  backup burst, 15-40 minutes long, starting at the service's own time between
  01:00 and 04:00 with a few minutes' jitter;
* ``job_errors``: failed jobs per scrape, mostly 0 or 1, with a batch failure
  (a spike of tens) about twice a day at random times.

A service's scrapes fail together: :func:`fleet` leaves a few short gaps (NaN)
per service, in all six metrics at once.  Time starts on Monday 2026-03-02
00:00 UTC.  :func:`kind_series` makes independent series of one kind, including
four textbook kinds for tests (``ar1_phi09``, ``iid_gaussian``,
``heavy_tailed``, ``counts``); it leaves no gaps.  Everything is pure numpy
and deterministic for a seed.

Examples
--------
>>> series = fleet(services=2, days=6)
>>> len(series), series[1].name, series[1].job, len(series[1].x)
(12, 'svc00/latency_p99', 'svc00', 8640)
>>> dirty, incidents = inject_incidents(series, seed=1, warmup_days=3)
>>> len(incidents), incidents[0].series in {s.name for s in dirty}
(6, True)
>>> fine = kind_series("counts", n=1, days=1, repeat=4)[0]
>>> len(fine.x), float(fine.t[1] - fine.t[0]), bool(fine.x[0] == fine.x[3])
(5760, 15.0, True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

#: Monday 2026-03-02 00:00:00 UTC, as in ``replay_data/``.
START = 1772409600.0
DAY = 86_400.0
FLEET_KINDS = ("request_rate", "latency_p99", "cpu_percent", "error_ratio", "queue_length", "memory_bytes")
KINDS: tuple[str, ...] = (*FLEET_KINDS, "ar1_phi09", "iid_gaussian", "heavy_tailed", "counts")
#: Kinds with habits only a pattern reveals (a nightly burst, rare spikes), for the pattern benchmark.
HABIT_KINDS = ("backup_write_bytes", "job_errors")
#: The stream of :func:`fleet`'s scrape gaps, and the seed offset of :func:`pattern_fleet`'s services.
_GAP_STREAM = 11
_PATTERN_SEED = 1000
#: The metrics of :func:`pattern_fleet`: the pattern incidents' targets.
PATTERN_FLEET_KINDS = ("cpu_percent", "latency_p99", "backup_write_bytes", "job_errors")


@dataclass(frozen=True)
class Series:
    """One metric of one service.

    ``t`` is in Unix seconds and ``x`` may hold NaN for a failed scrape.  Each
    scrape's value appears ``repeat`` times in a row (see :func:`fleet`).
    """

    name: str
    job: str
    kind: str
    t: np.ndarray
    x: np.ndarray
    repeat: int = 1


@dataclass(frozen=True)
class Incident:
    """An injected incident: which series, what, and its first and last anomalous sample times."""

    series: str
    kind: str
    start: float
    end: float


@dataclass(frozen=True)
class _Load:
    """What every kind is generated from: the clock and each series' load curve (rows)."""

    t: np.ndarray
    step: float
    #: Shape of the day in [0, 1]: 0 at the night trough, 1 at the afternoon peak.
    day: np.ndarray
    #: Relative load: night floor to about 1 at a weekday peak, with weekend dip and drift.
    load: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.load.shape


def _per_step(phi_per_minute: np.ndarray | float, step: float) -> np.ndarray:
    """An AR(1) coefficient given per minute, for samples ``step`` seconds apart."""
    return np.asarray(phi_per_minute, dtype=np.float64) ** (step / 60.0)


def _ar1(phi: np.ndarray, innovations: np.ndarray) -> np.ndarray:
    """Unit-variance AR(1) paths, one per row, from unit-variance innovations, started stationary."""
    phi = phi[:, None] if phi.ndim == 1 else phi
    scale = np.sqrt(1.0 - phi**2)
    out = np.empty_like(innovations)
    out[:, 0] = innovations[:, 0]
    # A loop over time, vectorised over series: fast enough for weeks of minutes.
    for i in range(1, innovations.shape[1]):
        out[:, i] = phi[:, 0] * out[:, i - 1] + scale[:, 0] * innovations[:, i]
    return out


def _gaussian_ar1(rng: np.random.Generator, phi: np.ndarray, n: int) -> np.ndarray:
    return _ar1(phi, rng.standard_normal((len(phi), n)))


def _daily_drift(rng: np.random.Generator, m: int, days: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Day-to-day wander: an AR(1) value per midnight, smoothly interpolated in between."""
    knots = sd[:, None] * _gaussian_ar1(rng, np.full(m, 0.7), int(days[-1]) + 2)
    left = np.floor(days).astype(np.int64)
    weight = (1.0 - np.cos(np.pi * (days - left))) / 2.0
    return knots[:, left] * (1.0 - weight) + knots[:, left + 1] * weight


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
    """Moving average over ``width`` samples along rows (edges held)."""
    if width < 2:
        return values
    padded = np.pad(values, ((0, 0), (width // 2, width - 1 - width // 2)), mode="edge")
    cumulative = np.cumsum(padded, axis=1)
    cumulative = np.pad(cumulative, ((0, 0), (1, 0)))
    return (cumulative[:, width:] - cumulative[:, :-width]) / width


def _load(rng: np.random.Generator, m: int, days: float, step: float) -> _Load:
    n = round(days * DAY / step)
    t = START + step * np.arange(n)
    day_of_run = (t - START) / DAY
    hour = (day_of_run % 1.0) * 24.0
    peak = rng.uniform(13.0, 17.0, (m, 1))
    sharpness = rng.uniform(1.0, 1.8, (m, 1))
    base = ((1.0 + np.cos(2.0 * np.pi * (hour - peak) / 24.0)) / 2.0) ** sharpness
    # A second harmonic makes mornings and evenings differ (lunch dip, evening plateau).
    wobble = rng.uniform(0.0, 0.08, (m, 1)) * np.sin(4.0 * np.pi * (hour - rng.uniform(0, 12, (m, 1))) / 24.0)
    day = base + wobble * np.sin(np.pi * base)
    day = (day - day.min(axis=1, keepdims=True)) / np.ptp(day, axis=1, keepdims=True)
    floor = rng.uniform(0.15, 0.4, (m, 1))
    weekend_day = np.broadcast_to((np.floor(day_of_run) % 7 >= 5).astype(np.float64), (m, n))
    # Weekends fade in and out over a few hours, not at the stroke of midnight.
    weekend = _smooth(weekend_day, max(1, int(4 * 3600 / step)))
    weekly = 1.0 - (1.0 - rng.uniform(0.6, 0.8, (m, 1))) * weekend
    trend = rng.uniform(-0.01, 0.02, (m, 1)) * day_of_run
    drift = _daily_drift(rng, m, day_of_run, rng.uniform(0.02, 0.06, m)) + trend
    return _Load(t=t, step=step, day=day, load=(floor + (1.0 - floor) * day) * weekly * np.exp(drift))


def _request_rate(rng: np.random.Generator, load: _Load) -> np.ndarray:
    m, n = load.shape
    peak = np.exp(rng.uniform(np.log(5.0), np.log(1000.0), (m, 1)))
    wander = rng.uniform(0.02, 0.05, (m, 1)) * _gaussian_ar1(rng, _per_step(0.995, load.step) * np.ones(m), n)
    bursts = rng.uniform(0.01, 0.04, (m, 1)) * _gaussian_ar1(
        rng, _per_step(rng.uniform(0.3, 0.6, m), load.step), n
    )
    # rate(requests_total[1m]): a count per scrape interval, divided by it.
    return rng.poisson(peak * load.load * np.exp(wander + bursts) * load.step) / load.step


def _latency_p99(rng: np.random.Generator, load: _Load) -> np.ndarray:
    m, n = load.shape
    median = np.exp(rng.uniform(np.log(0.03), np.log(1.0), (m, 1)))
    busy = rng.uniform(0.03, 0.25, (m, 1))
    sigma = rng.uniform(0.06, 0.18, (m, 1))
    # A p99 over fewer requests (at night) is a noisier estimate.
    spread = sigma * (1.0 + rng.uniform(0.3, 0.8, (m, 1)) * (1.0 - load.day))
    df = rng.uniform(3.0, 12.0, (m, 1))
    shocks = rng.standard_t(df, (m, n)) / np.sqrt(df / (df - 2.0))
    noise = _ar1(_per_step(rng.uniform(0.7, 0.9, m), load.step), shocks)
    drift = _daily_drift(rng, m, (load.t - START) / DAY, rng.uniform(0.02, 0.05, m))
    return np.round(median * np.exp(busy * load.day + drift + spread * noise), 4)


def _cpu_percent(rng: np.random.Generator, load: _Load) -> np.ndarray:
    m, n = load.shape
    idle = rng.uniform(3.0, 15.0, (m, 1))
    span = rng.uniform(20.0, 60.0, (m, 1))
    wander = rng.uniform(1.0, 3.0, (m, 1)) * _gaussian_ar1(
        rng, _per_step(rng.uniform(0.8, 0.95, m), load.step), n
    )
    jitter = rng.uniform(0.3, 1.2, (m, 1)) * rng.standard_normal((m, n))
    # An hourly job (cache refresh, report) at a fixed minute, on a third of the services.
    hourly = rng.random((m, 1)) < 1.0 / 3.0
    into_hour = (load.t - START) % 3600.0 - rng.uniform(0.0, 3600.0, (m, 1))
    running = (into_hour % 3600.0) < rng.uniform(120.0, 240.0, (m, 1))
    job = np.where(hourly & running, rng.uniform(5.0, 15.0, (m, 1)), 0.0)
    return np.clip(idle + span * load.load + wander + jitter + job, 0.0, 100.0)


def _error_ratio(rng: np.random.Generator, load: _Load) -> np.ndarray:
    m, n = load.shape
    per_minute = rng.uniform(2000.0, 3000.0, (m, 1))
    requests = rng.poisson(per_minute * load.load * load.step / 60.0)
    # Real errors cluster more than a Binomial with a fixed rate: the rate wanders.
    clustering = 0.25 * _gaussian_ar1(rng, _per_step(0.8, load.step) * np.ones(m), n)
    rate = rng.uniform(0.001, 0.003, (m, 1)) * np.exp(clustering - 0.25**2 / 2)
    errors = rng.binomial(requests, np.minimum(rate, 1.0))
    return np.where(requests > 0, errors / np.maximum(requests, 1), np.nan)


def _queue_length(rng: np.random.Generator, load: _Load) -> np.ndarray:
    m, n = load.shape
    per_minute = rng.uniform(0.005, 0.03, (m, 1)) * load.load / load.load.mean(axis=1, keepdims=True)
    starts = rng.random((m, n)) < per_minute * load.step / 60.0
    size = np.exp(np.log(rng.uniform(3.0, 20.0, (m, 1))) + 0.6 * rng.standard_normal((m, n)))
    decay = _per_step(rng.uniform(0.3, 0.7, m), load.step)
    backlog = np.empty((m, n))
    level = np.zeros(m)
    for i in range(n):
        level = decay * level + np.where(starts[:, i], size[:, i], 0.0)
        backlog[:, i] = level
    strays = rng.poisson(rng.uniform(0.02, 0.2, (m, 1)), (m, n))
    return np.floor(backlog) + strays


def _memory_bytes(rng: np.random.Generator, load: _Load) -> np.ndarray:
    m, n = load.shape
    floor = np.exp(rng.uniform(np.log(200e6), np.log(4e9), m))
    days = (load.t - START) / DAY
    baseline = floor[:, None] * np.exp(
        _daily_drift(rng, m, days, rng.uniform(0.01, 0.04, m)) + rng.uniform(-0.005, 0.01, (m, 1)) * days
    )
    headroom = rng.uniform(0.1, 0.4, m)
    period = rng.uniform(20.0, 90.0, m) * 60.0
    # Allocation follows load, so a GC cycle lasts ``period`` at average load.
    allocation = headroom * floor * load.step / period / load.load.mean(axis=1)
    wobble = 1.0 + 0.3 * rng.standard_normal((m, n))
    jitter = rng.uniform(0.7, 1.3, (m, n))
    heap = baseline[:, 0] * (1.0 + headroom * rng.random(m))
    limit = baseline[:, 0] * (1.0 + headroom)
    out = np.empty((m, n))
    for i in range(n):
        heap = heap + allocation * load.load[:, i] * np.maximum(wobble[:, i], 0.0)
        collect = heap >= limit
        heap = np.where(collect, baseline[:, i] * (1.0 + 0.02 * jitter[:, i]), heap)
        limit = np.where(collect, baseline[:, i] * (1.0 + headroom * jitter[:, i]), limit)
        out[:, i] = heap
    return np.round(out)


def _ar1_phi09(rng: np.random.Generator, load: _Load) -> np.ndarray:
    m, n = load.shape
    return rng.uniform(50.0, 150.0, (m, 1)) + rng.uniform(1.0, 5.0, (m, 1)) * _gaussian_ar1(
        rng, np.full(m, 0.9), n
    )


def _iid_gaussian(rng: np.random.Generator, load: _Load) -> np.ndarray:
    m, n = load.shape
    return rng.uniform(50.0, 150.0, (m, 1)) + rng.uniform(1.0, 5.0, (m, 1)) * rng.standard_normal((m, n))


def _heavy_tailed(rng: np.random.Generator, load: _Load) -> np.ndarray:
    m, n = load.shape
    return rng.uniform(50.0, 150.0, (m, 1)) + rng.uniform(1.0, 5.0, (m, 1)) * rng.standard_t(3.0, (m, n))


def _counts(rng: np.random.Generator, load: _Load) -> np.ndarray:
    m, _ = load.shape
    floor = rng.uniform(0.1, 0.4, (m, 1))
    return rng.poisson(rng.uniform(2.0, 30.0, (m, 1)) * (floor + (1.0 - floor) * load.day)).astype(np.float64)


def _backup_write_bytes(rng: np.random.Generator, load: _Load) -> np.ndarray:
    m, n = load.shape
    background = np.exp(rng.uniform(np.log(2e6), np.log(1e7), (m, 1)))
    wander = 0.3 * _gaussian_ar1(rng, _per_step(0.98, load.step) * np.ones(m), n)
    noise = 0.15 * rng.standard_normal((m, n))
    out = background * (0.7 + 0.3 * load.day) * np.exp(wander + noise)
    minutes = (load.t - START) / 60.0
    start = rng.uniform(60.0, 240.0, m)
    length = rng.uniform(15.0, 40.0, m)
    height = np.exp(rng.uniform(np.log(5e7), np.log(2e8), m))
    for night in range(int(np.ceil(minutes[-1] / 1440.0)) + 1):
        begin = night * 1440.0 + start + rng.normal(0.0, 2.0, m)
        end = begin + length * rng.uniform(0.9, 1.1, m)
        level = height * rng.uniform(0.85, 1.15, m)
        # A minute or two of ramp at each end, as a backup's write rate settles.
        ramp = np.clip(np.minimum(minutes - begin[:, None], end[:, None] - minutes) / 1.5, 0.0, 1.0)
        out += level[:, None] * ramp * rng.uniform(0.9, 1.1, (m, n))
    return np.round(out)


def _job_errors(rng: np.random.Generator, load: _Load) -> np.ndarray:
    m, n = load.shape
    background = rng.poisson(rng.uniform(0.02, 0.3, (m, 1)) * np.ones((1, n))).astype(np.float64)
    per_step = rng.uniform(1.0, 3.0, (m, 1)) / DAY * load.step
    starts = rng.random((m, n)) < per_step
    size = np.round(np.exp(rng.normal(np.log(rng.uniform(15.0, 40.0, (m, 1))), 0.4, (m, n))))
    # A batch failure shows for a scrape or two.
    spikes = np.where(starts, size, 0.0)
    spikes[:, 1:] += np.where(
        starts[:, :-1] & (rng.random((m, n - 1)) < 0.5), np.round(0.4 * size[:, :-1]), 0.0
    )
    return background + spikes


_GENERATORS: dict[str, Callable[[np.random.Generator, _Load], np.ndarray]] = {
    "request_rate": _request_rate,
    "latency_p99": _latency_p99,
    "cpu_percent": _cpu_percent,
    "error_ratio": _error_ratio,
    "queue_length": _queue_length,
    "memory_bytes": _memory_bytes,
    "ar1_phi09": _ar1_phi09,
    "iid_gaussian": _iid_gaussian,
    "heavy_tailed": _heavy_tailed,
    "counts": _counts,
    "backup_write_bytes": _backup_write_bytes,
    "job_errors": _job_errors,
}


def _stream(kind: str) -> int:
    """The random stream of a kind's generator (fixed per kind, so adding kinds moves nothing)."""
    return 1 + KINDS.index(kind) if kind in KINDS else _GAP_STREAM + 1 + HABIT_KINDS.index(kind)


def _repeated(t: np.ndarray, repeat: int) -> np.ndarray:
    """Timestamps of each scrape's ``repeat`` copies, evenly spaced within its interval."""
    step = (t[1] - t[0]) if len(t) > 1 else 60.0
    return (t[:, None] + step / repeat * np.arange(repeat)).ravel()


def _series(names: list[str], kind: str, t: np.ndarray, values: np.ndarray, repeat: int) -> list[Series]:
    fine_t = _repeated(t, repeat)
    return [
        Series(name=f"{job}/{kind}", job=job, kind=kind, t=fine_t, x=np.repeat(row, repeat), repeat=repeat)
        for job, row in zip(names, values, strict=True)
    ]


def _jobs(n: int) -> list[str]:
    width = max(2, len(str(n - 1)))
    return [f"svc{i:0{width}d}" for i in range(n)]


def _check(days: float, step: float, repeat: int) -> None:
    if days * DAY < 2 * step or step <= 0:
        raise ValueError(f"days={days} at step={step} s gives fewer than two samples; use more days")
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")


def fleet(
    services: int = 20,
    days: float = 14,
    step: float = 60.0,
    seed: int = 0,
    repeat: int = 1,
    kinds: tuple[str, ...] = FLEET_KINDS,
) -> list[Series]:
    """Anomaly-free metrics of each of ``kinds`` (default :data:`FLEET_KINDS`) per service.

    ``step`` is the scrape interval; ``repeat`` > 1 gives each scrape's value
    ``repeat`` times at ``step / repeat`` spacing, as a detector evaluating
    more often than the scrape sees it.  Each service has a few short scrape
    gaps (NaN in all its metrics).
    """
    _check(days, step, repeat)
    load = _load(np.random.default_rng([seed, 0]), services, days, step)
    values = {kind: _GENERATORS[kind](np.random.default_rng([seed, _stream(kind)]), load) for kind in kinds}
    # A fixed stream, not one counted from the kinds: adding kinds must not move the gaps.
    rng = np.random.default_rng([seed, _GAP_STREAM])
    n = len(load.t)
    for row in range(services):
        for _ in range(rng.poisson(0.3 * days)):
            start = int(rng.integers(0, n))
            missed = slice(start, start + int(rng.integers(1, 6)))
            for kind in kinds:
                values[kind][row, missed] = np.nan
    per_kind = {kind: _series(_jobs(services), kind, load.t, values[kind], repeat) for kind in kinds}
    return [per_kind[kind][row] for row in range(services) for kind in kinds]


def pattern_fleet(services: int = 20, days: float = 14, seed: int = 0) -> list[Series]:
    """The targets of :data:`PATTERN_INCIDENTS` (:data:`PATTERN_FLEET_KINDS`), anomaly-free.

    Other services than :func:`fleet`'s for the same seed (their cpu and
    latency series differ), so the two benchmarks share no series.
    """
    return fleet(services=services, days=days, seed=seed + _PATTERN_SEED, kinds=PATTERN_FLEET_KINDS)


def kind_series(
    kind: str, n: int, days: float, step: float = 60.0, seed: int = 0, repeat: int = 1
) -> list[Series]:
    """``n`` independent anomaly-free series of one kind (:data:`KINDS`, :data:`HABIT_KINDS`), without gaps.

    >>> [s.name for s in kind_series("ar1_phi09", n=2, days=1)]
    ['svc00/ar1_phi09', 'svc01/ar1_phi09']
    """
    if kind not in _GENERATORS:
        raise ValueError(f"{kind!r} is not a kind; use one of {', '.join((*KINDS, *HABIT_KINDS))}")
    _check(days, step, repeat)
    load = _load(np.random.default_rng([seed, 0]), n, days, step)
    values = _GENERATORS[kind](np.random.default_rng([seed, _stream(kind)]), load)
    return _series(_jobs(n), kind, load.t, values, repeat)


@dataclass(frozen=True)
class _Effect:
    """An incident kind: the metric it hits, its length, and how it changes the scrapes."""

    metric: str
    minutes: float
    #: (rng, scrapes, first, last) -> the first and last anomalous scrapes; changes ``scrapes`` in place.
    apply: Callable[[np.random.Generator, np.ndarray, int, int], tuple[int, int]]


def _traffic_drop(rng: np.random.Generator, x: np.ndarray, first: int, last: int) -> tuple[int, int]:
    x[first : last + 1] *= rng.uniform(0.37, 0.43, last + 1 - first)
    return first, last


def _latency_spike(rng: np.random.Generator, x: np.ndarray, first: int, last: int) -> tuple[int, int]:
    x[first : last + 1] *= rng.uniform(3.6, 4.4, last + 1 - first)
    return first, last


def _latency_shift(rng: np.random.Generator, x: np.ndarray, first: int, last: int) -> tuple[int, int]:
    # A deploy: the new level is the new normal; only its first hour counts as the incident.
    x[first:] *= 1.3
    return first, last


def _error_burst(rng: np.random.Generator, x: np.ndarray, first: int, last: int) -> tuple[int, int]:
    requests = rng.poisson(2000.0, last + 1 - first)
    x[first : last + 1] = rng.binomial(requests, rng.uniform(0.045, 0.055, len(requests))) / requests
    return first, last


def _queue_stuck(rng: np.random.Generator, x: np.ndarray, first: int, last: int) -> tuple[int, int]:
    usual = max(float(np.nanmax(x[:first])), 5.0)
    ramp = np.linspace(0.0, 10.0 * usual, last + 1 - first)
    x[first : last + 1] = np.maximum(x[first : last + 1], np.round(ramp * rng.uniform(0.95, 1.05, len(ramp))))
    # The consumer restarts and drains the backlog over about a quarter of the time it took to build.
    drain = max(1, (last + 1 - first) // 4)
    end = min(len(x) - 1, last + drain)
    tail = np.linspace(ramp[-1], 0.0, drain + 2)[1 : end - last + 1]
    x[last + 1 : end + 1] = np.maximum(x[last + 1 : end + 1], np.round(tail))
    return first, end


def _cpu_pinned(rng: np.random.Generator, x: np.ndarray, first: int, last: int) -> tuple[int, int]:
    x[first : last + 1] = 100.0 - rng.exponential(0.2, last + 1 - first).clip(max=2.0)
    return first, last


def _memory_leak(rng: np.random.Generator, x: np.ndarray, first: int, last: int) -> tuple[int, int]:
    # Memory never comes back between collections; the OOM kill at the end restarts the sawtooth.
    growth = np.linspace(0.0, 0.5, last + 1 - first)
    seen = x[: first + 1][np.isfinite(x[: first + 1])]
    noise = 1.0 + 0.002 * rng.standard_normal(len(growth))
    x[first : last + 1] = np.round(seen[-1] * (1.0 + growth) * noise)
    return first, last


#: Incident kinds and what they do, sized as in ``replay_data/README.md``.
INCIDENTS: dict[str, _Effect] = {
    "traffic_drop": _Effect("request_rate", 25, _traffic_drop),
    "latency_spike": _Effect("latency_p99", 10, _latency_spike),
    "latency_shift": _Effect("latency_p99", 60, _latency_shift),
    "error_burst": _Effect("error_ratio", 15, _error_burst),
    "queue_stuck": _Effect("queue_length", 40, _queue_stuck),
    "cpu_pinned": _Effect("cpu_percent", 20, _cpu_pinned),
    "memory_leak": _Effect("memory_bytes", 360, _memory_leak),
}


# Pattern incidents: no point in them is unusual on its own.


def _exporter_stuck(rng: np.random.Generator, x: np.ndarray, first: int, last: int) -> tuple[int, int]:
    # The exporter keeps serving its last reading.
    seen = x[:first][np.isfinite(x[:first])]
    x[first : last + 1] = seen[-1]
    return first, last


def _latency_flapping(rng: np.random.Generator, x: np.ndarray, first: int, last: int) -> tuple[int, int]:
    # Three times as noisy around the same level: each point's log-distance from the local median, tripled.
    logs = np.log(x[first - 30 : last + 31])
    middle = np.array([np.nanmedian(logs[i : i + 61]) for i in range(last + 1 - first)])
    x[first : last + 1] = np.round(np.exp(middle + 3.0 * (logs[30:-30] - middle)), 4)
    return first, last


def _backup_missing(rng: np.random.Generator, x: np.ndarray, first: int, last: int) -> tuple[int, int]:
    # The next nightly backup does not run: its burst is replaced by background writes.
    background = float(np.nanmedian(x[max(0, first - 1440) : first]))
    burst = np.nonzero(np.nan_to_num(x[first : first + 1440]) > 5.0 * background)[0]
    start = stop = first + int(burst[0])
    while stop + 1 < len(x) and not np.nan_to_num(x[stop + 1]) < 2.0 * background:
        stop += 1
    before = x[start - 60 : start]
    quiet = before[np.isfinite(before) & (before < 2.0 * background)]
    x[start : stop + 1] = rng.choice(quiet, stop + 1 - start)
    return start, stop


def _error_storm(rng: np.random.Generator, x: np.ndarray, first: int, last: int) -> tuple[int, int]:
    # A batch failure every ten minutes or so, each the size of the usual ones.
    usual = x[:first][np.isfinite(x[:first])]
    sizes = usual[usual >= np.quantile(usual, 0.999)]
    at = first
    while at <= last:
        x[at] = max(x[at], float(rng.choice(sizes)))
        at += int(rng.integers(8, 13))
    return first, last


#: Pattern incidents, for the pattern benchmark on :func:`pattern_fleet`: each changes a habit,
#: and no single point of it is out of the ordinary.
PATTERN_INCIDENTS: dict[str, _Effect] = {
    "exporter_stuck": _Effect("cpu_percent", 45, _exporter_stuck),
    "latency_flapping": _Effect("latency_p99", 60, _latency_flapping),
    # Its length is how far it looks for the next burst: a day.
    "backup_missing": _Effect("backup_write_bytes", 1440, _backup_missing),
    "error_storm": _Effect("job_errors", 120, _error_storm),
}


def inject_incidents(
    series: list[Series],
    seed: int = 0,
    warmup_days: float = 4,
    incidents: dict[str, _Effect] | None = None,
) -> tuple[list[Series], list[Incident]]:
    """Inject one incident into each of half the series of every metric kind that has incidents.

    Incidents start at a random scrape after ``warmup_days`` and end at least
    an hour before the series does.  Latency series get a spike or a
    permanent +30% shift (whose incident window is its first hour), a stuck
    queue drains after its window (counted in the window).  Series of kinds
    without incidents are returned unchanged.  ``incidents`` are the kinds to
    inject: :data:`INCIDENTS` by default, :data:`PATTERN_INCIDENTS` for the
    pattern benchmark.  Raises ``ValueError`` if a
    chosen series is too short to hold its incident after the warm-up.
    """
    incidents = INCIDENTS if incidents is None else incidents
    rng = np.random.default_rng([seed, 1000])
    chosen: dict[int, str] = {}
    for metric in dict.fromkeys(effect.metric for effect in incidents.values()):
        kinds = [kind for kind, effect in incidents.items() if effect.metric == metric]
        rows = [row for row, s in enumerate(series) if s.kind == metric]
        for position in rng.permutation(len(rows))[: (len(rows) + 1) // 2]:
            chosen[rows[position]] = kinds[int(rng.integers(len(kinds)))]
    out = list(series)
    injected = []
    for row in sorted(chosen):
        s, kind = series[row], chosen[row]
        effect = incidents[kind]
        scrape_t = s.t[:: s.repeat]
        step = float(scrape_t[1] - scrape_t[0])
        length = max(1, round(effect.minutes * 60.0 / step))
        earliest = int(np.searchsorted(scrape_t, scrape_t[0] + warmup_days * DAY))
        latest = len(scrape_t) - length - int(np.ceil(3600.0 / step))
        if latest <= earliest:
            raise ValueError(
                f"{s.name}: {(s.t[-1] - s.t[0]) / DAY:.1f} days leave no room for a "
                f"{effect.minutes:.0f}-minute {kind} after warmup_days={warmup_days}; "
                "use more days or a shorter warm-up"
            )
        begin = int(rng.integers(earliest, latest))
        x = s.x[:: s.repeat].copy()
        first, last = effect.apply(rng, x, begin, begin + length - 1)
        x[np.isnan(s.x[:: s.repeat])] = np.nan  # a failed scrape stays a gap, incident or not
        out[row] = replace(s, x=np.repeat(x, s.repeat))
        start, end = float(s.t[first * s.repeat]), float(s.t[(last + 1) * s.repeat - 1])
        injected.append(Incident(s.name, kind, start, end))
    return out, injected

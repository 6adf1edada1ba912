"""Read samples from Prometheus's HTTP API: instant vectors and long ranges.

:class:`PrometheusReader` is the one way this project queries Prometheus (live
pull, warm start, catch-up, backtest and export).  It is built on
prometheus-api-client's ``PrometheusConnect``, given a requests session with
the credentials and TLS settings of the ``prometheus:`` section
(:func:`service.http_config.requests_session`), and adds what the client lacks:

* ranges of any length: Prometheus refuses more than 11,000 points per series
  in one query, so :meth:`PrometheusReader.range` asks for consecutive chunks
  on the same step grid and stitches them (chunks never share a timestamp);
* Prometheus's own error text instead of an HTTP status and a byte dump;
* two quick retries of a query that got no answer or a 502, 503 or 504 (a
  caller that polls retries on its own schedule);
* ``Accept-Encoding: identity``, which makes large range queries about 2.5×
  faster on a local network than the default gzip.

Errors, so callers catch at the right level::

    PrometheusError            anything that stopped a query (also: credentials refused, not Prometheus)
    ├── PrometheusUnavailable  not reachable, TLS refused, timed out, or 5xx after retries: try again later
    └── QueryError             Prometheus rejected the query: fix the query

Times are Unix seconds; :func:`parse_time` reads what people type (RFC3339,
Unix seconds, ``now``, ``now-2h``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from detector.config import parse_duration
from detector.labels import series_key
from detector.recorded import parse_timestamp
from service.http_config import HTTPClientConfig, requests_session, tls_problem

#: Prometheus refuses range queries returning more points than this per series.
MAX_POINTS_PER_QUERY = 11_000

_RELATIVE = re.compile(r"now\s*(?:([+-])\s*(\S+))?")


class PrometheusError(Exception):
    """A query that did not produce data; the message says what to check."""


class PrometheusUnavailable(PrometheusError):
    """Prometheus could not be reached or did not answer in time."""


class QueryError(PrometheusError):
    """Prometheus rejected a query; the message quotes Prometheus's own reason."""


@dataclass(frozen=True)
class Sample:
    """One value of an instant query.

    Examples
    --------
    >>> Sample({"__name__": "up", "job": "api"}, 1700000000.0, 1.0).key
    'up{job="api"}'
    """

    labels: dict[str, str]
    t: float
    value: float

    @property
    def key(self) -> str:
        """The series key (sorted label set) identifying this sample's series."""
        return series_key(self.labels)


@dataclass(frozen=True)
class RangeSeries:
    """One series of a range query: timestamps and values, both float64, in time order.

    Examples
    --------
    >>> series = RangeSeries({"job": "api"}, np.array([0.0, 60.0]), np.array([1.0, np.nan]))
    >>> series.key, len(series)
    ('{job="api"}', 2)
    """

    labels: dict[str, str]
    t: np.ndarray
    x: np.ndarray

    @property
    def key(self) -> str:
        """The series key (sorted label set) identifying this series."""
        return series_key(self.labels)

    def __len__(self) -> int:
        return len(self.t)


def parse_time(text: str, now: float) -> float:
    """Unix seconds from RFC3339, Unix seconds, ``now`` or ``now-<duration>``.

    Raises ValueError quoting the text and the accepted forms.

    >>> parse_time("now-2h", now=7200.0), parse_time("now", now=5.0)
    (0.0, 5.0)
    >>> parse_time("1970-01-01T00:01:00Z", now=0.0), parse_time("90", now=0.0)
    (60.0, 90.0)
    >>> parse_time("yesterday", now=0.0)
    Traceback (most recent call last):
    ...
    ValueError: 'yesterday' is not a time; use RFC3339 (2026-03-02T00:00:00Z), Unix seconds, now or now-2h
    """
    relative = _RELATIVE.fullmatch(text.strip())
    try:
        if relative is None:
            return parse_timestamp(text)
        sign, offset = relative.groups()
        if sign is None:
            return now
        return now + (1 if sign == "+" else -1) * parse_duration(offset)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time; use RFC3339 (2026-03-02T00:00:00Z), Unix seconds, now or now-2h"
        ) from None


class _ErrorReply(Exception):
    """An HTTP error reply, raised by the session's hook before the client sees it."""

    def __init__(self, response: requests.Response) -> None:
        super().__init__(response.status_code)
        self.status = response.status_code
        self.status_line = f"HTTP {response.status_code} {response.reason}"
        self.reason = _error_text(response)


def _seconds(t: float) -> str:
    """A time for the API, to the millisecond Prometheus keeps (numpy floats would repr badly)."""
    return f"{float(t):.3f}"


def _connection_reason(error: requests.ConnectionError) -> str:
    """The useful end of urllib3's reason: "[Errno 111] Connection refused", "Failed to resolve ..."."""
    cause = getattr(error.args[0], "reason", None) if error.args else None
    return str(cause or error).split("): ", 1)[-1]


def _error_text(response: requests.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code} {response.reason} and no Prometheus error in the reply"


class PrometheusReader:
    """Instant and range queries against one Prometheus server.

    Parameters
    ----------
    url
        Base URL of the Prometheus server (``http://localhost:9090``), without ``/api/v1``.
    headers
        Extra HTTP headers; credentials go in ``http``.
    timeout
        Seconds to wait for each HTTP reply.
    http
        ``basic_auth`` or ``authorization``, and ``tls_config``, as in Prometheus's ``http_config``.

    Examples
    --------
    >>> reader = PrometheusReader("http://localhost:9090/", timeout=10)
    >>> reader
    PrometheusReader('http://localhost:9090', timeout=10)

    ``reader.instant("up")`` returns one :class:`Sample` per series;
    ``reader.range("up", start, end, 60)`` one :class:`RangeSeries` per series.
    """

    def __init__(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
        http: HTTPClientConfig | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        # Few, quick retries: a caller that polls retries on its own schedule.  Keep the last 5xx
        # reply after them, so its error text reaches the caller.
        retries = Retry(total=2, backoff_factor=0.5, status_forcelist=(502, 503, 504), raise_on_status=False)
        session = requests_session(http or HTTPClientConfig(), retries=retries)
        # The client turns an error reply into "HTTP Status Code 400 (b'...')"; a response hook on
        # the session sees the reply first and keeps Prometheus's reason.
        session.hooks["response"].append(self._check)
        self._client = PrometheusConnect(
            url=self.url,
            headers={"Accept-Encoding": "identity", **(headers or {})},
            retry=retries,
            session=session,
            timeout=timeout,  # type: ignore[arg-type]  # the client's hint says int; requests takes float
        )
        # The client mounts a plain adapter on its URL, which knows no tls_config server_name; the
        # session's own (same retries) goes back over it.
        session.mount(self.url, session.adapters["https://"])

    def __repr__(self) -> str:
        return f"PrometheusReader({self.url!r}, timeout={self.timeout})"

    @staticmethod
    def _check(response: requests.Response, *args: object, **kwargs: object) -> None:
        """The session's response hook: an error reply becomes :class:`_ErrorReply`."""
        if response.status_code >= 400:
            raise _ErrorReply(response)

    def _call(self, query: str, method: str, **arguments: Any) -> Any:
        try:
            return getattr(self._client, method)(query, **arguments)
        except _ErrorReply as reply:
            if reply.status in (401, 403):
                raise PrometheusError(
                    f"Prometheus at {self.url} refused the request ({reply.status_line}); "
                    "set or correct basic_auth or authorization under prometheus: in the configuration"
                ) from None
            if reply.status >= 500:
                raise PrometheusUnavailable(
                    f"Prometheus at {self.url} failed the query {query!r}: {reply.reason}; "
                    "try again later, or narrow the query or the time range"
                ) from None
            raise QueryError(
                f"Prometheus at {self.url} rejected the query {query!r}: {reply.reason}"
            ) from None
        except requests.Timeout:
            raise PrometheusUnavailable(
                f"Prometheus at {self.url} did not answer within {self.timeout:g} s; "
                "narrow the query or the time range, or raise the timeout"
            ) from None
        except requests.ConnectionError as error:
            tls = tls_problem(error)
            if tls is not None:
                raise PrometheusUnavailable(f"Prometheus at {self.url}: {tls}") from None
            raise PrometheusUnavailable(
                f"cannot reach Prometheus at {self.url} ({_connection_reason(error)}); "
                "check the URL and that Prometheus is running"
            ) from None
        except (requests.RequestException, PrometheusApiClientException, KeyError, TypeError) as error:
            # The client reads data.result from a 200 reply; a page that is not Prometheus's JSON fails there.
            parsing = isinstance(error, (requests.JSONDecodeError, KeyError, TypeError))
            raise PrometheusError(
                f"{self.url} did not answer like a Prometheus server "
                f"({'HTTP 200, no data.result in the reply' if parsing else error}); "
                "give the base URL, such as http://localhost:9090"
            ) from None

    def instant(self, query: str, at: float | None = None) -> list[Sample]:
        """Evaluate ``query`` at ``at`` (Unix seconds; default now), one sample per series.

        A scalar result is one sample with no labels.
        """
        params = {} if at is None else {"time": _seconds(at)}
        result = self._call(query, "custom_query", params=params)
        if result and not isinstance(result[0], dict):
            t, value = result  # a scalar: [time, "value"]
            return [Sample({}, float(t), float(value))]
        if result and "value" not in result[0]:
            raise QueryError(
                f"the query {query!r} returns a range vector; ask for an instant vector "
                f"(e.g. last_over_time({query})) or use range()"
            )
        return [Sample(item["metric"], float(item["value"][0]), float(item["value"][1])) for item in result]

    def range(self, query: str, start: float, end: float, step: float) -> list[RangeSeries]:
        """Evaluate ``query`` at ``start, start + step, ... <= end``; series sorted by key.

        Ranges longer than Prometheus's 11,000 points per series are read in
        consecutive chunks on the same grid and stitched.
        """
        if not (math.isfinite(step) and step > 0):
            raise ValueError(f"step {step!r} must be a positive number of seconds")
        if start > end:
            raise ValueError(f"start {start!r} is after end {end!r}; swap them")
        # Tolerate float error in (end - start) / step, or the last point could go missing.
        points = math.floor((end - start) / step + 1e-9) + 1
        parts: dict[str, list[dict[str, Any]]] = {}
        for first in range(0, points, MAX_POINTS_PER_QUERY):
            chunk_start = start + first * step
            chunk_end = min(start + (first + MAX_POINTS_PER_QUERY - 1) * step, end)
            # The client rounds start and end to whole seconds, which could move a chunk edge onto
            # its neighbour's grid; the parameters given here take precedence and are exact.
            exact = {"start": _seconds(chunk_start), "end": _seconds(chunk_end), "step": repr(float(step))}
            moment = datetime.fromtimestamp(chunk_start, UTC)
            for item in self._call(
                query,
                "custom_query_range",
                start_time=moment,
                end_time=moment,
                step=exact["step"],
                params=exact,
            ):
                parts.setdefault(series_key(item["metric"]), []).append(item)
        return [self._stitch(parts[key]) for key in sorted(parts)]

    @staticmethod
    def _stitch(chunks: list[dict[str, Any]]) -> RangeSeries:
        values = [pair for chunk in chunks for pair in chunk["values"]]
        return RangeSeries(
            labels=chunks[0]["metric"],
            t=np.array([pair[0] for pair in values], dtype=np.float64),
            # numpy parses Prometheus's "NaN", "+Inf" and "-Inf" like any other number.
            x=np.array([pair[1] for pair in values], dtype=np.float64),
        )

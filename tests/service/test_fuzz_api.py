"""Malformed bodies, ids and parameters at the JSON API of one real service: 4xx with a message, never 5xx.

Hypothesis sends, to every route that changes state and to the GET routes
that take parameters:

- ``POST /api/v1/silences``: silence-shaped objects with odd matchers, times
  (naive, far past and future, numbers, junk), flags and extra keys; any JSON;
  JSON with NaN, deep nesting or a wrong Content-Type; bytes that are no JSON;
- ``POST /api/v1/alerts/{id}/feedback``: odd ids (unicode, slashes, huge) with
  valid and invalid verdicts;
- ``DELETE /api/v1/silences/{id}``, ``GET /api/v1/series/{id}``,
  ``GET /series/{id}``, ``GET /api/v1/alerts?limit=…`` and
  ``GET /api/v1/series?detector=…&anomalous=…``.

A silence the service accepts (201) must then be listed without error and
deleted with 204.  Every other answer is a GET's 200 or a 4xx whose body says
what was wrong.
After the run the process is still healthy and its memory grew by less than
:data:`RSS_GROWTH_BOUND` after a warm-up.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from tests.support.service import ServiceProcess

pytestmark = pytest.mark.live

#: Fuzz cases after the warm-up, over all routes.
EXAMPLES = 1000
WARMUP_EXAMPLES = 200
#: Every accepted silence is deleted again, so the service should end where it started.
RSS_GROWTH_BOUND = 32 << 20
#: Reproducible in CI: the same cases every run, no example database.
FUZZING: dict[str, Any] = {
    "derandomize": True,
    "database": None,
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
#: What the service may answer, by route; 5xx never.
ALLOWED = {
    "silence": {201, 400, 415, 422},
    "feedback": {400, 404, 415, 422},  # no incident exists: a valid verdict is a 404
    "delete": {404},  # an accepted silence is deleted right away; nothing else is there to delete
    "get": {200, 404, 422},
}

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
_offsets = st.sampled_from([None, UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-12))])
_times = st.one_of(
    st.datetimes(timezones=_offsets).map(datetime.isoformat),
    st.sampled_from(
        [
            "9999-12-31T23:59:59Z",
            "9999-12-31T23:59:59-14:00",
            "0001-01-01T00:00:00Z",
            "0001-01-01T00:00:00+14:00",
            "2026-02-30T00:00:00Z",
            "2099-01-01T00:00:00Z",
            "1970-01-01T00:00:00Z",
            "now",
            "",
            "1e308",
            "P1D",
        ]
    ),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    _json,
)
_label_names = st.sampled_from(["job", "__name__", "instance", "", "0bad", "a-b", "ünï"]) | st.text(
    max_size=8
)
_regex_values = st.sampled_from(["(", ".*", "[", "a{99999}", "(?P<x>", "\\", "(a+)+$", ".+"]) | st.text(
    max_size=20
)
_matchers = st.one_of(
    st.builds(
        lambda name, op, value: f"{name}{op}{json.dumps(value)}",
        _label_names,
        st.sampled_from(["=", "!=", "=~", "!~", "==", "~"]),
        _regex_values,
    ),
    st.text(max_size=30),
)
_silences = st.fixed_dictionaries(
    {"matchers": st.lists(_matchers, max_size=4) | _json, "starts_at": _times, "ends_at": _times},
    optional={
        "comment": st.text(max_size=50) | st.sampled_from(["x" * 100_000]) | _json,
        "maintenance": st.booleans() | _json,
        "weekly": st.booleans() | _json,
        "created_by": st.text(max_size=20) | _json,
        "unknown_key": _json,
    },
)
# A valid silence now and then, so that the 201 path (listing, deleting) is fuzzed too.
_valid_silences = st.fixed_dictionaries(
    {
        "matchers": st.lists(
            st.builds(
                lambda v: f'job="{v}"', st.text(st.characters(codec="ascii", exclude_characters='"\\'))
            ),
            min_size=1,
            max_size=3,
        ),
        "starts_at": st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
        "ends_at": st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
    },
    optional={"maintenance": st.booleans(), "weekly": st.booleans(), "comment": st.text(max_size=50)},
)
_ids = st.text(min_size=1, max_size=40) | st.sampled_from(
    ["..", ".", "%00", "a" * 5000, "0" * 12, "\x00", "/"]
)
_content_types = st.sampled_from(
    [
        "application/json",
        "application/json",
        "application/json",
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
        "application/problem+json",
    ]
)


@st.composite
def bodies(draw: st.DrawFn, shaped: st.SearchStrategy[Any]) -> bytes:
    """Usually JSON of ``shaped`` or of anything; sometimes JSON's edge cases or no JSON at all."""
    kind = draw(st.sampled_from(["shaped"] * 6 + ["any", "nan", "nested", "bytes", "text", "empty"]))
    if kind == "shaped":
        return json.dumps(draw(shaped), allow_nan=True).encode()
    if kind == "any":
        return json.dumps(draw(_json), allow_nan=True).encode()
    if kind == "nan":
        return b'{"matchers": ["job=\\"x\\""], "starts_at": NaN, "ends_at": Infinity, "verdict": NaN}'
    if kind == "nested":
        depth = draw(st.sampled_from([100, 10_000, 200_000]))
        return b"[" * depth + b"]" * depth
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "text":
        return draw(st.text(max_size=100)).encode("utf-8", "surrogatepass")
    return b""


@dataclass
class Call:
    route: str
    method: str
    path: str
    body: bytes | None = None
    content_type: str | None = None
    #: The id has "/" or is "." or "..": the path becomes another route's (the client drops dot
    #: segments, the server decodes %2F), which may redirect (trailing slash) or allow other methods.
    reroutes: bool = False


def _reroutes(text: str) -> bool:
    return "/" in text or text in (".", "..")


def _segment(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


@st.composite
def calls(draw: st.DrawFn) -> Call:
    route = draw(st.sampled_from(["silence", "silence", "silence", "feedback", "feedback", "delete", "get"]))
    if route == "silence":
        body = draw(bodies(_silences | _valid_silences))
        return Call(route, "POST", "/api/v1/silences", body, draw(_content_types))
    if route == "feedback":
        verdict = st.sampled_from(["false_positive", "incident", "new_normal", "FALSE_POSITIVE", ""]) | _json
        shaped = st.fixed_dictionaries({"verdict": verdict}, optional={"extra": _json})
        incident = draw(_ids)
        path = f"/api/v1/alerts/{_segment(incident)}/feedback"
        return Call(route, "POST", path, draw(bodies(shaped)), draw(_content_types), _reroutes(incident))
    if route == "delete":
        rule = draw(_ids)
        return Call(route, "DELETE", f"/api/v1/silences/{_segment(rule)}", reroutes=_reroutes(rule))
    path = draw(
        st.sampled_from(["/api/v1/series/{}", "/series/{}", "/api/v1/alerts?limit={}", "/api/v1/series?{}"])
    )
    if "limit" in path:
        parameter = _segment(str(draw(st.integers(-(2**70), 2**70) | st.text(max_size=10))))
    elif path.endswith("?{}"):
        detector = _segment(draw(st.sampled_from(["everything", ""]) | st.text(max_size=10)))
        anomalous = _segment(draw(st.sampled_from(["true", "false", "1", "yes", ""]) | st.text(max_size=5)))
        parameter = f"detector={detector}&anomalous={anomalous}"
    else:
        series = draw(_ids)
        return Call(route, "GET", path.format(_segment(series)), reroutes=_reroutes(series))
    return Call(route, "GET", path.format(parameter))


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    folder = tmp_path_factory.mktemp("fuzz_api")
    config = folder / "service.yaml"
    config.write_text(
        json.dumps(
            {
                "store": str(folder / "state.db"),
                "detectors": [
                    {"name": "everything", "source": "remote_write", "match_re": {"__name__": ".+"}}
                ],
            }
        )
    )
    process = ServiceProcess(config, folder / "service.log").start()
    try:
        yield process
    finally:
        process.stop()


def _message(response: httpx.Response) -> str:
    """The reason a 4xx gives: FastAPI's ``detail`` as text, or the page's text."""
    if not response.headers.get("content-type", "").startswith("application/json"):
        return response.text.strip()
    detail = response.json()["detail"]
    return detail if isinstance(detail, str) else json.dumps(detail)


def test_malformed_api_calls_get_4xx_with_a_message_never_5xx(service: ServiceProcess) -> None:
    answers: Counter[tuple[str, int]] = Counter()
    with httpx.Client(base_url=service.url, timeout=60.0) as client:

        def check(call: Call) -> None:
            headers = {"Content-Type": call.content_type} if call.content_type else {}
            note(f"{call.method} {call.path} {headers} {call.body!r:.300}")
            response = client.request(call.method, call.path, content=call.body, headers=headers)
            answers[call.route, response.status_code] += 1
            if call.reroutes and response.status_code in (307, 405):
                return
            assert response.status_code in ALLOWED[call.route], response.text[:2000]
            if 400 <= response.status_code < 500:
                assert _message(response), response.text
            if response.status_code == 201:
                rule_id = response.json()["id"]
                listing = client.get("/api/v1/silences")
                assert listing.status_code == 200, listing.text[:2000]
                deleted = client.delete(f"/api/v1/silences/{rule_id}")
                assert deleted.status_code == 204, deleted.text

        # Two functions, so that derandomize gives each its own cases.
        @settings(max_examples=WARMUP_EXAMPLES, **FUZZING)
        @given(call=calls())
        def warm_up(call: Call) -> None:
            check(call)

        @settings(max_examples=EXAMPLES, **FUZZING)
        @given(call=calls())
        def fuzz(call: Call) -> None:
            check(call)

        warm_up()
        warm = service.memory()
        warm_answers = answers.total()
        fuzz()
        grown = service.memory() - warm
        sent = answers.total() - warm_answers
        print(
            f"\n{sent} fuzz cases after {warm_answers} warm-up cases: {dict(sorted(answers.items()))}; "
            f"RSS {warm / 2**20:.0f} MiB after the warm-up, {grown / 2**20:+.1f} MiB over the fuzz cases"
        )
        assert sent >= EXAMPLES
        assert answers["silence", 201] > 0, "some silences were valid, so the 201 path was fuzzed too"
        assert service.get("/-/healthy").status_code == 200
        assert client.get("/api/v1/silences").json() == [], "every accepted silence was deleted"
        assert grown < RSS_GROWTH_BOUND, f"RSS grew by {grown / 2**20:.1f} MiB over {sent} cases"
    assert "Traceback" not in service.log(), service.log()[-5000:]

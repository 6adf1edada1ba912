"""Labels are identity: a series key is its sorted label set, written as Prometheus does.

>>> key = series_key({"job": "api", "__name__": "http_requests", "path": 'a"b'})
>>> key
'http_requests{job="api",path="a\\\\"b"}'
>>> parse_series_key(key) == {"__name__": "http_requests", "job": "api", "path": 'a"b'}
True
>>> series_key({"job": "api"})
'{job="api"}'
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = re.compile(r"\\(.)")


def series_key(labels: Mapping[str, str]) -> str:
    """The canonical key of a label set: ``name{a="1",b="2"}`` with labels sorted."""
    name = labels.get("__name__", "")
    pairs = ",".join(
        f'{label}="{value.translate(_ESCAPES)}"'
        for label, value in sorted(labels.items())
        if label != "__name__"
    )
    return f"{name}{{{pairs}}}"


def parse_series_key(key: str) -> dict[str, str]:
    """Inverse of :func:`series_key`; raises ValueError for text that is not a key."""
    brace = key.find("{")
    if brace < 0 or not key.endswith("}"):
        raise ValueError(f'{key!r} is not a series key; expected name{{label="value",...}}')
    labels = {"__name__": key[:brace]} if brace else {}
    body = key[brace + 1 : -1]
    position = 0
    while position < len(body):
        match = _PAIR.match(body, position)
        if match is None:
            raise ValueError(f"{key!r} is not a series key: cannot read labels at {body[position:]!r}")
        labels[match.group(1)] = _UNESCAPE.sub(
            lambda m: "\n" if m.group(1) == "n" else m.group(1), match.group(2)
        )
        position = match.end() + 1
    return labels

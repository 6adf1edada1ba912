"""Silences and maintenance windows: label matchers over a span of time.

Matchers follow Alertmanager: one label compared with ``=``, ``!=``, ``=~`` or
``!~``; a missing label reads as the empty string; regular expressions are
fully anchored (``job=~"api"`` does not match ``api-2``).  A rule must not match
every series, so ``job=~".*"`` alone is refused, as Alertmanager does.

* A :class:`Silence` mutes: matching points are still scored, but never open or
  keep an alert (:meth:`detector.engine.Engine.process` ``silenced=``).
* A :class:`MaintenanceWindow` mutes *and* keeps what happens inside it from
  being learned as normal (``learn=False``); it may repeat every week.

:class:`SilenceSet` answers both questions for a whole batch at once:

>>> rules = SilenceSet([
...     Silence([Matcher.parse('job="api"')], starts_at=0, ends_at=3600, comment="deploy"),
...     MaintenanceWindow([Matcher.parse('instance=~"db-.*"')], starts_at=0, ends_at=7200, weekly=True),
... ])
>>> labels = [{"job": "api"}, {"job": "db", "instance": "db-1"}, {"job": "web"}]
>>> rules.silenced(labels, 1800.0).tolist(), rules.maintenance(labels, 1800.0).tolist()
([True, True, False], [False, True, False])
>>> rules.silenced(labels, 7 * 86400 + 60.0).tolist()  # a week later: only the weekly window
[False, True, False]
>>> SilenceSet.from_dict(rules.to_dict()) == rules
True
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np

Op = Literal["=", "!=", "=~", "!~"]
_OPS: tuple[Op, ...] = ("=", "!=", "=~", "!~")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*(?:"((?:[^"\\]|\\.)*)"|([^"\s]*))\s*')
_UNESCAPE = re.compile(r"\\(.)")
SECONDS_PER_WEEK = 7 * 86400.0
#: Label values a matcher remembers its verdict on (about the number of series of a shard).
_REMEMBERED_VALUES = 1 << 20


@dataclass(frozen=True)
class Matcher:
    """One label condition, as in Alertmanager and PromQL selectors.

    Examples
    --------
    >>> m = Matcher.parse('job=~"api|web"')
    >>> m.matches({"job": "web"}), m.matches({"job": "web-2"}), m.matches({})
    (True, False, False)
    >>> str(Matcher("env", "!=", "prod")), Matcher("env", "!=", "prod").matches({})
    ('env!="prod"', True)
    """

    label: str
    op: Op
    value: str
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)
    _verdicts: dict[str, bool] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _LABEL.fullmatch(self.label):
            raise ValueError(f"{self.label!r} is not a label name; use letters, digits and _")
        if self.op not in _OPS:
            raise ValueError(f"{self.op!r} is not a matcher operator; use one of {', '.join(_OPS)}")
        if self.op in ("=~", "!~"):
            try:
                object.__setattr__(self, "_regex", re.compile(self.value))
            except re.error as error:
                raise ValueError(
                    f"{self.label}{self.op}{self.value!r}: not a regular expression ({error})"
                ) from None

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """Read ``label=value``, ``label!="value"``, ``label=~"regex"`` …"""
        match = _MATCHER.fullmatch(text)
        if match is None:
            raise ValueError(f'{text!r} is not a matcher; write label="value" (or !=, =~, !~)')
        quoted, bare = match[3], match[4]
        value = _UNESCAPE.sub(r"\1", quoted) if quoted is not None else bare
        return cls(match[1], cast(Op, match[2]), value)

    def __str__(self) -> str:
        return f"{self.label}{self.op}{json.dumps(self.value)}"

    def matches_value(self, value: str) -> bool:
        """Whether a label value (``""`` for a missing label) satisfies the matcher."""
        if self._regex is not None:
            return (self._regex.fullmatch(value) is not None) == (self.op == "=~")
        return (value == self.value) == (self.op == "=")

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.matches_value(labels.get(self.label, ""))

    def matches_many(self, labels_list: Sequence[Mapping[str, str]]) -> np.ndarray:
        """:meth:`matches` for many label sets; each distinct value is tested once and remembered."""
        values = [labels.get(self.label, "") for labels in labels_list]
        # Label values repeat batch after batch: only values never seen cost a test.
        verdicts = self._verdicts
        unseen = set(values).difference(verdicts)
        if len(verdicts) + len(unseen) > _REMEMBERED_VALUES:
            verdicts.clear()
            unseen = set(values)
        verdicts.update((value, self.matches_value(value)) for value in unseen)
        return np.fromiter(map(verdicts.__getitem__, values), dtype=bool, count=len(values))


@dataclass(frozen=True)
class Silence:
    """Matching series are scored but do not alert from ``starts_at`` until ``ends_at`` (Unix seconds).

    ``id`` defaults to a hash of everything else, so creating the same silence
    twice (a retried API call) gives the same id.

    Examples
    --------
    >>> s = Silence([Matcher.parse('job="api"')], starts_at=100.0, ends_at=200.0, created_by="ana")
    >>> s.active(np.array([50.0, 150.0, 200.0])).tolist(), s.id
    ([False, True, False], '176f898588474624')
    """

    matchers: Sequence[Matcher]
    starts_at: float
    ends_at: float
    comment: str = ""
    created_by: str = ""
    id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "matchers", tuple(self.matchers))
        if not self.matchers or all(m.matches_value("") for m in self.matchers):
            raise ValueError(
                f"{self.describe_matchers()} matches every series; "
                'add a matcher that needs a label value, e.g. job="api"'
            )
        if not self.ends_at > self.starts_at:
            raise ValueError(f"ends_at ({self.ends_at}) must be after starts_at ({self.starts_at})")
        if not self.id:
            object.__setattr__(self, "id", self._content_id())

    def describe_matchers(self) -> str:
        return "{" + ",".join(str(m) for m in self.matchers) + "}"

    def _content_id(self) -> str:
        content = {k: v for k, v in self.to_dict().items() if k != "id"}
        text = json.dumps([type(self).__name__, content], sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def active(self, t: np.ndarray) -> np.ndarray:
        """Whether the rule is in force at each time."""
        return (self.starts_at <= t) & (t < self.ends_at)

    def matches_many(self, labels_list: Sequence[Mapping[str, str]]) -> np.ndarray:
        """Whether each label set satisfies every matcher."""
        covered = np.ones(len(labels_list), dtype=bool)
        for matcher in self.matchers:
            covered &= matcher.matches_many(labels_list)
        return covered

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data; matchers as text (``job=~"api"``)."""
        return {
            "matchers": [str(m) for m in self.matchers],
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "comment": self.comment,
            "created_by": self.created_by,
            "id": self.id,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Silence:
        """Inverse of :meth:`to_dict`."""
        values = dict(data)
        values["matchers"] = tuple(Matcher.parse(text) for text in data["matchers"])
        return cls(**values)


@dataclass(frozen=True)
class MaintenanceWindow(Silence):
    """A silence whose points are not learned as normal either; ``weekly`` repeats it every week.

    A weekly window is given by its first occurrence (``starts_at`` to
    ``ends_at``, at most a week long) and recurs until it is deleted.

    Examples
    --------
    >>> nightly = MaintenanceWindow([Matcher.parse('job="db"')], starts_at=0.0, ends_at=7200.0, weekly=True)
    >>> nightly.active(np.array([3600.0, 9000.0, SECONDS_PER_WEEK + 3600.0, -3600.0])).tolist()
    [True, False, True, False]
    """

    weekly: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weekly and self.ends_at - self.starts_at > SECONDS_PER_WEEK:
            raise ValueError("a weekly maintenance window lasts at most a week; shorten it or drop weekly")

    def active(self, t: np.ndarray) -> np.ndarray:
        if not self.weekly:
            return super().active(t)
        return (t >= self.starts_at) & (
            (t - self.starts_at) % SECONDS_PER_WEEK < self.ends_at - self.starts_at
        )

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "weekly": self.weekly}


class SilenceSet:
    """The silences and maintenance windows in force, asked about a whole batch at once.

    Only rules active at some time of the batch are matched against labels,
    and each matcher tests each distinct label value once.

    Examples
    --------
    >>> rules = SilenceSet([Silence([Matcher.parse("env=dev")], 0.0, 60.0)])
    >>> rules.silenced([{"env": "dev"}, {"env": "prod"}], np.array([30.0, 30.0])).tolist()
    [True, False]
    """

    def __init__(self, rules: Iterable[Silence] = ()) -> None:
        self.rules: tuple[Silence, ...] = tuple(rules)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SilenceSet) and self.rules == other.rules

    def __repr__(self) -> str:
        return f"SilenceSet({list(self.rules)!r})"

    def silenced(self, labels_list: Sequence[Mapping[str, str]], t: float | np.ndarray) -> np.ndarray:
        """Whether each series (label set) is silenced at its time: by a silence or a maintenance window."""
        return self._covered(self.rules, labels_list, t)

    def maintenance(self, labels_list: Sequence[Mapping[str, str]], t: float | np.ndarray) -> np.ndarray:
        """Whether each series is inside a maintenance window: silenced and not learned."""
        windows = [rule for rule in self.rules if isinstance(rule, MaintenanceWindow)]
        return self._covered(windows, labels_list, t)

    @staticmethod
    def _covered(
        rules: Iterable[Silence], labels_list: Sequence[Mapping[str, str]], t: float | np.ndarray
    ) -> np.ndarray:
        times = np.broadcast_to(np.asarray(t, dtype=np.float64), (len(labels_list),))
        covered = np.zeros(len(labels_list), dtype=bool)
        for rule in rules:
            rows = np.nonzero(rule.active(times) & ~covered)[0]
            if len(rows):
                covered[rows] = rule.matches_many([labels_list[i] for i in rows.tolist()])
        return covered

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data: ``{"silences": [...], "maintenance": [...]}``."""
        return {
            "silences": [r.to_dict() for r in self.rules if not isinstance(r, MaintenanceWindow)],
            "maintenance": [r.to_dict() for r in self.rules if isinstance(r, MaintenanceWindow)],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SilenceSet:
        """Inverse of :meth:`to_dict`."""
        return cls(
            [Silence.from_dict(d) for d in data.get("silences", ())]
            + [MaintenanceWindow.from_dict(d) for d in data.get("maintenance", ())]
        )

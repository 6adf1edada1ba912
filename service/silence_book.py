"""Silences and maintenance windows: those from the config file plus those made through the API.

API-made rules are kept in the store, so they survive a restart; config rules
are read from the file each start.  Expired rules are dropped when listed.

>>> import tempfile, pathlib
>>> from detector.silences import Matcher, Silence
>>> from service.store import Store
>>> store = Store(pathlib.Path(tempfile.mkdtemp()) / "state.db")
>>> book = SilenceBook(store, [])
>>> rule = book.add(Silence([Matcher.parse('job="db"')], 0.0, 4e9, comment="upgrade"))
>>> [r.comment for r in SilenceBook(store, []).rules.rules]
['upgrade']
>>> book.remove(rule.id), book.rules.rules
(True, ())
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from detector.silences import MaintenanceWindow, Silence, SilenceSet
from service.store import Store

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS silences"
    " (id TEXT PRIMARY KEY, maintenance INTEGER NOT NULL, data TEXT NOT NULL)"
)


class SilenceBook:
    """The rules in force; :attr:`rules` is what the engine is asked about."""

    def __init__(self, store: Store, configured: Sequence[Silence]) -> None:
        self.store = store
        self.configured = list(configured)
        with store.lock:
            store.connection.execute(_SCHEMA)
            rows = store.connection.execute("SELECT maintenance, data FROM silences").fetchall()
        self.added: dict[str, Silence] = {}
        for maintenance, data in rows:
            kind = MaintenanceWindow if maintenance else Silence
            rule = kind.from_dict(json.loads(data))
            self.added[rule.id] = rule
        self.rules = SilenceSet([*self.configured, *self.added.values()])

    def add(self, rule: Silence) -> Silence:
        """Store a rule made through the API (the same rule twice is stored once)."""
        with self.store.lock:
            self.store.connection.execute(
                "INSERT OR REPLACE INTO silences VALUES (?, ?, ?)",
                (rule.id, int(isinstance(rule, MaintenanceWindow)), json.dumps(rule.to_dict())),
            )
        self.added[rule.id] = rule
        self.rules = SilenceSet([*self.configured, *self.added.values()])
        return rule

    def remove(self, rule_id: str) -> bool:
        """Delete an API-made rule; False if there is none with that id."""
        if rule_id not in self.added:
            return False
        with self.store.lock:
            self.store.connection.execute("DELETE FROM silences WHERE id = ?", (rule_id,))
        del self.added[rule_id]
        self.rules = SilenceSet([*self.configured, *self.added.values()])
        return True

    def listing(self, now: float | None = None) -> list[dict[str, object]]:
        """Every rule not yet over (weekly windows never are), marked with where it came from."""
        now = time.time() if now is None else now
        return [
            {**rule.to_dict(), "maintenance": isinstance(rule, MaintenanceWindow), "source": source}
            for source, rules in (("config", self.configured), ("api", list(self.added.values())))
            for rule in rules
            if rule.ends_at > now or getattr(rule, "weekly", False)
        ]

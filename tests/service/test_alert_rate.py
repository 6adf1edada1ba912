"""The realized alert rate's record of onsets: bounded, honest about what it covers, checkpointable."""

from __future__ import annotations

import json

import numpy as np

from service.alert_rate import RecentOnsets

HOUR = 3600.0


def test_past_its_limit_the_window_starts_where_the_last_onset_was_dropped() -> None:
    onsets = RecentOnsets(limit=3)
    t = HOUR * np.arange(10.0)
    onsets.observe(t, np.ones(10, dtype=bool))  # an alert every hour
    assert list(onsets.times) == [7 * HOUR, 8 * HOUR, 9 * HOUR]
    assert onsets.window_seconds == 3 * HOUR  # after 6h, the last dropped: three onsets in three hours
    assert onsets.count == 3 and onsets.per_day == 24.0  # the true rate, one an hour


def test_a_late_onset_counts_once_and_nothing_outside_the_window_does() -> None:
    onsets = RecentOnsets(window=10 * HOUR)
    onsets.observe(np.array([0.0, 5 * HOUR]), np.array([False, True]))
    onsets.observe(np.array([20 * HOUR]), np.array([True]))  # 5h is now out of the window
    onsets.observe(np.array([12 * HOUR]), np.array([True]))  # a series that reports late
    assert onsets.count == 2 and onsets.window_seconds == 10 * HOUR


def test_state_survives_json() -> None:
    onsets = RecentOnsets()
    onsets.observe(np.array([0.0, 60.0, np.nan]), np.array([False, True, False]))
    again = RecentOnsets()
    again.load_state_dict(json.loads(json.dumps(onsets.state_dict(), allow_nan=False)))
    assert (again.count, again.window_seconds, again.since) == (1, 60.0, 0.0)
    empty = RecentOnsets()
    empty.load_state_dict(json.loads(json.dumps(RecentOnsets().state_dict(), allow_nan=False)))
    assert empty.count == 0 and empty.window_seconds == 0.0

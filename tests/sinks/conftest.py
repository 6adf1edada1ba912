"""Fixtures for the sink and outbox tests: local receivers and a real Alertmanager."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import FakeClock
from tests.support.alertmanager import AlertmanagerHandle, alertmanager_binary, start_alertmanager
from tests.support.net import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A local HTTP receiver answering 200 until told otherwise."""
    with Receiver() as running:
        yield running


@pytest.fixture
def second_receiver() -> Iterator[Receiver]:
    """Another independent receiver, for a second sink."""
    with Receiver() as running:
        yield running


@pytest.fixture
def clock() -> FakeClock:
    """Fake time that moves only when a test advances it."""
    return FakeClock()


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Path]:
    """Path of a fresh SQLite file; tests open (and reopen) connections to it."""
    yield tmp_path / "outbox.db"


@pytest.fixture
def connection(database: Path) -> Iterator[sqlite3.Connection]:
    """A connection to :func:`database` usable from several threads, closed afterwards."""
    opened = sqlite3.connect(database, check_same_thread=False)
    yield opened
    opened.close()


@pytest.fixture
def alertmanager_webhook(receiver: Receiver, tmp_path: Path) -> Iterator[tuple[AlertmanagerHandle, Receiver]]:
    """A real Alertmanager sending every notification to ``receiver`` (path ``/am``)."""
    if alertmanager_binary() is None:
        pytest.skip("Alertmanager is not installed (apt-get install prometheus-alertmanager)")
    with start_alertmanager(tmp_path, receiver.url + "/am") as alertmanager:
        yield alertmanager, receiver

"""Marks for doctests, which cannot carry ``@pytest.mark``: examples that start real processes are ``live``.

The markers themselves are registered in ``pyproject.toml``; ``make test-fast``
runs everything that is not ``live``, ``browser``, ``demo`` or ``slow``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _pytest.doctest import DoctestItem

#: Doctests that start a real Prometheus, by module file and object name.
_LIVE_DOCTESTS = {
    (Path(__file__).parent / "support" / "prometheus.py", "PrometheusHandle"),
    (Path(__file__).parent / "support" / "prometheus.py", "start_prometheus"),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, DoctestItem) and (item.path, item.name.rsplit(".", 1)[-1]) in _LIVE_DOCTESTS:
            item.add_marker(pytest.mark.live)

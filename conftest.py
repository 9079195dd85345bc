"""Shared by the tests and the doctests: results are not timed unless a test asks (``latency=True``), so the
suite stays fast; the commands a test runs in a subprocess keep the default and time."""

import pytest

from mdakit import defaults


@pytest.fixture(autouse=True)
def _no_latency_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(defaults, "MEASURE_LATENCY", False)

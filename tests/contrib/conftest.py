"""Fixtures of the integration tests."""

from __future__ import annotations

import pytest

from segmentio_logging import _report


@pytest.fixture
def warnings_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every warning of the test is printed: none is held back by an earlier test's."""
    monkeypatch.setattr(_report, "_last", {})

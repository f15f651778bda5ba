"""Fixtures of the command line's tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_segment_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Options come from the flags only: no SEGMENT_* variable of the machine leaks in."""
    for name in list(os.environ):
        if name.startswith("SEGMENT_"):
            monkeypatch.delenv(name)

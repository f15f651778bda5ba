"""Tests for ``_report``: the pipeline's own warnings, on stderr and rate-limited."""

from __future__ import annotations

import io
import itertools
import sys

import pytest

from segmentio_logging import _report

_keys = itertools.count()


def fresh_key() -> str:
    """A key no other test has used, so earlier warnings do not suppress this one."""
    return f"test-report-{next(_keys)}"


def test_a_warning_goes_to_stderr_with_the_library_prefix(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """warn() writes one line to stderr, prefixed with the library's name."""
    _report.warn(fresh_key(), "receiver down")
    assert capsys.readouterr().err == "segmentio_logging: receiver down\n"


def test_a_repeated_warning_is_suppressed_within_the_interval(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same key twice within the interval prints once; other keys are not affected."""
    key = fresh_key()
    _report.warn(key, "first", interval=3600)
    _report.warn(key, "second", interval=3600)
    _report.warn(fresh_key(), "other", interval=3600)
    assert capsys.readouterr().err.splitlines() == [
        "segmentio_logging: first",
        "segmentio_logging: other",
    ]


def test_the_next_warning_after_the_interval_counts_what_was_suppressed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Past the interval the warning prints again and says how many were suppressed."""
    key = fresh_key()
    _report.warn(key, "first", interval=3600)
    _report.warn(key, "again", interval=3600)
    _report.warn(key, "again", interval=3600)
    _report.warn(key, "after", interval=0)
    assert capsys.readouterr().err.splitlines()[-1] == (
        "segmentio_logging: after (2 similar warnings suppressed)"
    )


def test_a_closed_stderr_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    """A closed or missing stderr is ignored: reporting never breaks the caller."""
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stderr", closed)
    _report.warn(fresh_key(), "nobody reads this")
    monkeypatch.setattr(sys, "stderr", None)
    _report.warn(fresh_key(), "nor this")


def test_after_fork_in_child_gives_a_new_lock() -> None:
    """A child gets a fresh lock (another thread may have held the parent's at the fork)."""
    before = _report._lock
    before.acquire()
    try:
        _report.after_fork_in_child()
        assert _report._lock is not before
        _report.warn(fresh_key(), "does not wait on the held lock", interval=3600)
    finally:
        before.release()
